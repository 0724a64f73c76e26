"""Detectron2's DatasetMapper, reading any image into INPUT.FORMAT, with errors naming the file."""

import copy
import logging
from typing import Dict

import numpy as np
import torch
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

    It expects datasets checked by :func:`retinanet_fl.data.prepare_dataset_dicts`, which drops
    and clips bad boxes before training and counts them. Semantic segmentation is not read.
    """

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict: one image's record, in Detectron2's dataset format.

        Returns:
            the record with "image" (C, H, W) and, in training, "instances" (gt_boxes, gt_classes).
        """
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        image = read_image(dataset_dict["file_name"], self.image_format)
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
