"""
The images an int8 model is calibrated on: N images of the config's ``DATASETS.TRAIN`` (datasets
given by path included), read and resized as at test time, after checking that the data has the
model's classes.
"""

import logging
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from ..data import load_dataset_dicts, read_image
from ..data.classes import check_model_classes, known_classes
from ..engine.trainer import explain_missing_dataset

__all__ = ["calibration_records", "calibration_images"]

logger = logging.getLogger(__name__)


def calibration_records(
    cfg: CfgNode, num_images: int, model_classes: Optional[Sequence[str]]
) -> List[Dict]:
    """
    Pick ``num_images`` records of ``DATASETS.TRAIN``, spread evenly over its datasets' images.

    Args:
        cfg: the model's config.
        num_images: N, at least 1; all the images when the data has fewer.
        model_classes: the model's class names (None: not checked).

    Returns:
        the dataset dicts of the chosen images.

    Raises:
        ValueError: N < 1, no DATASETS.TRAIN, data of other classes than the model's.
        FileNotFoundError: a dataset's files are missing (named, with where to put them).
    """
    if num_images < 1:
        raise ValueError(
            f"--calibration-images must be at least 1, got {num_images}: int8 calibration "
            "measures the activations' ranges on real images (100 to 500 is typical)."
        )
    dataset_names = list(cfg.DATASETS.TRAIN)
    if not dataset_names:
        raise ValueError(
            "--quantize int8 calibrates on images of DATASETS.TRAIN, which is empty: give the "
            "training data as a config override after the options, e.g. DATASETS.TRAIN "
            "\"('coco:path/to/train.json:path/to/images',)\"."
        )
    with explain_missing_dataset(dataset_names):
        records = [record for name in dataset_names for record in load_dataset_dicts(name)[0]]
    for name in dataset_names:
        if known_classes(name) is None:
            logger.warning(f"Dataset '{name}' has no class names: its classes are not checked.")
    check_model_classes(model_classes, "the checkpoint being quantized", dataset_names)
    if num_images >= len(records):
        if num_images > len(records):
            logger.info(
                f"Calibrating on all {len(records)} images of DATASETS.TRAIN "
                f"(--calibration-images {num_images})."
            )
        return records
    picks = np.linspace(0, len(records) - 1, num_images).round().astype(int)
    return [records[i] for i in picks]


def calibration_images(records: Sequence[Dict], cfg: CfgNode) -> Iterator[np.ndarray]:
    """
    Yields:
        each record's image as the exported model takes it: ``(3, H, W)`` uint8 in
        ``INPUT.FORMAT``, resized to ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``. An image that
        cannot be read is skipped with a warning naming it.
    """
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    for record in records:
        try:
            image = read_image(record["file_name"], cfg.INPUT.FORMAT)
        except OSError as error:
            logger.warning(f"Calibration skips an image: {error}")
            continue
        resized = resize.get_transform(image).apply_image(image)
        yield np.ascontiguousarray(resized.transpose(2, 0, 1))
