"""
A model's classes: names and the dataset's category ids, taken from the data when training and
carried in checkpoints and exported files, so that predictions name their classes without the
dataset.

The class metadata is a dict with Detectron2's metadata names::

    {"thing_classes": ["cat", "dog"], "thing_dataset_id_to_contiguous_id": {3: 0, 7: 1},
     "input_format": "BGR"}

(the id map is empty for datasets without ids of their own, e.g. Pascal VOC folders).
"""

import functools
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .by_path import register_path_datasets

__all__ = [
    "NUM_CLASSES_FROM_DATA",
    "CHECKPOINT_KEY",
    "ClassMetadataState",
    "check_model_classes",
    "check_same_classes",
    "checkpoint_class_metadata",
    "dataset_class_metadata",
    "known_classes",
    "metadata_for_inference",
    "num_classes_of",
    "resolve_num_classes",
    "with_num_classes",
]

logger = logging.getLogger(__name__)

# MODEL.RETINANET.NUM_CLASSES meaning "the number of categories of the training data".
NUM_CLASSES_FROM_DATA = 0
# The checkpoint entry that holds the class metadata.
CHECKPOINT_KEY = "class_metadata"


def known_classes(name: str) -> Optional[List[str]]:
    """Returns: the ``thing_classes`` of a dataset, or None when they are not known (yet)."""
    # MetadataCatalog.get would register an empty entry for an unknown name.
    if name not in MetadataCatalog.list():
        return None
    thing_classes = MetadataCatalog.get(name).get("thing_classes")
    return list(thing_classes) if thing_classes is not None else None


def dataset_class_metadata(dataset_names: Sequence[str], input_format: str) -> Optional[Dict]:
    """
    Args:
        dataset_names: registered datasets; the first whose classes are known is used.
        input_format: ``INPUT.FORMAT``.

    Returns:
        the class metadata of that dataset, or None when none of them has known classes.
    """
    for name in dataset_names:
        thing_classes = known_classes(name)
        if thing_classes is not None:
            id_map = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", {})
            return {
                "thing_classes": thing_classes,
                "thing_dataset_id_to_contiguous_id": {int(k): int(v) for k, v in id_map.items()},
                "input_format": input_format,
            }
    return None


def check_same_classes(dataset_names: Sequence[str]) -> None:
    """
    Raise a ValueError when two datasets with known classes have different class names.

    Args:
        dataset_names: registered datasets, e.g. ``DATASETS.TRAIN + DATASETS.TEST``.
    """
    first_name, first_classes = None, None
    for name in dataset_names:
        classes = known_classes(name)
        if classes is None:
            continue
        if first_classes is None:
            first_name, first_classes = name, classes
        elif classes != first_classes:
            raise ValueError(
                f"Datasets '{first_name}' and '{name}' have different classes: {first_classes} "
                f"and {classes}. A model has one set of classes: give both splits the same "
                "categories (same names; in a COCO JSON, also the same ids)."
            )


@functools.lru_cache(maxsize=4)
def _read_checkpoint_metadata(path: str, modified: float) -> Optional[Dict]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None


def checkpoint_class_metadata(weights: str) -> Optional[Dict]:
    """
    Args:
        weights: ``MODEL.WEIGHTS``.

    Returns:
        the class metadata a checkpoint of ours carries, or None (no file, another format, a
        checkpoint without it).
    """
    if not weights.endswith(".pth") or not os.path.isfile(weights):
        return None
    try:
        return _read_checkpoint_metadata(weights, os.path.getmtime(weights)) or None
    except Exception:  # unreadable: the checkpointer reports it when it loads the weights
        return None


NUM_CLASSES_HELP = (
    "Set MODEL.RETINANET.NUM_CLASSES to the number of classes; or name a dataset whose classes "
    'are known in DATASETS.TRAIN / DATASETS.TEST (e.g. ("coco:path/to/train.json",), or a '
    "registered dataset such as coco_2017_train); or set MODEL.WEIGHTS to a checkpoint trained "
    "by retinanet_fl (it carries its classes)."
)


def _class_metadata_of_config(cfg: CfgNode, for_inference: bool) -> Optional[Dict]:
    """
    The class metadata of the first dataset of ``DATASETS.TRAIN`` then ``DATASETS.TEST`` whose
    classes are known (datasets by path registered first), or of the ``MODEL.WEIGHTS``
    checkpoint; for inference, the checkpoint's first. None when neither is known.
    """
    dataset_names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    register_path_datasets(dataset_names, skip_missing=True)

    def from_data() -> Optional[Dict]:
        return dataset_class_metadata(dataset_names, cfg.INPUT.FORMAT)

    def from_checkpoint() -> Optional[Dict]:
        return checkpoint_class_metadata(cfg.MODEL.WEIGHTS)

    # The second source is read only when the first has nothing: a checkpoint is a whole file.
    first, second = (from_checkpoint, from_data) if for_inference else (from_data, from_checkpoint)
    return first() or second()


def num_classes_of(cfg: CfgNode, for_inference: bool = False) -> int:
    """
    Args:
        cfg: a config (may be frozen).
        for_inference: prefer the ``MODEL.WEIGHTS`` checkpoint's classes to the datasets'.

    Returns:
        ``MODEL.RETINANET.NUM_CLASSES``, or for :data:`NUM_CLASSES_FROM_DATA` the number of
        classes of the config's data or checkpoint (see :func:`resolve_num_classes`).

    Raises:
        ValueError: 0, and neither the datasets' nor the checkpoint's classes are known.
    """
    if cfg.MODEL.RETINANET.NUM_CLASSES != NUM_CLASSES_FROM_DATA:
        return cfg.MODEL.RETINANET.NUM_CLASSES
    found = _class_metadata_of_config(cfg, for_inference)
    if found is None:
        raise ValueError(
            f"MODEL.RETINANET.NUM_CLASSES is {NUM_CLASSES_FROM_DATA} (take it from the data), but "
            f"no dataset of DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} or DATASETS.TEST "
            f"{tuple(cfg.DATASETS.TEST)} has known classes, and MODEL.WEIGHTS "
            f"{cfg.MODEL.WEIGHTS!r} carries none. {NUM_CLASSES_HELP}"
        )
    return len(found["thing_classes"])


def resolve_num_classes(cfg: CfgNode, for_inference: bool = False) -> None:
    """
    Set ``MODEL.RETINANET.NUM_CLASSES`` when it is :data:`NUM_CLASSES_FROM_DATA`: the number of
    classes of the first dataset of ``DATASETS.TRAIN`` then ``DATASETS.TEST`` whose classes are
    known; for inference, those of the ``MODEL.WEIGHTS`` checkpoint first. 0 stays when nothing
    is known (building the model then names the ways out). An explicit value is left as it is:
    the model's checks compare it with the datasets and the checkpoint.

    Args:
        cfg: a config, not frozen.
        for_inference: prefer the checkpoint's classes to the datasets'.
    """
    if cfg.MODEL.RETINANET.NUM_CLASSES != NUM_CLASSES_FROM_DATA:
        return
    found = _class_metadata_of_config(cfg, for_inference)
    if found is not None:
        cfg.MODEL.RETINANET.NUM_CLASSES = len(found["thing_classes"])


def with_num_classes(cfg: CfgNode) -> CfgNode:
    """
    Returns:
        ``cfg`` itself, or for ``NUM_CLASSES`` 0 a copy with the number of classes of its data
        (else its checkpoint): what a model built by Detectron2's ``build_model`` from a config
        merged by hand (not through ``load_config``) needs.
    """
    if cfg.MODEL.RETINANET.NUM_CLASSES != NUM_CLASSES_FROM_DATA:
        return cfg
    resolved = cfg.clone()
    resolved.defrost()
    resolved.MODEL.RETINANET.NUM_CLASSES = num_classes_of(cfg)
    return resolved


def check_model_classes(
    model_classes: Optional[Sequence[str]], source: str, dataset_names: Sequence[str]
) -> None:
    """
    Raise a ValueError when a dataset's classes differ from the model's (names, in order): its
    results would be reported under the wrong class names.

    Args:
        model_classes: the classes the model was trained on; None when unknown (nothing checked).
        source: where they come from, for the message (e.g. a checkpoint's path).
        dataset_names: registered datasets; those whose classes are not known are skipped.
    """
    if model_classes is None:
        return
    for name in dataset_names:
        classes = known_classes(name)
        if classes is not None and classes != list(model_classes):
            raise ValueError(
                f"The model ({source}) was trained on the classes {list(model_classes)}, but "
                f"dataset '{name}' has {classes}: its AP would be reported under the wrong class "
                "names. Evaluate on data with the model's classes (the same names, in the same "
                "order of category ids), or train a model on this dataset's classes."
            )


def metadata_for_inference(cfg: CfgNode) -> Metadata:
    """
    The metadata that names a model's detections: the classes its ``MODEL.WEIGHTS`` checkpoint
    carries, else (with one warning) those of its config's datasets, else none (class indices).

    Args:
        cfg: the model's config, its NUM_CLASSES resolved.

    Returns:
        a Metadata with ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` when known.
    """
    checkpoint_metadata = checkpoint_class_metadata(cfg.MODEL.WEIGHTS)
    if checkpoint_metadata is not None:
        num_classes = len(checkpoint_metadata["thing_classes"])
        if num_classes != cfg.MODEL.RETINANET.NUM_CLASSES:
            raise ValueError(
                f"{cfg.MODEL.WEIGHTS} was trained on {num_classes} classes "
                f"{checkpoint_metadata['thing_classes']}, but MODEL.RETINANET.NUM_CLASSES is "
                f"{cfg.MODEL.RETINANET.NUM_CLASSES}. Set it to 0 (the checkpoint's classes) or "
                f"{num_classes}."
            )
    found = checkpoint_metadata or dataset_class_metadata(
        [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN], cfg.INPUT.FORMAT
    )
    if checkpoint_metadata is None:
        logger.warning(
            f"{cfg.MODEL.WEIGHTS} carries no class names (a Detectron2 checkpoint, or one "
            "written before they were stored): "
            + (
                "detections are labelled with class indices 0..K-1."
                if found is None
                else f"naming its classes after the config's datasets: {found['thing_classes']}."
            )
        )
    metadata = Metadata(name="retinanet_fl_model")
    if found is None:
        return metadata
    return metadata.set(
        thing_classes=found["thing_classes"],
        thing_dataset_id_to_contiguous_id=found["thing_dataset_id_to_contiguous_id"],
    )


class ClassMetadataState:
    """
    The training data's class metadata as a checkpointable of Detectron2's checkpointer, so every
    checkpoint carries it under :data:`CHECKPOINT_KEY`; resuming from a checkpoint of other
    classes is an error.
    """

    def __init__(self, class_metadata: Optional[Dict]):
        self.class_metadata = class_metadata

    def state_dict(self) -> Dict:
        return dict(self.class_metadata or {})

    def load_state_dict(self, state: Dict) -> None:
        saved = state.get("thing_classes")
        current = (self.class_metadata or {}).get("thing_classes")
        if saved and current and list(saved) != list(current):
            raise ValueError(
                f"The checkpoint being resumed was trained on classes {list(saved)}, but the "
                f"training data has {list(current)}. Resume with the same data, or start a new "
                "OUTPUT_DIR (MODEL.WEIGHTS loads its weights without resuming)."
            )
