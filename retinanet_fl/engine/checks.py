"""
Checks the Trainer runs when it builds the model and the data, for mistakes that Detectron2's
config invites in a RetinaNet and that the model's own validation cannot see:

* ``MODEL.RETINANET.NUM_CLASSES`` not matching the categories (``thing_classes``) of a dataset in
  ``DATASETS.TRAIN`` / ``DATASETS.TEST``: an error naming both numbers;
* settings under ``MODEL.ROI_HEADS`` (score and NMS thresholds, number of classes) that a RetinaNet
  does not read, while the ``MODEL.RETINANET`` ones keep their defaults: a warning;
* our keys that the configured loss, anchor generator or meta-architecture does not read, and
  ``MODEL.ANCHOR_GENERATOR.SIZES`` when ``OctaveAnchorGenerator`` computes other sizes: a warning;

and, during training, :func:`check_losses_finite`, which stops at the first NaN or infinite loss.
The values of every key are checked where they are consumed (the constructors of the modules).
"""

import logging
import math
from typing import Dict, Mapping, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.config import get_cfg as get_detectron2_cfg
from torch import nn

from ..config import get_cfg
from ..data.classes import known_classes, num_classes_of
from ..modeling.anchors import OctaveAnchorGenerator, octave_anchor_sizes
from ..modeling.cls_losses import CLS_LOSS_REGISTRY

__all__ = [
    "RETINANET_META_ARCHITECTURES",
    "check_losses_finite",
    "check_model_config",
    "check_num_classes",
    "warn_unread_anchor_sizes",
]

logger = logging.getLogger(__name__)

# Meta-architectures that read MODEL.RETINANET (ours and Detectron2's).
RETINANET_META_ARCHITECTURES = ("FocalLossRetinaNet", "RetinaNet")

# Keys a RetinaNet reads under MODEL.RETINANET that Detectron2 also has under MODEL.ROI_HEADS.
_ROI_HEADS_TWINS = ("SCORE_THRESH_TEST", "NMS_THRESH_TEST", "NUM_CLASSES")


def check_model_config(cfg: CfgNode) -> None:
    """
    The checks to run before building a RetinaNet: the number of classes against the datasets'
    categories (an error), and keys set where the model does not read them (warnings). Other
    meta-architectures are left alone.

    Args:
        cfg: the full config.
    """
    if cfg.MODEL.META_ARCHITECTURE not in RETINANET_META_ARCHITECTURES:
        return
    check_num_classes(cfg, [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    _warn_unread_roi_heads_keys(cfg)
    _warn_unread_retinanet_fl_keys(cfg)


def check_num_classes(cfg: CfgNode, dataset_names: Sequence[str]) -> None:
    """
    Raise a ValueError when ``MODEL.RETINANET.NUM_CLASSES`` differs from the number of categories
    of one of the datasets. Only the metadata is read: datasets whose ``thing_classes`` are not
    known yet (e.g. a COCO json that has not been loaded) or that are not registered are skipped.

    Args:
        cfg: the full config.
        dataset_names: registered dataset names.
    """
    if cfg.MODEL.META_ARCHITECTURE not in RETINANET_META_ARCHITECTURES:
        return
    num_classes = num_classes_of(cfg)
    for name in dataset_names:
        thing_classes = known_classes(name)
        if thing_classes is None or len(thing_classes) == num_classes:
            continue
        roi_heads_note = ""
        if cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(thing_classes):
            roi_heads_note = (
                f" (MODEL.ROI_HEADS.NUM_CLASSES is {len(thing_classes)}, but a RetinaNet reads "
                "MODEL.RETINANET.NUM_CLASSES)"
            )
        raise ValueError(
            f"MODEL.RETINANET.NUM_CLASSES = {num_classes} does not match the "
            f"{len(thing_classes)} categories (thing_classes) of dataset '{name}'{roi_heads_note}. "
            f"Set MODEL.RETINANET.NUM_CLASSES {len(thing_classes)}, or use datasets with the "
            f"{num_classes} categories the model is meant for."
        )


def _warn_unread_roi_heads_keys(cfg: CfgNode) -> None:
    detectron2_defaults = get_detectron2_cfg().MODEL
    for key in _ROI_HEADS_TWINS:
        roi_heads_value = cfg.MODEL.ROI_HEADS[key]
        retinanet_value = cfg.MODEL.RETINANET[key]
        if (
            roi_heads_value != detectron2_defaults.ROI_HEADS[key]
            and retinanet_value == detectron2_defaults.RETINANET[key]
        ):
            logger.warning(
                f"MODEL.ROI_HEADS.{key} is set to {roi_heads_value!r}, but "
                f"{cfg.MODEL.META_ARCHITECTURE} reads MODEL.RETINANET.{key} (now "
                f"{retinanet_value!r}): set MODEL.RETINANET.{key} {roi_heads_value!r} instead."
            )


def _warn_unread_retinanet_fl_keys(cfg: CfgNode) -> None:
    """
    Warn about changed MODEL.RETINANET_FL keys that nothing built from ``cfg`` reads. Which
    component reads which key is declared by the component (``RETINANET_FL_KEYS``).
    """
    ours, defaults = cfg.MODEL.RETINANET_FL, get_cfg().MODEL.RETINANET_FL
    changed = [key for key in defaults if ours[key] != defaults[key]]
    anchor_keys = OctaveAnchorGenerator.RETINANET_FL_KEYS
    anchor_generator = cfg.MODEL.ANCHOR_GENERATOR.NAME
    if anchor_generator != OctaveAnchorGenerator.__name__:
        _warn_unread(
            [key for key in anchor_keys if key in changed],
            f"only MODEL.ANCHOR_GENERATOR.NAME 'OctaveAnchorGenerator' reads them, and it is "
            f"{anchor_generator!r} (which reads MODEL.ANCHOR_GENERATOR.SIZES)",
        )
    model_keys = [key for key in changed if key not in anchor_keys]
    meta_architecture = cfg.MODEL.META_ARCHITECTURE
    if meta_architecture != "FocalLossRetinaNet":
        _warn_unread(
            model_keys,
            f"MODEL.META_ARCHITECTURE is {meta_architecture!r}, which reads none of "
            "MODEL.RETINANET_FL (but the anchor keys, through OctaveAnchorGenerator); use "
            "'FocalLossRetinaNet' for them to take effect",
        )
        return
    chosen = dict(CLS_LOSS_REGISTRY).get(ours.CLS_LOSS)
    read = set(chosen.RETINANET_FL_KEYS) if chosen is not None else set()
    readers = {}  # changed key that the chosen loss does not read -> the losses that read it
    for loss_name, loss_class in sorted(CLS_LOSS_REGISTRY):
        for key in loss_class.RETINANET_FL_KEYS:
            if key in model_keys and key not in read:
                readers.setdefault(key, []).append(loss_name)
    by_readers = {}  # one warning per group of losses
    for key in model_keys:
        if key in readers:
            by_readers.setdefault(tuple(readers[key]), []).append(key)
    for loss_names, keys in by_readers.items():
        _warn_unread(
            keys,
            f"only MODEL.RETINANET_FL.CLS_LOSS {' or '.join(map(repr, loss_names))} reads them, "
            f"and it is {ours.CLS_LOSS!r}",
        )


def _warn_unread(keys: Sequence[str], reason: str) -> None:
    if keys:
        settings = ", ".join(f"MODEL.RETINANET_FL.{key}" for key in keys)
        logger.warning(f"{settings} set but not used: {reason}.")


def warn_unread_anchor_sizes(cfg: CfgNode, model: nn.Module) -> None:
    """
    Warn when ``MODEL.ANCHOR_GENERATOR.SIZES`` was changed from Detectron2's default but the
    model's :class:`OctaveAnchorGenerator`, which computes its sizes from ``ANCHOR_SCALE`` and
    ``ANCHOR_SCALES_PER_OCTAVE``, uses other sizes.

    Args:
        cfg: the config the model was built from.
        model: the built model.
    """
    generator = getattr(model, "anchor_generator", None)
    if not isinstance(generator, OctaveAnchorGenerator):
        return
    sizes = [list(level) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES]
    if sizes == get_detectron2_cfg().MODEL.ANCHOR_GENERATOR.SIZES:
        return
    used = octave_anchor_sizes(
        generator.strides, generator.anchor_scale, generator.scales_per_octave
    )
    if len(sizes) == 1:
        sizes = sizes * len(used)
    if len(sizes) == len(used) and all(
        len(a) == len(b) and all(math.isclose(x, y) for x, y in zip(a, b))
        for a, b in zip(sizes, used)
    ):
        return
    rounded = [[round(size, 1) for size in level] for level in used]
    logger.warning(
        f"MODEL.ANCHOR_GENERATOR.SIZES = {cfg.MODEL.ANCHOR_GENERATOR.SIZES} is not used: "
        f"OctaveAnchorGenerator uses the sizes {rounded}, from MODEL.RETINANET_FL.ANCHOR_SCALE = "
        f"{generator.anchor_scale} and ANCHOR_SCALES_PER_OCTAVE = {generator.scales_per_octave}."
    )


def check_losses_finite(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """
    Raise a FloatingPointError naming the iteration and the loss terms that are NaN or infinite.

    Args:
        loss_dict: the model's loss terms, scalars.
        iteration: the current iteration, as the trainer counts it.
    """
    values: Dict[str, float] = {name: float(loss.detach()) for name, loss in loss_dict.items()}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if not bad:
        return
    offending = ", ".join(f"{name} = {values[name]}" for name in bad)
    others = [f"{name} = {value:.4g}" for name, value in values.items() if name not in bad]
    raise FloatingPointError(
        f"Non-finite loss at iteration {iteration}: {offending}"
        + (f" (finite: {', '.join(others)})" if others else "")
        + ". Training stopped before that iteration's optimizer step. Usual causes: a learning "
        "rate too high for the batch size (SOLVER.BASE_LR, SOLVER.WARMUP_ITERS), or fp16 overflow "
        "with SOLVER.AMP.ENABLED; fix it and continue from the last checkpoint with --resume."
    )
