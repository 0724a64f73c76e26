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
Each check is one pass over a column of values, mostly in builtins (COCO train2017's 860k
annotations: about a second, a fraction of reading the file); the entries are looked at one by one
only to name the first bad one.
"""

import itertools
import json
import os
from typing import Callable, Dict, Hashable, List, Sequence, Set

__all__ = ["COCO_EXAMPLE", "read_coco_categories"]

COCO_EXAMPLE = (
    '{"images": [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 640}], '
    '"annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h], '
    '"iscrowd": 0}], "categories": [{"id": 3, "name": "cat"}]}'
)
# The types json.load gives ids (pycocotools indexes strings too) and numbers; not bool.
ID_TYPES = {int, str}
NUMBER_TYPES = {int, float}
IMAGE_FIX = "Every image needs 'id', 'file_name', 'width' and 'height' (in pixels): add it."
ANNOTATION_FIX = (
    "Every annotation needs 'id', 'image_id', 'category_id' and 'bbox' ([x, y, width, height] in "
    "pixels): add it, or remove the annotation."
)
BOX_FIX = (
    "Give every annotation its box as 4 numbers [x, y, width, height] in pixels, or remove the "
    "annotation."
)


def _invalid(json_file: str, problem: str) -> ValueError:
    return ValueError(
        f"{json_file} is not a COCO-format detection JSON: {problem}. Expected: {COCO_EXAMPLE}"
    )


def _describe_image(index: int, image: Dict) -> str:
    fields = [f"id {image['id']!r}" if "id" in image else "no id"]
    if "file_name" in image:
        fields.append(f"file_name {image['file_name']!r}")
    return f"images[{index}] ({', '.join(fields)})"


def _describe_annotation(index: int, annotation: Dict) -> str:
    described_id = f"id {annotation['id']!r}" if "id" in annotation else "no id"
    return f"annotations[{index}] ({described_id})"


class _Entries:
    """The "images" or "annotations" of a JSON, for errors that name an entry."""

    def __init__(self, json_file: str, entries: List[Dict], describe: Callable[[int, Dict], str]):
        self.json_file = json_file
        self.entries = entries
        self.describe = describe

    def error(self, indices: Sequence[int], problem: str, fix: str) -> ValueError:
        """The error for the entries at ``indices``: the first named, the others counted."""
        more = f" ({len(indices) - 1} more entries like it)" if len(indices) > 1 else ""
        entry = self.describe(indices[0], self.entries[indices[0]])
        return ValueError(f"{self.json_file}: {entry} {problem}{more}. {fix}")

    def column(self, key: str, fix: str) -> List:
        """Returns: every entry's value of ``key``; raises for the entries without it."""
        try:
            return [entry[key] for entry in self.entries]
        except KeyError:
            missing = [index for index, entry in enumerate(self.entries) if key not in entry]
            raise self.error(missing, f"has no {key!r}", fix) from None

    def check(
        self,
        key: str,
        values: List,
        all_valid: bool,
        is_valid: Callable[[object], bool],
        expected: str,
        fix: str,
    ) -> None:
        """Raise for the entries whose value of ``key`` is not ``expected``; ``is_valid`` finds
        them when ``all_valid`` (the check of the whole column) is False."""
        if all_valid:
            return
        bad = [index for index, value in enumerate(values) if not is_valid(value)]
        if bad:
            raise self.error(bad, f"has {key!r} {values[bad[0]]!r}, not {expected}", fix)

    def check_unique(self, values: List, problem: str, fix: str) -> None:
        """Raise for the entries whose value an earlier entry has; ``problem`` names that entry
        as ``{first}``."""
        if len(set(values)) == len(values):
            return
        first_index, repeats = {}, []
        for index, value in enumerate(values):
            if value in first_index:
                repeats.append(index)
            else:
                first_index[value] = index
        first = first_index[values[repeats[0]]]
        described = self.describe(first, self.entries[first])
        raise self.error(repeats, problem.format(first=described), fix)


def _types(values: List) -> Set[type]:
    return set(map(type, values))


def _is_id(value: object) -> bool:
    return type(value) in ID_TYPES


def _is_size(value: object) -> bool:
    return type(value) in NUMBER_TYPES and value > 0


def _is_box(value: object) -> bool:
    return type(value) is list and len(value) == 4 and _types(value) <= NUMBER_TYPES


def _all_boxes(boxes: List) -> bool:
    return (
        _types(boxes) == {list}
        and set(map(len, boxes)) == {4}
        and _types(list(itertools.chain.from_iterable(boxes))) <= NUMBER_TYPES
    )


def _check_top_level(json_file: str, content: object) -> None:
    if not isinstance(content, dict):
        raise _invalid(json_file, f"its top level is a {type(content).__name__}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        raise _invalid(json_file, f"it has no {', '.join(repr(key) for key in missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content[key], list):
            raise _invalid(json_file, f"{key!r} is a {type(content[key]).__name__}, not a list")
        if _types(content[key]) - {dict}:
            index = next(i for i, entry in enumerate(content[key]) if type(entry) is not dict)
            raise _invalid(json_file, f"{key}[{index}] = {content[key][index]!r} is not an object")
    if not content["images"]:
        raise ValueError(f"{json_file} lists no images: the split is empty.")
    if not content["categories"]:
        raise _invalid(json_file, "'categories' is empty")


def _check_categories(json_file: str, categories: List[Dict]) -> None:
    for index, category in enumerate(categories):
        name = category.get("name")
        if type(category.get("id")) is not int or not isinstance(name, str) or not name.strip():
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


def _check_images(json_file: str, images: List[Dict]) -> Set[Hashable]:
    """Returns: the images' ids."""
    entries = _Entries(json_file, images, _describe_image)
    ids = entries.column("id", IMAGE_FIX)
    file_names = entries.column("file_name", IMAGE_FIX)
    sizes = {key: entries.column(key, IMAGE_FIX) for key in ("width", "height")}
    entries.check(
        "id", ids, _types(ids) <= ID_TYPES, _is_id, "an integer", "Give each image an integer id."
    )
    entries.check(
        "file_name",
        file_names,
        _types(file_names) == {str} and all(file_names),
        lambda value: type(value) is str and value != "",
        "a file name",
        "Give the image's file name, relative to the image root.",
    )
    for key, values in sizes.items():
        entries.check(
            key,
            values,
            _types(values) <= NUMBER_TYPES and all(value > 0 for value in values),
            _is_size,
            "a positive number of pixels",
            f"Give the image's {key} as a positive number of pixels.",
        )
    entries.check_unique(
        ids,
        "has the same id as {first}: Detectron2 would give both images' boxes to one of them",
        "Give each image its own id, and point its annotations' image_id at it.",
    )
    return set(ids)


def _check_annotations(json_file: str, annotations: List[Dict], image_ids: Set[Hashable]) -> None:
    entries = _Entries(json_file, annotations, _describe_annotation)
    columns = {
        key: entries.column(key, ANNOTATION_FIX)
        for key in ("id", "image_id", "category_id", "bbox")
    }
    for key in ("id", "image_id", "category_id"):
        entries.check(
            key,
            columns[key],
            _types(columns[key]) <= ID_TYPES,
            _is_id,
            "an integer id",
            f"Give the annotation's {key} as an integer.",
        )
    entries.check_unique(
        columns["id"], "has the same id as {first}", "Give each annotation its own id."
    )
    boxes = columns["bbox"]
    entries.check("bbox", boxes, _all_boxes(boxes), _is_box, "[x, y, width, height]", BOX_FIX)
    image_id_of = columns["image_id"]
    entries.check(
        "image_id",
        image_id_of,
        set(image_id_of) <= image_ids,
        lambda image_id: image_id in image_ids,
        "the id of an image in 'images'",
        "Add the image to 'images', correct the image_id, or remove the annotation.",
    )
    if any("ignore" in annotation for annotation in annotations):
        ignores = [annotation.get("ignore", 0) for annotation in annotations]
        entries.check(
            "ignore",
            ignores,
            False,
            lambda ignore: not ignore,
            "0: Detectron2 does not read 'ignore'",
            "Mark regions to ignore with 'iscrowd': 1 instead, or remove 'ignore'.",
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
    image_ids = _check_images(json_file, content["images"])
    _check_annotations(json_file, content["annotations"], image_ids)
    return sorted(content["categories"], key=lambda category: category["id"])
