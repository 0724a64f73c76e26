"""
Load-time checks of detection datasets in Detectron2's format, so training survives what real
datasets contain, and whatever is changed or dropped is counted and logged, never silently.

Per dataset, :func:`prepare_dataset_dicts` logs one summary line such as::

    synthetic_train: 10 images, 37 boxes; dropped 3 boxes with zero width or height,
    2 boxes with category ids not in the dataset (99 x2); clipped 5 boxes to the image; ...

What happens to each kind of bad input:

* category ids that are not in the json's ``categories``: Detectron2's ``load_coco_json`` raises a
  ``KeyError``; the dataset is loaded again without them (:func:`load_dataset_dicts`);
* contiguous category ids outside ``[0, len(thing_classes))``: dropped;
* boxes with a non-finite coordinate, zero or negative width or height, or entirely outside the
  image: dropped; boxes partly outside the image: clipped to it;
* images without annotations (or left without any by the drops): kept as negatives, or removed
  when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is True (Detectron2's default, and what Detectron,
  the paper's code base, does);
* image files that do not exist: a ``FileNotFoundError`` naming them, before training starts;
  unreadable images and sizes other than annotated: see :mod:`.image_check`;
* a training set without any box left: a ``ValueError`` naming its datasets.

Clipping a box removes its "area" (the object's area in the JSON), so that evaluation scores the
clipped box's (:mod:`retinanet_fl.evaluation`).
"""

import collections
import dataclasses
import itertools
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import (
    filter_images_with_only_crowd_annotations,
    print_instances_class_histogram,
)
from detectron2.data.datasets.coco import load_coco_json
from detectron2.data.detection_utils import check_metadata_consistency
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .by_path import (
    COCO_EXTRA_ANNOTATION_KEYS,
    COCO_PREFIX,
    VOC_PREFIX,
    check_registered,
    register_path_datasets,
)
from .image_check import check_dataset_images

__all__ = [
    "DatasetReport",
    "MIN_BOX_SIZE",
    "check_image_files",
    "load_dataset_dicts",
    "prepare_dataset_dicts",
    "sanitize_dataset_dicts",
]

logger = logging.getLogger(__name__)

# Boxes need a positive width and height: the box regression target is log(gt size / anchor size).
# Detectron2's filter_empty_instances uses the same threshold after the augmentations.
MIN_BOX_SIZE = 1e-5

# Reasons a box annotation is dropped, as they read in the summary line.
DROP_NO_BOX = "without a box"
DROP_NON_FINITE = "with non-finite coordinates"
DROP_ZERO_SIZE = "with zero or negative width or height"
DROP_OUTSIDE = "entirely outside the image"

# How many missing image files an error lists by name.
MAX_FILES_LISTED = 5


@dataclasses.dataclass
class DatasetReport:
    """
    What was found, changed and dropped in one dataset.

    Attributes:
        dataset_name: the registered name.
        num_images: images in the dataset as registered.
        num_boxes: non-crowd box annotations as registered.
        num_crowd: crowd annotations (kept in the dicts; Detectron2's mapper ignores them).
        dropped: reason -> boxes dropped for it.
        unknown_category_ids: category id -> boxes dropped because the dataset has no such category.
        num_clipped: boxes partly outside their image, clipped to it.
        first_dropped: reason -> the first annotation dropped for it (its id and image file).
        num_images_without_annotations: images registered without any non-crowd annotation.
        num_images_emptied: images whose annotations were all dropped.
        num_images_removed: images removed for having no annotations (FILTER_EMPTY_ANNOTATIONS).
    """

    dataset_name: str
    num_images: int = 0
    num_boxes: int = 0
    num_crowd: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unknown_category_ids: collections.Counter = dataclasses.field(
        default_factory=collections.Counter
    )
    num_clipped: int = 0
    first_dropped: Dict[str, str] = dataclasses.field(default_factory=dict)
    num_images_without_annotations: int = 0
    num_images_emptied: int = 0
    num_images_removed: int = 0

    @property
    def num_dropped(self) -> int:
        """Boxes dropped for any reason."""
        return sum(self.dropped.values()) + sum(self.unknown_category_ids.values())

    def summary(self) -> str:
        """
        Returns:
            one line: the dataset's size, then every non-zero count of what was done to it.
        """
        parts = [f"{self.dataset_name}: {self.num_images} images, {self.num_boxes} boxes"]
        drops = [f"{count} boxes {reason}" for reason, count in self.dropped.items() if count]
        if self.unknown_category_ids:
            ids = ", ".join(
                f"{cat_id} x{n}" for cat_id, n in self.unknown_category_ids.most_common()
            )
            drops.append(
                f"{sum(self.unknown_category_ids.values())} boxes with category ids not in the "
                f"dataset ({ids})"
            )
        if drops:
            parts.append("dropped " + ", ".join(drops))
            examples = "; ".join(
                f"{reason}: {entry}" for reason, entry in self.first_dropped.items()
            )
            if examples:
                parts.append(
                    f"first dropped: {examples} (fix them in the annotations to train on them)"
                )
        if self.num_clipped:
            parts.append(f"clipped {self.num_clipped} boxes to the image")
        if self.num_crowd:
            parts.append(f"{self.num_crowd} crowd annotations ignored in training")
        if self.num_images_without_annotations:
            parts.append(f"{self.num_images_without_annotations} images without annotations")
        if self.num_images_emptied:
            parts.append(f"{self.num_images_emptied} images left without annotations by the drops")
        if self.num_images_removed:
            parts.append(
                f"removed {self.num_images_removed} images without annotations "
                "(DATALOADER.FILTER_EMPTY_ANNOTATIONS is True; set it False to train on them as "
                "negatives)"
            )
        return "; ".join(parts)


def _is_unknown_category_error(error: KeyError) -> bool:
    # The KeyError load_coco_json raises for an annotation whose category_id is not in 'categories'.
    return "category_id=" in str(error)


def _load_coco_json_without_unknown_categories(
    dataset_name: str, report: DatasetReport, error: KeyError
) -> List[Dict]:
    """
    Load a dataset registered with ``register_coco_instances`` (metadata ``json_file`` and
    ``image_root``) after ``load_coco_json`` failed on an unknown category id, dropping the
    annotations whose category id is not in the json's categories.
    """
    metadata = MetadataCatalog.get(dataset_name)
    # load_coco_json fills the id mapping from the json's categories before it reads annotations.
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is None or not {"json_file", "image_root"} <= set(metadata.as_dict()):
        raise error
    # Without dataset_name, load_coco_json keeps the json's category ids and maps nothing.
    dataset_dicts = load_coco_json(
        metadata.json_file, metadata.image_root, extra_annotation_keys=COCO_EXTRA_ANNOTATION_KEYS
    )
    for record in dataset_dicts:
        kept = []
        for annotation in record["annotations"]:
            if annotation["category_id"] in id_map:
                annotation["category_id"] = id_map[annotation["category_id"]]
                kept.append(annotation)
            else:
                report.unknown_category_ids[annotation["category_id"]] += 1
                report.num_boxes += not annotation.get("iscrowd", 0)
        record["annotations"] = kept
    return dataset_dicts


def load_dataset_dicts(dataset_name: str) -> Tuple[List[Dict], DatasetReport]:
    """
    ``DatasetCatalog.get``, except that annotations of a COCO json whose category id is not in the
    json's categories are dropped and counted, where ``load_coco_json`` raises a ``KeyError``.

    Args:
        dataset_name: a name registered in ``DatasetCatalog``.

    Returns:
        the dataset dicts, and the report that counts the dropped annotations.
    """
    report = DatasetReport(dataset_name)
    check_registered([dataset_name])
    register_path_datasets([dataset_name])
    try:
        dataset_dicts = DatasetCatalog.get(dataset_name)
    except KeyError as error:
        if not _is_unknown_category_error(error):
            raise
        dataset_dicts = _load_coco_json_without_unknown_categories(dataset_name, report, error)
    if not isinstance(dataset_dicts, list):
        raise TypeError(
            f"Dataset '{dataset_name}' is a {type(dataset_dicts).__name__}; the checks of "
            "retinanet_fl.data need a list of dicts in Detectron2's format: register a function "
            "that returns one."
        )
    if not dataset_dicts:
        raise ValueError(
            f"Dataset '{dataset_name}' has no images: the split is empty. Give DATASETS.TRAIN / "
            "DATASETS.TEST a split with images."
        )
    return dataset_dicts, report


def _image_root_hint(dataset_name: str) -> str:
    """Returns: where a dataset's images are looked for, and how to change it."""
    metadata = MetadataCatalog.get(dataset_name)
    if dataset_name.startswith(COCO_PREFIX):
        return (
            f"The file_name of each image in {metadata.json_file} is read relative to the image "
            f"root '{metadata.image_root}' (the JSON's folder unless the dataset's name gives "
            f"one): if the images are elsewhere, name their folder last, "
            f"'{COCO_PREFIX}{metadata.json_file}:<image_root>'."
        )
    if dataset_name.startswith(VOC_PREFIX):
        return (
            f"Pascal VOC images are read from {os.path.join(metadata.dirname, 'JPEGImages')}, "
            "as <id>.jpg for each <id> of the split: put them there."
        )
    image_root = metadata.get("image_root", "unknown")
    return (
        f"The dataset's image_root is '{image_root}': check the image_root it was registered with "
        "(e.g. register_coco_instances) and the images' file_name in its json."
    )


def check_image_files(dataset_dicts: Sequence[Dict], dataset_name: str) -> None:
    """
    Raise a FileNotFoundError naming the image files of a dataset that do not exist.

    Args:
        dataset_dicts: the dataset, in Detectron2's format.
        dataset_name: its registered name, for the message.
    """
    missing = [
        record["file_name"]
        for record in dataset_dicts
        if not PathManager.exists(record["file_name"])
    ]
    if not missing:
        return
    listed = ", ".join(repr(file_name) for file_name in missing[:MAX_FILES_LISTED])
    more = f" and {len(missing) - MAX_FILES_LISTED} more" if len(missing) > MAX_FILES_LISTED else ""
    raise FileNotFoundError(
        f"Dataset '{dataset_name}': {len(missing)} of {len(dataset_dicts)} image files do not "
        f"exist: {listed}{more}. {_image_root_hint(dataset_name)}"
    )


def _describe(annotation: Dict, record: Dict) -> str:
    """Returns: an annotation as a user finds it in the annotation file: id, box, image."""
    return (
        f"annotation {annotation.get('id', '(no id)')} bbox {annotation.get('bbox')} of "
        f"{record.get('file_name')}"
    )


def boxes_to_xyxy(boxes: np.ndarray, modes: Sequence[BoxMode]) -> np.ndarray:
    """
    Args:
        boxes: (N, 4) boxes, each in its own mode.
        modes: the N boxes' modes.

    Returns:
        (N, 4) the boxes as XYXY_ABS.
    """
    xyxy = boxes.copy()
    modes = np.fromiter(modes, dtype=np.int64, count=len(modes))
    is_xywh = modes == BoxMode.XYWH_ABS
    xyxy[is_xywh, 2:] += xyxy[is_xywh, :2]
    for index in np.flatnonzero(~is_xywh & (modes != BoxMode.XYXY_ABS)):  # rare: one by one
        xyxy[index] = BoxMode.convert(
            boxes[index].tolist(), BoxMode(modes[index]), BoxMode.XYXY_ABS
        )
    return xyxy


def _min_side(xyxy: np.ndarray) -> np.ndarray:
    """(N,) the smaller of the width and the height of (N, 4) XYXY boxes."""
    return np.minimum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])


def sanitize_dataset_dicts(
    dataset_dicts: Sequence[Dict], report: DatasetReport, num_classes: Optional[int] = None
) -> List[Dict]:
    """
    Drop the box annotations that cannot be trained on and clip the boxes partly outside their
    image, counting both in ``report``. Crowd annotations are kept as they are. The input is not
    modified.

    Args:
        dataset_dicts: the dataset, in Detectron2's format (contiguous category ids).
        report: where the counts go.
        num_classes: the dataset's number of categories; annotations with a category id outside
            ``[0, num_classes)`` are dropped. None: category ids are not checked.

    Returns:
        new dataset dicts; every record has an "annotations" list, possibly empty.
    """
    # Pass 1, per annotation: crowd, category and presence of a box. The boxes to check are
    # gathered so that pass 2 checks them all at once (COCO has 860k), and each record keeps
    # either an annotation or the index of its box in pass 2, in the original order.
    entries_per_record = []
    candidates, candidate_records, boxes, modes, image_sizes = [], [], [], [], []
    for record in dataset_dicts:
        # Without the image's size, boxes are not clipped here; the mapper clips them.
        image_size = (record.get("width", math.inf), record.get("height", math.inf))
        entries = []
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0):
                report.num_crowd += 1
                entries.append(annotation)
                continue
            report.num_boxes += 1
            category_id = annotation.get("category_id")
            if num_classes is not None and not (
                isinstance(category_id, (int, np.integer)) and 0 <= category_id < num_classes
            ):
                report.unknown_category_ids[category_id] += 1
                continue
            box = annotation.get("bbox")
            if box is None or len(box) != 4:
                report.dropped[DROP_NO_BOX] += 1
                report.first_dropped.setdefault(DROP_NO_BOX, _describe(annotation, record))
                continue
            entries.append(len(candidates))
            candidate_records.append(record)
            candidates.append(annotation)
            boxes.append(box)
            modes.append(annotation.get("bbox_mode", BoxMode.XYWH_ABS))
            image_sizes.append(image_size)
        entries_per_record.append(entries)

    # Pass 2, all boxes at once: finiteness, size, clipping to the image.
    xyxy = boxes_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), modes)
    limits = np.tile(np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2), 2)
    clipped = np.minimum(np.maximum(xyxy, 0.0), limits)
    finite = np.isfinite(xyxy).all(axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf: those boxes are already counted as non-finite
        has_size = finite & (_min_side(xyxy) >= MIN_BOX_SIZE)
        keep = has_size & (_min_side(clipped) >= MIN_BOX_SIZE)
    was_clipped = keep & (clipped != xyxy).any(axis=1)
    for reason, dropped in (
        (DROP_NON_FINITE, ~finite),
        (DROP_ZERO_SIZE, finite & ~has_size),
        (DROP_OUTSIDE, has_size & ~keep),
    ):
        if dropped.any():
            report.dropped[reason] += int(dropped.sum())
            first = int(np.argmax(dropped))
            report.first_dropped.setdefault(
                reason, _describe(candidates[first], candidate_records[first])
            )
    report.num_clipped += int(was_clipped.sum())

    # Pass 3: the records with the annotations kept.
    sanitized = []
    for record, entries in zip(dataset_dicts, entries_per_record):
        annotations = []
        for entry in entries:
            if isinstance(entry, dict):
                annotations.append(entry)
            elif was_clipped[entry]:
                clipped_box = clipped[entry].tolist()
                annotation = dict(candidates[entry], bbox=clipped_box, bbox_mode=BoxMode.XYXY_ABS)
                annotation.pop("area", None)  # the JSON's area was the unclipped object's
                annotations.append(annotation)
            elif keep[entry]:
                annotations.append(candidates[entry])
        if not any(not annotation.get("iscrowd", 0) for annotation in annotations):
            had_boxes = any(not a.get("iscrowd", 0) for a in record.get("annotations", []))
            if had_boxes:
                report.num_images_emptied += 1
            else:
                report.num_images_without_annotations += 1
        sanitized.append(dict(record, annotations=annotations))
    report.num_images += len(sanitized)
    return sanitized


def _describe_boxes(report: DatasetReport) -> str:
    """Returns: a dataset's numbers of images and boxes, for the error of no boxes."""
    described = (
        f"'{report.dataset_name}' has {report.num_images} images and {report.num_boxes} boxes"
    )
    if report.num_boxes:
        described += f", all {report.num_dropped} dropped (see the warning above)"
    return described


def _check_has_boxes(sanitized: Sequence[List[Dict]], reports: Sequence[DatasetReport]) -> None:
    """Raise a ValueError when sanitised datasets have no box left to train on, naming each."""
    records = itertools.chain.from_iterable(sanitized)
    if any(not a.get("iscrowd", 0) for record in records for a in record["annotations"]):
        return
    described = "; ".join(_describe_boxes(report) for report in reports)
    raise ValueError(
        f"No boxes to train on: {described}. Give DATASETS.TRAIN annotated objects: in a COCO "
        "JSON, 'annotations' whose image_id is an image's id; in a Pascal VOC folder, <object>s "
        "in the split's Annotations/*.xml. A split without annotations can only be a test set."
    )


def prepare_dataset_dicts(
    loaded: Sequence[Tuple[List[Dict], DatasetReport]],
    *,
    filter_empty: bool,
    is_train: bool = False,
    max_unreadable_fraction: Optional[float] = None,
) -> List[Dict]:
    """
    Check the image files of datasets loaded by :func:`load_dataset_dicts`, sanitize their
    annotations, remove the images without annotations if asked, log one summary line per
    dataset, and concatenate them, like Detectron2's ``get_detection_dataset_dicts``.

    Args:
        loaded: (dataset dicts, report) per dataset.
        filter_empty: remove the images without non-crowd annotations
            (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``; always False for test sets).
        is_train: the datasets are a training set (implied by ``filter_empty``): stop when they
            have no box to train on.
        max_unreadable_fraction: the share of a dataset's images that may be unreadable and are
            then removed (training's ``DATALOADER.MAX_UNREADABLE_FRACTION``); None (test sets):
            an unreadable image is an error. See :func:`check_dataset_images`.

    Returns:
        the datasets' dicts, concatenated, ready for ``build_detection_{train,test}_loader``.
    """
    names = [report.dataset_name for _, report in loaded]
    prepared = []
    for dataset_dicts, report in loaded:
        check_image_files(dataset_dicts, report.dataset_name)
        dataset_dicts = check_dataset_images(
            dataset_dicts, report.dataset_name, max_unreadable_fraction
        )
        thing_classes = MetadataCatalog.get(report.dataset_name).get("thing_classes")
        num_classes = len(thing_classes) if thing_classes is not None else None
        dataset_dicts = sanitize_dataset_dicts(dataset_dicts, report, num_classes)
        if filter_empty:
            num_before = len(dataset_dicts)
            dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
            report.num_images_removed = num_before - len(dataset_dicts)
        changed = report.num_dropped or report.num_clipped or report.num_images_removed
        logger.log(logging.WARNING if changed else logging.INFO, report.summary())
        prepared.append(dataset_dicts)
    if is_train or filter_empty:
        _check_has_boxes(prepared, [report for _, report in loaded])
    dataset_dicts = list(itertools.chain.from_iterable(prepared))
    if MetadataCatalog.get(names[0]).get("thing_classes") is not None:
        check_metadata_consistency("thing_classes", names)
        print_instances_class_histogram(dataset_dicts, MetadataCatalog.get(names[0]).thing_classes)
    return dataset_dicts
