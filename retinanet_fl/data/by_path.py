"""
Datasets given by path in ``DATASETS.TRAIN`` / ``DATASETS.TEST``, registered under that string:

* ``coco:<annotations.json>[:<image_root>]``: a COCO-format detection JSON; the images' file
  names are relative to ``image_root`` (default: the JSON's folder). Category ids may be any
  integers (e.g. 3, 7, 12): training uses contiguous indices, evaluation and predictions report
  the JSON's ids and names.
* ``voc:<folder>[:<split>]``: a Pascal VOC folder (``Annotations/``, ``ImageSets/Main/<split>.txt``,
  ``JPEGImages/``), split "trainval" by default. The classes are the object names of every file in
  ``Annotations/``, sorted (Pascal VOC's own 20 classes in Detectron2's order, when all 20 are
  there).

Paths may contain colons (``coco:C:\\data\\train.json:C:\\data\\images``): a JSON part that is an
existing file wins, else the JSON part ends at ".json"; a VOC split is the last part only when it
has no path separator. :func:`canonical_dataset_name` makes the paths absolute, so that
``coco:a.json`` and ``coco:./a.json`` are one dataset and a saved config works from elsewhere.

:func:`register_path_datasets` registers them (``load_config`` calls it, so every ``train_net``
worker does); a JSON is checked entry by entry when it is registered
(:mod:`retinanet_fl.data.coco_json`), a VOC folder's XML files when they are read for the classes.
Both are evaluated with :mod:`retinanet_fl.evaluation`'s COCO evaluator on the ground truth that
training reads.
"""

import difflib
import logging
import os
import re
import xml.etree.ElementTree as ET
from typing import List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.data.datasets.pascal_voc import load_voc_instances

from .coco_json import read_coco_categories

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_PREFIX",
    "VOC_PREFIX",
    "canonical_dataset_name",
    "check_registered",
    "is_path_dataset",
    "register_path_datasets",
]

COCO_PREFIX = "coco:"
VOC_PREFIX = "voc:"
DEFAULT_VOC_SPLIT = "trainval"
# Annotation fields load_coco_json drops unless asked: the id names an annotation in the
# sanitiser's messages, the area is what evaluation scores (COCO's is the mask's, not the box's).
COCO_EXTRA_ANNOTATION_KEYS = ["id", "area"]
SPEC_HELP = (
    'Give datasets by path as DATASETS.TRAIN ("coco:path/to/train.json:path/to/images",) or '
    '("voc:path/to/VOC_folder:trainval",).'
)
# Where a JSON part ends when no split of the name names an existing file.
_JSON_PART = re.compile(r"(.+?\.json)(?::(.*))?$", re.IGNORECASE)


def is_path_dataset(name: str) -> bool:
    """Returns: whether a dataset name is a ``coco:`` or ``voc:`` path."""
    return name.startswith((COCO_PREFIX, VOC_PREFIX))


def _is_drive_colon(text: str, index: int) -> bool:
    """Whether ``text[index]`` is the colon of a Windows drive (``C:\\`` or ``C:/``) that starts
    the text or follows a separating colon."""
    starts_part = index == 1 or (index >= 2 and text[index - 2] == ":")
    return starts_part and text[index - 1].isalpha() and text[index + 1 : index + 2] in ("\\", "/")


def _separators(text: str) -> List[int]:
    """Returns: the indices of the colons of ``text`` that may separate two parts."""
    return [i for i, char in enumerate(text) if char == ":" and not _is_drive_colon(text, i)]


def _malformed(name: str, prefix: str) -> ValueError:
    return ValueError(f"Dataset {name!r} is not of the form '{prefix}<path>[:<...>]'. {SPEC_HELP}")


def _split_coco(name: str, rest: str) -> Tuple[str, str]:
    """``<json>[:<image_root>]`` -> (json, image_root or "")."""
    colons = [i for i, char in enumerate(rest) if char == ":"]
    candidates = [(rest, "")] + [(rest[:i], rest[i + 1 :]) for i in reversed(colons)]
    for json_file, image_root in candidates:
        if json_file and os.path.isfile(json_file):
            return json_file, image_root
    # No such file (registration says which): the JSON part ends at ".json", or at the one colon.
    match = _JSON_PART.match(rest)
    if match:
        return match.group(1), match.group(2) or ""
    separators = _separators(rest)
    if len(separators) > 1:
        raise _malformed(name, COCO_PREFIX)
    if separators:
        return rest[: separators[0]], rest[separators[0] + 1 :]
    return rest, ""


def _split_voc(rest: str) -> Tuple[str, str]:
    """``<folder>[:<split>]`` -> (folder, split or "")."""
    separators = _separators(rest)
    if os.path.isdir(rest) or not separators:
        return rest, ""
    folder, split = rest[: separators[-1]], rest[separators[-1] + 1 :]
    if not split or any(separator in split for separator in ("/", "\\")):
        return rest, ""
    return folder, split


def _split_spec(name: str) -> Tuple[str, str, str]:
    """``coco:`` / ``voc:`` name -> (prefix, path, image root / split or "")."""
    prefix = COCO_PREFIX if name.startswith(COCO_PREFIX) else VOC_PREFIX
    rest = name[len(prefix) :]
    path, second = _split_coco(name, rest) if prefix == COCO_PREFIX else _split_voc(rest)
    if not path:
        raise _malformed(name, prefix)
    return prefix, path, second


def canonical_dataset_name(name: str) -> str:
    """
    Args:
        name: a dataset name.

    Returns:
        a ``coco:`` / ``voc:`` name with its paths absolute; any other name unchanged.
    """
    if not is_path_dataset(name):
        return name
    prefix, path, second = _split_spec(name)
    if second and prefix == COCO_PREFIX:
        second = os.path.abspath(second)
    return prefix + os.path.abspath(path) + (f":{second}" if second else "")


def _suggestion(name: str, registered: Sequence[str]) -> str:
    """Returns: " (did you mean ...?)" for an unregistered name, or ""."""
    head, colon, rest = name.partition(":")
    if colon and f"{head.lower()}:" in (COCO_PREFIX, VOC_PREFIX):
        guesses = [f"{head.lower()}:{rest}"]
    elif name.lower().endswith(".json"):
        guesses = [COCO_PREFIX + name]
    elif os.path.isdir(os.path.join(name, "Annotations")):
        guesses = [VOC_PREFIX + name]
    else:
        guesses = difflib.get_close_matches(name, registered, n=3)
    return f" (did you mean {' or '.join(repr(guess) for guess in guesses)}?)" if guesses else ""


def check_registered(names: Sequence[str]) -> None:
    """
    Raise a ValueError naming the first dataset name that is neither registered nor a ``coco:`` /
    ``voc:`` path, with what it may have meant.

    Args:
        names: dataset names, e.g. ``cfg.DATASETS.TRAIN + cfg.DATASETS.TEST``.
    """
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered and not is_path_dataset(name):
            raise ValueError(
                f"Dataset {name!r} is not registered{_suggestion(name, registered)}. {SPEC_HELP} "
                "Registered names: see detectron2.data.DatasetCatalog.list()."
            )


class _DropMessage(logging.Filter):
    """Drops a log record whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _load_coco(json_file: str, image_root: str, name: str) -> List[dict]:
    # Detectron2 warns that it maps ids outside [1, K] to contiguous ones: for a dataset by path
    # that mapping is the documented behaviour, not something to act on.
    coco_logger = logging.getLogger("detectron2.data.datasets.coco")
    quiet = _DropMessage("Category ids in annotations are not in [1, #categories]")
    coco_logger.addFilter(quiet)
    try:
        return load_coco_json(json_file, image_root, name, COCO_EXTRA_ANNOTATION_KEYS)
    finally:
        coco_logger.removeFilter(quiet)


def _register_coco(name: str) -> None:
    _, json_file, image_root = _split_spec(name)
    image_root = image_root or os.path.dirname(json_file)
    categories = read_coco_categories(json_file, SPEC_HELP)
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


def _read_voc_object_names(xml_file: str) -> List[str]:
    """
    Returns: the object names of a Pascal VOC annotation file, after checking that it has what
    Detectron2's ``load_voc_instances`` reads: the image's size, each object's name and box.
    """
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{xml_file} is not valid XML ({error}): fix or remove it.") from error
    fix = "Detectron2's Pascal VOC loader reads them; add them."
    if root.findtext("size/width") is None or root.findtext("size/height") is None:
        raise ValueError(f"{xml_file} has no <size><width> and <height>. {fix}")
    names = []
    for index, obj in enumerate(root.findall("object")):
        name = obj.findtext("name")
        coordinates = [obj.findtext(f"bndbox/{key}") for key in ("xmin", "ymin", "xmax", "ymax")]
        if not name or None in coordinates:
            raise ValueError(
                f"{xml_file}: <object> {index} has no <name> or no <bndbox> with <xmin> <ymin> "
                f"<xmax> <ymax>. {fix}"
            )
        names.append(name)
    return names


def voc_class_names(folder: str) -> List[str]:
    """
    Args:
        folder: a Pascal VOC folder.

    Returns:
        the object names in its ``Annotations/*.xml``: VOC's 20 classes in Detectron2's order when
        they are exactly those 20, else sorted (a folder of cats and dogs is a 2-class dataset).
    """
    annotations = os.path.join(folder, "Annotations")
    if not os.path.isdir(annotations):
        raise FileNotFoundError(
            f"{folder} is not a Pascal VOC folder: it has no Annotations/ (expected Annotations/, "
            f"ImageSets/Main/<split>.txt and JPEGImages/). {SPEC_HELP}"
        )
    names = set()
    for file_name in sorted(os.listdir(annotations)):
        if file_name.endswith(".xml"):
            names.update(_read_voc_object_names(os.path.join(annotations, file_name)))
    if not names:
        raise ValueError(f"{annotations} has no <object><name> in any .xml file: no classes.")
    return list(VOC_CLASS_NAMES) if names == set(VOC_CLASS_NAMES) else sorted(names)


def _check_voc_split(folder: str, split_file: str) -> None:
    """Raise an error naming the images of a split without an annotation file, or for a split of
    one image."""
    with open(split_file) as f:
        file_ids = f.read().split()
    missing = [
        file_id
        for file_id in file_ids
        if not os.path.isfile(os.path.join(folder, "Annotations", f"{file_id}.xml"))
    ]
    if missing:
        raise FileNotFoundError(
            f"{split_file} lists {len(missing)} images without an Annotations/<id>.xml "
            f"(e.g. {missing[0]!r}): add their annotation files or remove them from the split."
        )
    if len(file_ids) == 1:
        # load_voc_instances reads the split with np.loadtxt, which makes one line a 0-d array.
        raise ValueError(
            f"{split_file} lists one image: Detectron2's Pascal VOC loader cannot read a split of "
            "one image. List at least two."
        )


def _register_voc(name: str) -> None:
    _, folder, split = _split_spec(name)
    split = split or DEFAULT_VOC_SPLIT
    split_file = os.path.join(folder, "ImageSets", "Main", f"{split}.txt")
    class_names = voc_class_names(folder)
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"Pascal VOC split file {split_file} does not exist. {SPEC_HELP}")
    _check_voc_split(folder, split_file)
    DatasetCatalog.register(name, lambda: load_voc_instances(folder, split, class_names))
    # Evaluated like a COCO JSON, on the same ground truth as training (COCO's AP and AP50), not
    # with Detectron2's Pascal VOC evaluator: that one re-reads the XML files, needs <difficult>
    # and guesses the AP's variant from the year.
    MetadataCatalog.get(name).set(
        thing_classes=class_names, dirname=folder, split=split, evaluator_type="coco"
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
