"""A COCO JSON's structural defects stop registration with an error naming the file, the entry and
the fix, instead of a traceback from Detectron2's load_coco_json (or wrong boxes) later."""

import json
import uuid

import pytest

from retinanet_fl.data.by_path import register_path_datasets
from retinanet_fl.data.coco_json import read_coco_categories


def six_image_coco():
    """A COCO JSON's content: 6 images of 64 px, one box each, categories 3 and 7."""
    return {
        "images": [
            {"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(6)
        ],
        "annotations": [
            {
                "id": 10 * (i + 1),
                "image_id": i + 1,
                "category_id": (3, 7)[i % 2],
                "bbox": [4.0, 4.0, 20.0, 20.0],
                "area": 400.0,
                "iscrowd": 0,
            }
            for i in range(6)
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


def register_edited(tmp_path, edit):
    """Write the 6-image JSON with ``edit(content)`` applied; register it by path; its file."""
    content = six_image_coco()
    edit(content)
    json_file = tmp_path / f"{uuid.uuid4().hex[:6]}.json"
    json_file.write_text(json.dumps(content))
    register_path_datasets([f"coco:{json_file}"])
    return str(json_file)


def set_value(entries, index, **values):
    def edit(content):
        content[entries][index].update(values)

    return edit


def delete_key(entries, index, key):
    def edit(content):
        del content[entries][index][key]

    return edit


@pytest.mark.parametrize(
    "edit, entry, problem, fix",
    [
        (
            set_value("images", 3, id=2),
            "images[3] (id 2, file_name '3.png')",
            "has the same id as images[1] (id 2, file_name '1.png'): Detectron2 would give both "
            "images' boxes to one of them",
            "Give each image its own id, and point its annotations' image_id at it.",
        ),
        (
            set_value("annotations", 2, bbox=None),
            "annotations[2] (id 30)",
            "has 'bbox' None, not [x, y, width, height]",
            "Give every annotation its box as 4 numbers [x, y, width, height] in pixels, or "
            "remove the annotation.",
        ),
        (
            set_value("annotations", 4, bbox=[1, 2, 3]),
            "annotations[4] (id 50)",
            "has 'bbox' [1, 2, 3], not [x, y, width, height]",
            "Give every annotation its box as 4 numbers",
        ),
        *[
            (
                delete_key("annotations", 1, key),
                "annotations[1] (no id)" if key == "id" else "annotations[1] (id 20)",
                f"has no {key!r}",
                "Every annotation needs 'id', 'image_id', 'category_id' and 'bbox' ([x, y, width, "
                "height] in pixels): add it, or remove the annotation.",
            )
            for key in ("category_id", "image_id", "id")
        ],
        (
            set_value("annotations", 5, image_id=99),
            "annotations[5] (id 60)",
            "has 'image_id' 99, not the id of an image in 'images'",
            "Add the image to 'images', correct the image_id, or remove the annotation.",
        ),
        *[
            (
                delete_key("images", 4, key),
                "images[4] (id 5)" if key == "file_name" else "images[4] (id 5, file_name '4.png')",
                f"has no {key!r}",
                "Every image needs 'id', 'file_name', 'width' and 'height' (in pixels): add it.",
            )
            for key in ("width", "height", "file_name")
        ],
        (
            set_value("images", 0, width=0),
            "images[0] (id 1, file_name '0.png')",
            "has 'width' 0, not a positive number of pixels",
            "Give the image's width as a positive number of pixels.",
        ),
        (
            set_value("annotations", 3, id=10),
            "annotations[3] (id 10)",
            "has the same id as annotations[0] (id 10)",
            "Give each annotation its own id.",
        ),
        (
            set_value("annotations", 0, ignore=1),
            "annotations[0] (id 10)",
            "has 'ignore' 1, not 0: Detectron2 does not read 'ignore'",
            "Mark regions to ignore with 'iscrowd': 1 instead",
        ),
    ],
)
def test_a_structural_defect_stops_registration_naming_file_entry_and_fix(
    tmp_path, edit, entry, problem, fix
):
    with pytest.raises(ValueError) as error:
        register_edited(tmp_path, edit)
    message = str(error.value)
    json_file = message.split(": ", 1)[0]
    assert json_file.startswith(str(tmp_path)) and json_file.endswith(".json")
    assert f"{json_file}: {entry} {problem}. {fix}" in message


def test_a_category_without_a_name_stops_registration(tmp_path):
    with pytest.raises(ValueError, match=r"categories\[1\] = .* non-empty 'name'") as error:
        register_edited(tmp_path, set_value("categories", 1, name=""))
    assert str(tmp_path) in str(error.value)


def test_the_count_of_entries_with_the_same_defect_is_given(tmp_path):
    def orphan_three(content):
        for annotation in content["annotations"][:3]:
            annotation["image_id"] = 42

    with pytest.raises(ValueError, match=r"annotations\[0\] .* \(2 more entries like it\)"):
        register_edited(tmp_path, orphan_three)


def test_a_complete_json_registers_and_returns_its_categories(tmp_path):
    json_file = tmp_path / "ok.json"
    json_file.write_text(json.dumps(six_image_coco()))
    assert read_coco_categories(str(json_file)) == [
        {"id": 3, "name": "cat"},
        {"id": 7, "name": "dog"},
    ]
