"""
Detectron2's DatasetMapper, reading any image into INPUT.FORMAT, with errors naming the file and,
in training, unreadable images skipped (``DATALOADER.SKIP_UNREADABLE_IMAGES``).
"""

import copy
import logging
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import log_every_n_seconds
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["RobustDatasetMapper", "read_image"]

logger = logging.getLogger(__name__)

# PIL modes of 16-bit (and 32-bit integer) grey images, e.g. 16-bit PNGs. PIL's own conversion to
# 8 bits clips them at 255, which turns nearly every pixel white, so they are rescaled instead.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey PIL image as an 8-bit one ("L"), its 0-65535 range mapped onto 0-255."""
    pixels = np.asarray(image, dtype=np.float32) / 257.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


def read_image(file_name: str, image_format: str) -> np.ndarray:
    """
    Read an image file of any PIL mode (grey, RGBA, palette, CMYK, 16-bit) into ``image_format``,
    applying its EXIF orientation, like Detectron2's ``read_image``. An alpha channel is dropped.

    Args:
        file_name: the image's path (any path PathManager opens).
        image_format: "BGR", "RGB", "L" or another format of Detectron2's ``read_image``.

    Returns:
        the image, (H, W, C) uint8 (float for "YUV-BT.601").

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file is not an image PIL can read.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"Image file '{file_name}' does not exist. Check the image_root the dataset was "
            "registered with and the image's file_name in its annotations."
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise OSError(f"Image file '{file_name}' cannot be read as an image: {error}") from error
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = _to_8_bit(image)
    return utils.convert_PIL_to_numpy(image, image_format)


class RobustDatasetMapper(DatasetMapper):
    """
    Detectron2's :class:`DatasetMapper` for box detection, built the same way
    (``RobustDatasetMapper(cfg, is_train)`` or with keyword arguments), which in addition:

    * reads grey, RGBA, palette, CMYK and 16-bit images into ``INPUT.FORMAT``;
    * raises errors that name the image file when it is missing or unreadable;
    * logs the boxes that the augmentations make empty, which Detectron2 drops silently.

    * in training, with ``skip_unreadable_images``, skips an image that cannot be read (Detectron2's
      loader then draws another) with one warning naming it, and stops once more than
      ``max_unreadable_fraction`` of the dataset's images were unreadable (counted per loader
      worker).

    It expects datasets checked by :func:`retinanet_fl.data.prepare_dataset_dicts`, which drops
    and clips bad boxes before training and counts them. Semantic segmentation is not read.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        skip_unreadable_images: bool = False,
        max_unreadable_fraction: float = 0.01,
        dataset_size: int = 0,
        **kwargs,
    ):
        """
        Args:
            is_train, kwargs: as :class:`DatasetMapper`.
            skip_unreadable_images: in training, skip unreadable images instead of raising.
            max_unreadable_fraction: in [0, 1]: the share of ``dataset_size`` images that may be
                skipped before training stops.
            dataset_size: the number of images of the training set.
        """
        super().__init__(is_train, **kwargs)
        if not 0.0 <= max_unreadable_fraction <= 1.0:
            raise ValueError(
                "max_unreadable_fraction (DATALOADER.MAX_UNREADABLE_FRACTION) must be in [0, 1], "
                f"got {max_unreadable_fraction}."
            )
        self.skip_unreadable_images = skip_unreadable_images and is_train
        self.max_unreadable_fraction = max_unreadable_fraction
        self.dataset_size = dataset_size
        self.max_unreadable = max_unreadable_fraction * dataset_size
        self.unreadable_files = set()

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_size: int = 0):
        return {
            **super().from_config(cfg, is_train),
            "skip_unreadable_images": cfg.DATALOADER.SKIP_UNREADABLE_IMAGES,
            "max_unreadable_fraction": cfg.DATALOADER.MAX_UNREADABLE_FRACTION,
            "dataset_size": dataset_size,
        }

    def _read_or_skip(self, file_name: str) -> Optional[np.ndarray]:
        """The image, or None for an unreadable one that training skips."""
        try:
            return read_image(file_name, self.image_format)
        except OSError as error:
            if not self.skip_unreadable_images:
                raise
            self.unreadable_files.add(file_name)
            count = len(self.unreadable_files)
            if count > self.max_unreadable:
                raise RuntimeError(
                    f"{count} images of the training set could not be read, more than "
                    f"DATALOADER.MAX_UNREADABLE_FRACTION = {self.max_unreadable_fraction} of its "
                    f"{self.dataset_size} images: fix or remove them, or raise the fraction. "
                    f"The last: {error}"
                ) from error
            logger.warning(f"Skipped an unreadable training image ({count} so far): {error}")
            return None

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """
        Args:
            dataset_dict: one image's record, in Detectron2's dataset format.

        Returns:
            the record with "image" (C, H, W) and, in training, "instances" (gt_boxes, gt_classes);
            None for a skipped unreadable image.
        """
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = self._read_or_skip(dataset_dict["file_name"])
        if image is None:
            return None
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        # An image without an "annotations" list still trains, as a negative.
        dataset_dict.setdefault("annotations", [])
        for annotation in dataset_dict["annotations"]:
            # Detectron2's resize scales the box array in place: integer boxes would be truncated.
            if "bbox" in annotation:
                annotation["bbox"] = [float(value) for value in annotation["bbox"]]
        num_boxes = sum(
            not annotation.get("iscrowd", 0) for annotation in dataset_dict["annotations"]
        )
        self._transform_annotations(dataset_dict, transforms, image_shape)
        num_dropped = num_boxes - len(dataset_dict["instances"])
        if num_dropped:
            log_every_n_seconds(
                logging.WARNING,
                f"{num_dropped} of {num_boxes} boxes of image '{dataset_dict['file_name']}' became "
                f"empty after the augmentations (resized to {image_shape}) and were dropped.",
                n=60,
                name=__name__,
            )
        return dataset_dict
