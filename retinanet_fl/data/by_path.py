"""
Datasets given by path in ``DATASETS.TRAIN`` / ``DATASETS.TEST``, registered under that string:

* ``coco:<annotations.json>[:<image_root>]``: a COCO-format detection JSON; the images' file
  names are relative to ``image_root`` (default: the JSON's folder). Category ids may be any
  integers (e.g. 3, 7, 12): training uses contiguous indices, evaluation and predictions report
  the JSON's ids and names.
* ``voc:<folder>[:<split>]``: a Pascal VOC folder (``Annotations/``, ``ImageSets/Main/<split>.txt``,
  ``JPEGImages/``), split "trainval" by default. The classes are the object names of every file in
  ``Annotations/``, sorted (Pascal VOC's own 20 classes in Detectron2's order, for VOC itself).

:func:`register_path_datasets` registers them (``load_config`` calls it, so every ``train_net``
worker does); a JSON is checked when it is registered, so a file that is not COCO, or whose
categories are missing or duplicated, stops with an error naming the file and the entry.
"""

import json
import logging
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.data.datasets.pascal_voc import load_voc_instances

logger = logging.getLogger(__name__)

__all__ = ["COCO_PREFIX", "VOC_PREFIX", "is_path_dataset", "register_path_datasets"]

COCO_PREFIX = "coco:"
VOC_PREFIX = "voc:"
DEFAULT_VOC_SPLIT = "trainval"
# What Detectron2's Pascal VOC evaluator reads of every <object>, besides its name and box.
VOC_EVALUATOR_FIELDS = ("pose", "truncated", "difficult")
SPEC_HELP = (
    'Give datasets by path as DATASETS.TRAIN ("coco:path/to/train.json:path/to/images",) or '
    '("voc:path/to/VOC_folder:trainval",).'
)
COCO_EXAMPLE = (
    '{"images": [{"id": 1, "file_name": "a.jpg", "height": 480, "width": 640}], '
    '"annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h], '
    '"iscrowd": 0}], "categories": [{"id": 3, "name": "cat"}]}'
)


def is_path_dataset(name: str) -> bool:
    """Returns: whether a dataset name is a ``coco:`` or ``voc:`` path."""
    return name.startswith((COCO_PREFIX, VOC_PREFIX))


def _split_spec(name: str, prefix: str) -> Tuple[str, str]:
    """``prefix + path[:second]`` -> (path, second or "")."""
    parts = name[len(prefix) :].split(":")
    if len(parts) > 2 or not parts[0]:
        raise ValueError(
            f"Dataset {name!r} is not of the form '{prefix}<path>[:<...>]'. {SPEC_HELP}"
        )
    return parts[0], parts[1] if len(parts) == 2 else ""


def _invalid(json_file: str, problem: str) -> ValueError:
    return ValueError(
        f"{json_file} is not a COCO-format detection JSON: {problem}. Expected: {COCO_EXAMPLE}"
    )


def read_coco_categories(json_file: str) -> List[Dict]:
    """
    Check that a file is a COCO-format detection JSON and return its categories.

    Args:
        json_file: the JSON's path.

    Returns:
        the categories, sorted by id (Detectron2's contiguous order), each with "id" and "name".

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file and the entry: not JSON, missing "images", "annotations" or
            "categories", no images, a category without an integer id or a name, an id or name
            used twice.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Annotation file {json_file} does not exist. {SPEC_HELP}")
    try:
        with open(json_file) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _invalid(json_file, f"it is not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise _invalid(json_file, f"its top level is a {type(content).__name__}, not an object")
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        raise _invalid(json_file, f"it has no {', '.join(repr(key) for key in missing)}")
    if not content["images"]:
        raise ValueError(f"{json_file} lists no images: the split is empty.")
    if not content["categories"]:
        raise _invalid(json_file, "'categories' is empty")
    for index, category in enumerate(content["categories"]):
        if not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str):
            raise _invalid(
                json_file, f"categories[{index}] = {category} needs an integer 'id' and a 'name'"
            )
    _check_unique(json_file, [category["id"] for category in content["categories"]], "id")
    _check_unique(json_file, [category["name"] for category in content["categories"]], "name")
    return sorted(content["categories"], key=lambda category: category["id"])


def _check_unique(json_file: str, values: Sequence, field: str) -> None:
    repeated = sorted({value for value in values if values.count(value) > 1}, key=str)
    if repeated:
        raise ValueError(
            f"{json_file}: category {field}s {repeated} are used by more than one category. "
            f"Give each category its own {field}, and point the annotations at the right one."
        )


class _DropMessage(logging.Filter):
    """Drops a log record whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _load_coco(json_file: str, image_root: str, name: str) -> List[Dict]:
    # Detectron2 warns that it maps ids outside [1, K] to contiguous ones: for a dataset by path
    # that mapping is the documented behaviour, not something to act on.
    coco_logger = logging.getLogger("detectron2.data.datasets.coco")
    quiet = _DropMessage("Category ids in annotations are not in [1, #categories]")
    coco_logger.addFilter(quiet)
    try:
        return load_coco_json(json_file, image_root, name)
    finally:
        coco_logger.removeFilter(quiet)


def _register_coco(name: str) -> None:
    json_file, image_root = _split_spec(name, COCO_PREFIX)
    image_root = image_root or os.path.dirname(json_file)
    categories = read_coco_categories(json_file)
    DatasetCatalog.register(name, lambda: _load_coco(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=[category["name"] for category in categories],
        thing_dataset_id_to_contiguous_id={
            category["id"]: index for index, category in enumerate(categories)
        },
    )


def voc_class_names(folder: str) -> List[str]:
    """
    Args:
        folder: a Pascal VOC folder.

    Returns:
        the object names in its ``Annotations/*.xml``: VOC's 20 classes in Detectron2's order when
        they are all among them, else sorted.
    """
    annotations = os.path.join(folder, "Annotations")
    if not os.path.isdir(annotations):
        raise FileNotFoundError(
            f"{folder} is not a Pascal VOC folder: it has no Annotations/ (expected Annotations/, "
            f"ImageSets/Main/<split>.txt and JPEGImages/). {SPEC_HELP}"
        )
    names, incomplete = set(), []
    for file_name in sorted(os.listdir(annotations)):
        if file_name.endswith(".xml"):
            objects = ET.parse(os.path.join(annotations, file_name)).findall("object")
            names.update(obj.findtext("name") for obj in objects)
            if any(obj.find(key) is None for obj in objects for key in VOC_EVALUATOR_FIELDS):
                incomplete.append(file_name)
    if not names:
        raise ValueError(f"{annotations} has no <object><name> in any .xml file: no classes.")
    if incomplete:
        logger.warning(
            f"{len(incomplete)} files in {annotations} (e.g. {incomplete[0]}) have objects "
            f"without {', '.join(f'<{key}>' for key in VOC_EVALUATOR_FIELDS)}: training reads "
            "them, but Detectron2's Pascal VOC evaluator needs them and will fail on this folder. "
            "Add <pose>Unspecified</pose> <truncated>0</truncated> <difficult>0</difficult>."
        )
    return list(VOC_CLASS_NAMES) if names <= set(VOC_CLASS_NAMES) else sorted(names)


def _register_voc(name: str) -> None:
    folder, split = _split_spec(name, VOC_PREFIX)
    split = split or DEFAULT_VOC_SPLIT
    split_file = os.path.join(folder, "ImageSets", "Main", f"{split}.txt")
    class_names = voc_class_names(folder)
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"Pascal VOC split file {split_file} does not exist. {SPEC_HELP}")
    DatasetCatalog.register(name, lambda: load_voc_instances(folder, split, class_names))
    # PascalVOCDetectionEvaluator reads dirname, split and year (2007: the 11-point AP).
    year = 2007 if "2007" in os.path.basename(os.path.normpath(folder)) else 2012
    MetadataCatalog.get(name).set(
        thing_classes=class_names,
        dirname=folder,
        split=split,
        year=year,
        evaluator_type="pascal_voc",
    )


def register_path_datasets(names: Sequence[str], skip_missing: bool = False) -> None:
    """
    Register each ``coco:`` / ``voc:`` name not registered yet, under the name itself; other
    names are left alone.

    Args:
        names: dataset names, e.g. ``cfg.DATASETS.TRAIN + cfg.DATASETS.TEST``.
        skip_missing: leave a dataset whose files do not exist unregistered instead of raising
            (for running a trained model, whose checkpoint carries the classes).
    """
    for name in names:
        if name in DatasetCatalog.list() or not is_path_dataset(name):
            continue
        register = _register_coco if name.startswith(COCO_PREFIX) else _register_voc
        try:
            register(name)
        except FileNotFoundError:
            if not skip_missing:
                raise
