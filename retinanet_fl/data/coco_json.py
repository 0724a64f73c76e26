"""
Structural checks of a COCO-format detection JSON, run when a dataset given by path is registered.

Every defect that would otherwise end in a traceback from Detectron2's ``load_coco_json`` (or from
COCOeval after training), or that would silently change the data, is a ``ValueError`` naming the
file, the entry (e.g. ``images[3] (id 7, file_name 'a.jpg')``) and the fix:

* categories without an integer id or a non-empty name, or with a repeated id or name;
* images without ``id``, ``file_name``, ``width`` or ``height``, or with a repeated id (Detectron2
  would give both images' boxes to one of them);
* annotations without ``id``, ``image_id``, ``category_id`` or ``bbox``, with a repeated id, a
  ``bbox`` that is not 4 numbers, an ``image_id`` that is no image's, or ``ignore`` set.

What the checks leave to the sanitiser (:mod:`retinanet_fl.data.sanitize`), which drops and counts
it: boxes of zero size, outside the image or not finite, and category ids not in ``categories``.
The checks look at every entry with a few passes over lists (COCO's 860k annotations: well under a
second).
"""

import json
import numbers
import os
from typing import Dict, Hashable, List, Optional, Sequence, Set

import numpy as np

__all__ = ["COCO_EXAMPLE", "read_coco_categories"]

COCO_EXAMPLE = (
    '{"images": [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 640}], '
    '"annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h], '
    '"iscrowd": 0}], "categories": [{"id": 3, "name": "cat"}]}'
)
IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox")


def _invalid(json_file: str, problem: str) -> ValueError:
    return ValueError(
        f"{json_file} is not a COCO-format detection JSON: {problem}. Expected: {COCO_EXAMPLE}"
    )


def _entry_error(
    json_file: str, entry: str, problem: str, fix: str, num_like: int = 1
) -> ValueError:
    more = f" ({num_like - 1} more entries like it)" if num_like > 1 else ""
    return ValueError(f"{json_file}: {entry} {problem}{more}. {fix}")


def _describe_image(index: int, image: Dict) -> str:
    fields = [f"id {image['id']!r}" if "id" in image else "no id"]
    if "file_name" in image:
        fields.append(f"file_name {image['file_name']!r}")
    return f"images[{index}] ({', '.join(fields)})"


def _describe_annotation(index: int, annotation: Dict) -> str:
    described_id = f"id {annotation['id']!r}" if "id" in annotation else "no id"
    return f"annotations[{index}] ({described_id})"


def _first_repeat(values: Sequence[Hashable]) -> Optional[tuple]:
    """Returns: (index of a value's second use, index of its first use, number of repeats), or
    None when every value is used once."""
    if len(set(values)) == len(values):
        return None
    first_index, repeats = {}, []
    for index, value in enumerate(values):
        if value in first_index:
            repeats.append((index, first_index[value]))
        else:
            first_index[value] = index
    return (*repeats[0], len(repeats))


def _is_id(value: object) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_size(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def _is_box(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )


def _all_boxes(boxes: List) -> bool:
    """Whether every entry is 4 numbers: one numpy conversion, which fails on anything else."""
    try:
        array = np.asarray(boxes)
    except ValueError:  # ragged
        return False
    return array.shape == (len(boxes), 4) and array.dtype.kind in "iuf"


def _check_top_level(json_file: str, content: object) -> None:
    if not isinstance(content, dict):
        raise _invalid(json_file, f"its top level is a {type(content).__name__}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        raise _invalid(json_file, f"it has no {', '.join(repr(key) for key in missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content[key], list):
            raise _invalid(json_file, f"{key!r} is a {type(content[key]).__name__}, not a list")
        not_objects = [i for i, entry in enumerate(content[key]) if not isinstance(entry, dict)]
        if not_objects:
            index = not_objects[0]
            raise _invalid(json_file, f"{key}[{index}] = {content[key][index]!r} is not an object")
    if not content["images"]:
        raise ValueError(f"{json_file} lists no images: the split is empty.")
    if not content["categories"]:
        raise _invalid(json_file, "'categories' is empty")


def _check_categories(json_file: str, categories: List[Dict]) -> None:
    for index, category in enumerate(categories):
        name = category.get("name")
        if not isinstance(category.get("id"), int) or not isinstance(name, str) or not name.strip():
            raise _invalid(
                json_file,
                f"categories[{index}] = {category} needs an integer 'id' and a non-empty 'name' "
                "(it names the class in the logs, the AP table and the predictions)",
            )
    for field in ("id", "name"):
        values = [category[field] for category in categories]
        repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
        if repeated:
            raise ValueError(
                f"{json_file}: category {field}s {repeated} are used by more than one category. "
                f"Give each category its own {field}, and point the annotations at the right one."
            )


def _check_images(json_file: str, images: List[Dict]) -> None:
    for key in IMAGE_KEYS:
        missing = [index for index, image in enumerate(images) if key not in image]
        if missing:
            raise _entry_error(
                json_file,
                _describe_image(missing[0], images[missing[0]]),
                f"has no {key!r}",
                "Every image needs 'id', 'file_name', 'width' and 'height' (in pixels): add it.",
                len(missing),
            )
    checks = (
        ("id", _is_id, "an integer or a string"),
        ("file_name", lambda value: isinstance(value, str) and value != "", "a file name"),
        ("width", _is_size, "a positive number of pixels"),
        ("height", _is_size, "a positive number of pixels"),
    )
    for key, is_valid, expected in checks:
        bad = [index for index, image in enumerate(images) if not is_valid(image[key])]
        if bad:
            raise _entry_error(
                json_file,
                _describe_image(bad[0], images[bad[0]]),
                f"has {key!r} {images[bad[0]][key]!r}, not {expected}",
                f"Give the image's {key} as {expected}.",
                len(bad),
            )
    repeat = _first_repeat([image["id"] for image in images])
    if repeat is not None:
        second, first, count = repeat
        raise _entry_error(
            json_file,
            _describe_image(second, images[second]),
            f"has the same id as {_describe_image(first, images[first])}: Detectron2 would give "
            "both images' boxes to one of them",
            "Give each image its own id, and point its annotations' image_id at it.",
            count,
        )


def _check_annotations(json_file: str, annotations: List[Dict], image_ids: Set[Hashable]) -> None:
    for key in ANNOTATION_KEYS:
        missing = [index for index, annotation in enumerate(annotations) if key not in annotation]
        if missing:
            raise _entry_error(
                json_file,
                _describe_annotation(missing[0], annotations[missing[0]]),
                f"has no {key!r}",
                "Every annotation needs 'id', 'image_id', 'category_id' and 'bbox' "
                "([x, y, width, height] in pixels): add it, or remove the annotation.",
                len(missing),
            )
    for key in ("id", "image_id", "category_id"):
        bad = [index for index, annotation in enumerate(annotations) if not _is_id(annotation[key])]
        if bad:
            raise _entry_error(
                json_file,
                _describe_annotation(bad[0], annotations[bad[0]]),
                f"has {key!r} {annotations[bad[0]][key]!r}, not an integer id",
                f"Give the annotation's {key} as an integer.",
                len(bad),
            )
    ids = [annotation["id"] for annotation in annotations]
    repeat = _first_repeat(ids)
    if repeat is not None:
        second, first, count = repeat
        raise _entry_error(
            json_file,
            _describe_annotation(second, annotations[second]),
            f"has the same id as annotations[{first}]",
            "Give each annotation its own id.",
            count,
        )
    boxes = [annotation["bbox"] for annotation in annotations]
    if annotations and not _all_boxes(boxes):
        bad = [index for index, box in enumerate(boxes) if not _is_box(box)]
        raise _entry_error(
            json_file,
            _describe_annotation(bad[0], annotations[bad[0]]),
            f"has 'bbox' {boxes[bad[0]]!r}, not [x, y, width, height]",
            "Give every annotation its box as 4 numbers [x, y, width, height] in pixels, or "
            "remove the annotation.",
            len(bad),
        )
    orphans = [
        index
        for index, annotation in enumerate(annotations)
        if annotation["image_id"] not in image_ids
    ]
    if orphans:
        annotation = annotations[orphans[0]]
        raise _entry_error(
            json_file,
            _describe_annotation(orphans[0], annotation),
            f"has image_id {annotation['image_id']!r}, which is the id of no image in 'images'",
            "Add the image to 'images', correct the image_id, or remove the annotation.",
            len(orphans),
        )
    ignored = [index for index, annotation in enumerate(annotations) if annotation.get("ignore")]
    if ignored:
        raise _entry_error(
            json_file,
            _describe_annotation(ignored[0], annotations[ignored[0]]),
            f"has 'ignore' {annotations[ignored[0]]['ignore']!r}, which Detectron2 does not read",
            "Mark regions to ignore with 'iscrowd': 1 instead, or remove 'ignore'.",
            len(ignored),
        )


def read_coco_categories(json_file: str, spec_help: str = "") -> List[Dict]:
    """
    Check that a file is a COCO-format detection JSON, entry by entry, and return its categories.

    Args:
        json_file: the JSON's path.
        spec_help: appended to the error for a file that does not exist.

    Returns:
        the categories, sorted by id (Detectron2's contiguous order), each with "id" and "name".

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file, the entry and the fix (see the module's docstring).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Annotation file {json_file} does not exist. {spec_help}".strip())
    try:
        with open(json_file) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _invalid(json_file, f"it is not valid JSON ({error})") from error
    _check_top_level(json_file, content)
    _check_categories(json_file, content["categories"])
    _check_images(json_file, content["images"])
    _check_annotations(
        json_file, content["annotations"], {image["id"] for image in content["images"]}
    )
    return sorted(content["categories"], key=lambda category: category["id"])
