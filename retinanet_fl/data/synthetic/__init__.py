"""
The embedded synthetic dataset: red and blue circles, squares and triangles on cluttered
backgrounds, in COCO's format (see :mod:`.generate` for what the images hold).

Importing this module registers ``synthetic_train`` and ``synthetic_val`` in Detectron2's
``DatasetCatalog``, rooted at ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``).
The dataset is generated with the default sizes the first time one of them is loaded, if missing.
``python -m retinanet_fl.data.synthetic --out DIR`` writes it explicitly, with other sizes if asked.
"""

import functools
import os
from typing import Dict, List

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
    "DEFAULT_SYNTHETIC_ROOT",
    "generate_synthetic_coco",
    "ensure_synthetic_coco",
    "is_synthetic_coco_complete",
    "synthetic_split_paths",
    "load_synthetic_coco",
    "register_synthetic_coco",
    "long_tail_class_probs",
]

DEFAULT_SYNTHETIC_ROOT = os.path.join(
    os.environ.get("DETECTRON2_DATASETS", "datasets"), "synthetic"
)


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
    root: str, prefix: str = "synthetic", **generate_kwargs
) -> Dict[str, str]:
    """
    Register the splits at ``root`` as ``{prefix}_train`` and ``{prefix}_val``, like Detectron2's
    ``register_coco_instances`` (same metadata: json_file, image_root, evaluator_type "coco",
    thing_classes) but generating the dataset on first load when it is missing.

    Args:
        root: the dataset's folder.
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
        json_file, image_root = synthetic_split_paths(root, split)
        DatasetCatalog.register(
            name, functools.partial(load_synthetic_coco, root, split, name, **generate_kwargs)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_CLASSES),
        )
    return names


register_synthetic_coco(
    DEFAULT_SYNTHETIC_ROOT,
    num_train=DEFAULT_NUM_TRAIN,
    num_val=DEFAULT_NUM_VAL,
    image_size=DEFAULT_IMAGE_SIZE,
    seed=DEFAULT_SEED,
)
