"""
The embedded synthetic dataset: red and blue circles, squares and triangles on cluttered
backgrounds, in COCO's format (see :mod:`.generate` for what the images hold).

Importing this module registers ``synthetic_train`` and ``synthetic_val`` in Detectron2's
``DatasetCatalog``, rooted at ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``)
as the variable is when they are loaded.
The dataset is generated with the default sizes the first time one of them is loaded, if missing.
:func:`generate_synthetic_coco` writes it explicitly, elsewhere or with other sizes.
"""

import functools
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from .generate import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    SPLITS,
    SYNTHETIC_CLASSES,
    ensure_synthetic_coco,
    generate_synthetic_coco,
    is_synthetic_coco_complete,
    long_tail_class_probs,
    synthetic_split_paths,
)

__all__ = [
    "SYNTHETIC_CLASSES",
    "SPLITS",
    "default_synthetic_root",
    "generate_synthetic_coco",
    "ensure_synthetic_coco",
    "is_synthetic_coco_complete",
    "synthetic_split_paths",
    "load_synthetic_coco",
    "register_synthetic_coco",
    "long_tail_class_probs",
]


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``), as it is now."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "synthetic")


def load_synthetic_coco(root: str, split: str, dataset_name: str, **generate_kwargs) -> List[Dict]:
    """
    Generate the dataset at ``root`` if it is missing, then load one split with Detectron2's
    ``load_coco_json`` (which also fills the metadata's category id mapping).

    Args:
        root: the dataset's folder.
        split: "train" or "val".
        dataset_name: the registered name, for the metadata.
        generate_kwargs: arguments of :func:`generate_synthetic_coco`, used only when generating.

    Returns:
        the split in Detectron2's standard dataset dicts format.
    """
    ensure_synthetic_coco(root, **generate_kwargs)
    json_file, image_root = synthetic_split_paths(root, split)
    return load_coco_json(json_file, image_root, dataset_name)


def register_synthetic_coco(
    root: Optional[str], prefix: str = "synthetic", **generate_kwargs
) -> Dict[str, str]:
    """
    Register the splits at ``root`` as ``{prefix}_train`` and ``{prefix}_val``, like Detectron2's
    ``register_coco_instances`` (same metadata: json_file, image_root, evaluator_type "coco",
    thing_classes) but generating the dataset on first load when it is missing.

    Args:
        root: the dataset's folder; None for :func:`default_synthetic_root`, read at each load.
        prefix: start of the dataset names.
        generate_kwargs: num_train, num_val, image_size, seed, objects_per_image,
            distractors_per_image of :func:`generate_synthetic_coco`, used only when generating.

    Returns:
        split -> registered dataset name.
    """
    names = {split: f"{prefix}_{split}" for split in SPLITS}
    taken = [name for name in names.values() if name in DatasetCatalog.list()]
    if taken:
        raise ValueError(
            f"Datasets {taken} are already registered; pick another prefix than {prefix!r}."
        )
    for split, name in names.items():
        DatasetCatalog.register(
            name, functools.partial(_load_registered, root, split, name, **generate_kwargs)
        )
        _set_metadata(name, root or default_synthetic_root(), split)
    return names


def _load_registered(root: Optional[str], split: str, name: str, **generate_kwargs) -> List[Dict]:
    if root is None:
        root = default_synthetic_root()
        _set_metadata(name, root, split)
    return load_synthetic_coco(root, split, name, **generate_kwargs)


def _set_metadata(name: str, root: str, split: str) -> None:
    json_file, image_root = synthetic_split_paths(root, split)
    if MetadataCatalog.get(name).get("json_file", json_file) != json_file:
        # $DETECTRON2_DATASETS changed since registration; Detectron2's metadata cannot be reset.
        MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(SYNTHETIC_CLASSES),
    )


register_synthetic_coco(
    None,
    num_train=DEFAULT_NUM_TRAIN,
    num_val=DEFAULT_NUM_VAL,
    image_size=DEFAULT_IMAGE_SIZE,
    seed=DEFAULT_SEED,
)
