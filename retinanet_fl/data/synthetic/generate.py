"""
Writing the synthetic shapes dataset in COCO's format (images drawn by :mod:`.render`): 0 to
``MAX_OBJECTS_PER_IMAGE`` objects per image (or a fixed range, ``objects_per_image``), written
atomically. With a long-tail ratio, the training split's classes follow a geometric decay (see
:func:`long_tail_class_probs`) while validation stays balanced. Every image is drawn from its own
random stream, seeded by (seed, split, index), so an image does not depend on how many come
before it.
"""

import json
import logging
import math
import os
import shutil
import tempfile
from typing import Optional, Tuple

import cv2
import numpy as np

from .render import DISTRACTORS_PER_IMAGE, MIN_OBJECT_SIZE, SYNTHETIC_CLASSES, render_image

__all__ = [
    "SYNTHETIC_CLASSES",
    "SPLITS",
    "generate_synthetic_coco",
    "ensure_synthetic_coco",
    "synthetic_split_paths",
    "is_synthetic_coco_complete",
    "long_tail_class_probs",
]

logger = logging.getLogger(__name__)

SPLITS: Tuple[str, ...] = ("train", "val")

DEFAULT_NUM_TRAIN = 800
DEFAULT_NUM_VAL = 100
DEFAULT_IMAGE_SIZE = 160
DEFAULT_SEED = 0
MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 90
_GENERATOR_VERSION = 1


def synthetic_split_paths(root: str, split: str) -> Tuple[str, str]:
    """
    Args:
        root: the dataset's folder.
        split: "train" or "val".

    Returns:
        (json_file, image_root) of that split.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown synthetic split {split!r}; allowed: {SPLITS}.")
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def is_synthetic_coco_complete(root: str) -> bool:
    """True when ``root`` holds every split's annotation file (written last, so images exist)."""
    return all(os.path.isfile(synthetic_split_paths(root, split)[0]) for split in SPLITS)


def _check_int_at_least(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"Synthetic dataset: {name} must be an integer >= {minimum}, got {value!r}."
        )


def _check_long_tail_ratio(ratio: Optional[float]) -> Optional[float]:
    if ratio is None:
        return None
    if (
        not isinstance(ratio, (int, float, np.number))
        or isinstance(ratio, bool)
        or not math.isfinite(ratio)
        or ratio < 1
    ):
        raise ValueError(
            "Synthetic dataset: long_tail_ratio must be a finite number >= 1 "
            f"(most / least frequent class), got {ratio!r}."
        )
    return float(ratio)


def long_tail_class_probs(ratio: float, num_classes: int = len(SYNTHETIC_CLASSES)) -> np.ndarray:
    """
    Class frequencies of a long-tailed training split: a geometric (exponential) decay from the
    first class of ``SYNTHETIC_CLASSES`` (most frequent) to the last (rarest),
    p_i ∝ ratio^(-i / (K - 1)), so that p_0 / p_(K-1) = ratio and neighbours differ by the same
    factor. Geometric rather than linear so that every class is rarer than the one before by the
    same factor, as in the long-tailed benchmarks (e.g. CIFAR-LT of Cui et al., CVPR 2019).

    Args:
        ratio: most / least frequent class, >= 1 (1: balanced).
        num_classes: K >= 2.

    Returns:
        (K,) float64 probabilities summing to 1.
    """
    ratio = _check_long_tail_ratio(ratio)
    _check_int_at_least("num_classes", num_classes, 2)
    weights = ratio ** (-np.arange(num_classes) / (num_classes - 1))
    return weights / weights.sum()


def _write_split(
    out_dir: str,
    split: str,
    split_index: int,
    num_images: int,
    image_size: int,
    seed: int,
    objects_per_image: Optional[Tuple[int, int]],
    distractors_per_image: float,
    max_object_size: Optional[float],
    long_tail_ratio: Optional[float] = None,
) -> int:
    """
    Render one split into ``out_dir``; returns the number of annotations. ``long_tail_ratio``
    skews the classes of this split (None: balanced).
    """
    class_probs = None if long_tail_ratio is None else long_tail_class_probs(long_tail_ratio)
    json_file, image_root = synthetic_split_paths(out_dir, split)
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))
        image, objects = render_image(
            rng, image_size, objects_per_image, distractors_per_image, max_object_size, class_probs
        )
        file_name = f"{index + 1:06d}.jpg"
        path = os.path.join(image_root, file_name)
        if not cv2.imwrite(
            path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        ):
            raise OSError(f"Could not write the synthetic image {path}.")
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for category_id, visible in objects:
            ys, xs = np.nonzero(visible)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [
                        float(x0),
                        float(y0),
                        float(xs.max() + 1 - x0),
                        float(ys.max() + 1 - y0),
                    ],
                    "area": float(len(xs)),
                    "iscrowd": 0,
                }
            )
    dataset = {
        "info": {
            "description": "retinanet_fl synthetic shapes",
            "version": str(_GENERATOR_VERSION),
            "split": split,
            "seed": seed,
            "image_size": image_size,
            "objects_per_image": None if objects_per_image is None else list(objects_per_image),
            "distractors_per_image": distractors_per_image,
            "max_object_size": max_object_size,
            "long_tail_ratio": long_tail_ratio,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SYNTHETIC_CLASSES)
        ],
    }
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with open(json_file, "w") as f:
        json.dump(dataset, f)
    return len(annotations)


def _check_layout(
    objects_per_image: Optional[Tuple[int, int]],
    distractors_per_image: float,
    max_object_size: Optional[float],
    image_size: int,
) -> Optional[Tuple[int, int]]:
    """Check the object counts and sizes; returns ``objects_per_image`` as a tuple."""
    if max_object_size is not None and not (
        isinstance(max_object_size, (int, float))
        and MIN_OBJECT_SIZE <= max_object_size <= image_size
    ):
        raise ValueError(
            f"Synthetic dataset: max_object_size must be in [{MIN_OBJECT_SIZE:g}, image_size = "
            f"{image_size}], got {max_object_size!r}."
        )
    if objects_per_image is not None:
        if not isinstance(objects_per_image, (list, tuple)) or len(objects_per_image) != 2:
            raise ValueError(
                "Synthetic dataset: objects_per_image must be (min, max), "
                f"got {objects_per_image!r}."
            )
        low, high = objects_per_image
        _check_int_at_least("objects_per_image min", low, 0)
        _check_int_at_least("objects_per_image max", high, max(low, 1))
        objects_per_image = (int(low), int(high))
    if not isinstance(distractors_per_image, (int, float)) or not 0 <= distractors_per_image < 1e3:
        raise ValueError(
            "Synthetic dataset: distractors_per_image must be a number in [0, 1000), "
            f"got {distractors_per_image!r}."
        )
    return objects_per_image


def _render_to_temp(
    out_dir: str,
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    objects_per_image: Optional[Tuple[int, int]],
    distractors_per_image: float,
    max_object_size: Optional[float],
    long_tail_ratio: Optional[float] = None,
) -> str:
    """Render the dataset into a new hidden folder beside ``out_dir`` (same file system: rename)."""
    _check_int_at_least("num_train", num_train, 1)
    _check_int_at_least("num_val", num_val, 1)
    _check_int_at_least("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int_at_least("seed", seed, 0)
    objects_per_image = _check_layout(
        objects_per_image, distractors_per_image, max_object_size, image_size
    )
    long_tail_ratio = _check_long_tail_ratio(long_tail_ratio)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        for split_index, (split, num_images) in enumerate(zip(SPLITS, (num_train, num_val))):
            _write_split(
                tmp_dir,
                split,
                split_index,
                num_images,
                image_size,
                seed,
                objects_per_image,
                float(distractors_per_image),
                None if max_object_size is None else float(max_object_size),
                # Only training is long-tailed: a balanced validation split measures every class
                # on as many objects.
                long_tail_ratio if split == "train" else None,
            )
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return tmp_dir


def _check_replaceable(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(
            f"Synthetic dataset output {out_dir} exists and is not a folder; "
            "choose another out_dir."
        )
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - {"annotations", *SPLITS})
        if foreign:
            raise ValueError(
                f"Refusing to replace {out_dir}: it holds {', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}, which the synthetic dataset does not "
                "write. Choose another out_dir, or delete the folder."
            )


def generate_synthetic_coco(
    out_dir: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    objects_per_image: Optional[Tuple[int, int]] = None,
    distractors_per_image: float = DISTRACTORS_PER_IMAGE,
    max_object_size: Optional[float] = None,
    long_tail_ratio: Optional[float] = None,
) -> str:
    """
    Write the synthetic dataset to ``out_dir`` in COCO's format, replacing an earlier one there:
    ``{train,val}/NNNNNN.jpg`` and ``annotations/instances_{train,val}.json``. The result depends
    only on the arguments. It is rendered into a hidden folder beside ``out_dir`` and moved into
    place, so readers never see a partial dataset.

    Args:
        out_dir: the dataset's folder.
        num_train, num_val: images per split (>= 1).
        image_size: side of the square images in pixels (>= 32); object boxes span 10 px to half
            of it (or to ``max_object_size``).
        seed: random seed (>= 0).
        objects_per_image: (min, max) objects per image, the count uniform in it; None: the
            default distribution (8 % empty images, else geometric with mean ~3.6, at most 16).
            Crowded images place fewer objects than asked where no free place is found.
        distractors_per_image: mean of the Poisson number of distractors per image (clutter).
        max_object_size: the largest object diameter in pixels; None: half the image. Fixed, it
            keeps the objects' sizes when the canvas grows (more negatives per positive).
        long_tail_ratio: None: balanced classes; a number >= 1: the training split's class
            frequencies decay geometrically over ``SYNTHETIC_CLASSES`` from the first to the last,
            spanning 1:ratio (:func:`long_tail_class_probs`); validation stays balanced.

    Returns:
        ``out_dir``.
    """
    _check_replaceable(out_dir)
    tmp_dir = _render_to_temp(
        out_dir,
        num_train,
        num_val,
        image_size,
        seed,
        objects_per_image,
        distractors_per_image,
        max_object_size,
        long_tail_ratio,
    )
    old_dir = None
    try:
        if os.path.isdir(out_dir):
            # Re-check: the folder may have changed while rendering.
            _check_replaceable(out_dir)
            old_dir = tempfile.mkdtemp(
                prefix=f".{os.path.basename(os.path.abspath(out_dir))}.old-",
                dir=os.path.dirname(os.path.abspath(out_dir)),
            )
            os.rename(out_dir, os.path.join(old_dir, "dataset"))
        os.rename(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
    return out_dir


def ensure_synthetic_coco(
    out_dir: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    objects_per_image: Optional[Tuple[int, int]] = None,
    distractors_per_image: float = DISTRACTORS_PER_IMAGE,
    max_object_size: Optional[float] = None,
    long_tail_ratio: Optional[float] = None,
) -> str:
    """
    Generate the synthetic dataset at ``out_dir`` unless it is already complete there. Safe when
    several processes call it at once: each renders into its own hidden folder, the first to rename
    it into place wins and the others discard theirs.

    Args:
        out_dir: the dataset's folder.
        num_train, num_val, image_size, seed, objects_per_image, distractors_per_image,
            max_object_size, long_tail_ratio: as in :func:`generate_synthetic_coco`, used only
            when generating.

    Returns:
        ``out_dir``.
    """
    if is_synthetic_coco_complete(out_dir):
        return out_dir
    logger.info(f"Generating the synthetic dataset at {out_dir} (first use) ...")
    tmp_dir = _render_to_temp(
        out_dir,
        num_train,
        num_val,
        image_size,
        seed,
        objects_per_image,
        distractors_per_image,
        max_object_size,
        long_tail_ratio,
    )
    try:
        # rename() replaces a missing or empty folder atomically and fails on a non-empty one.
        os.rename(tmp_dir, out_dir)
    except OSError:
        if not is_synthetic_coco_complete(out_dir):
            raise RuntimeError(
                f"{out_dir} exists but holds no complete synthetic dataset (annotations/"
                "instances_{train,val}.json are missing). Delete it, or regenerate it with "
                f"retinanet_fl.data.synthetic.generate_synthetic_coco('{out_dir}')."
            ) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir
