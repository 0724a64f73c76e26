"""
The embedded synthetic dataset: red and blue circles, squares and triangles on cluttered
backgrounds, in COCO's format (see :mod:`.generate` for what the images hold).

Importing this module registers ``synthetic_train`` and ``synthetic_val`` in Detectron2's
``DatasetCatalog``, rooted at ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``)
as the variable is when they are loaded.
The dataset is generated with the default sizes the first time one of them is loaded, if missing.
``python -m retinanet_fl.data.synthetic --out DIR`` writes it explicitly, with other sizes if asked.

It also registers the variants of ``SYNTHETIC_VARIANTS`` (the imbalance study of
``docs/REPRODUCTION.md``): ``synthetic_<variant>_{train,val}`` at
``$DETECTRON2_DATASETS/synthetic_<variant>``, also generated on first use, and the long-tailed
variants of ``SYNTHETIC_LONGTAIL_VARIANTS`` (the ``beyond`` ablation table) the same way.
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
    "DEFAULT_SYNTHETIC_ROOT",
    "default_synthetic_root",
    "generate_synthetic_coco",
    "ensure_synthetic_coco",
    "is_synthetic_coco_complete",
    "synthetic_split_paths",
    "load_synthetic_coco",
    "register_synthetic_coco",
    "SYNTHETIC_VARIANTS",
    "SYNTHETIC_CANVAS_VARIANTS",
    "SYNTHETIC_LONGTAIL_VARIANTS",
    "long_tail_class_probs",
]


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``), as it is now."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "synthetic")


def __getattr__(name: str) -> str:
    # DEFAULT_SYNTHETIC_ROOT follows $DETECTRON2_DATASETS when it is read, not as it was at import.
    if name == "DEFAULT_SYNTHETIC_ROOT":
        return default_synthetic_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# Variants with a fixed number of objects per image on the same 160 px canvas, so the negatives per
# positive anchor change about tenfold between obj1 and obj12 (crowded images place ~11 of 12), and
# with less or more clutter (distractors per image, Poisson mean; the default dataset has 2.5).
# 300 validation images each, so that obj1's AP rests on 300 objects.
SYNTHETIC_VARIANTS: Dict[str, Dict] = {
    "obj1": dict(objects_per_image=(1, 1)),
    "obj3": dict(objects_per_image=(3, 3)),
    "obj12": dict(objects_per_image=(12, 12)),
    "obj1_clean": dict(objects_per_image=(1, 1), distractors_per_image=0.0),
    "obj1_cluttered": dict(objects_per_image=(1, 1), distractors_per_image=8.0),
}
# The same objects (12-80 px) on a 320 px canvas: 4x the anchors, ~4x the negatives per positive.
SYNTHETIC_CANVAS_VARIANTS: Dict[str, Dict] = {
    "obj1_320": dict(objects_per_image=(1, 1), image_size=320, max_object_size=80.0),
}
# The default layout with training classes spanning 1:50, red_circle most and blue_triangle least
# frequent (geometric decay; ~1.1 % of the training objects are blue triangles, about 30 in 800
# images), and balanced validation: the per-class α and softmax study (``--table beyond``).
SYNTHETIC_LONGTAIL_VARIANTS: Dict[str, Dict] = {
    "longtail50": dict(long_tail_ratio=50.0),
}
VARIANT_NUM_VAL = 300

register_synthetic_coco(
    None,
    num_train=DEFAULT_NUM_TRAIN,
    num_val=DEFAULT_NUM_VAL,
    image_size=DEFAULT_IMAGE_SIZE,
    seed=DEFAULT_SEED,
)
for _variant, _layout in {
    **SYNTHETIC_VARIANTS,
    **SYNTHETIC_CANVAS_VARIANTS,
    **SYNTHETIC_LONGTAIL_VARIANTS,
}.items():
    register_synthetic_coco(
        f"{default_synthetic_root()}_{_variant}",
        prefix=f"synthetic_{_variant}",
        **{
            "num_train": DEFAULT_NUM_TRAIN,
            "num_val": VARIANT_NUM_VAL,
            "image_size": DEFAULT_IMAGE_SIZE,
            "seed": DEFAULT_SEED,
            **_layout,
        },
    )
