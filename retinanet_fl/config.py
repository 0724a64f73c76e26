"""This project's config keys, added under ``MODEL.RETINANET_FL`` (and two under ``DATALOADER``).

Keys that Detectron2 already has under ``MODEL.RETINANET`` (NUM_CLASSES, IN_FEATURES, NUM_CONVS,
IOU_THRESHOLDS, PRIOR_PROB, NORM, FOCAL_LOSS_GAMMA/ALPHA, SMOOTH_L1_LOSS_BETA, BBOX_REG_LOSS_TYPE,
BBOX_REG_WEIGHTS and the test-time settings) are reused, not duplicated, so a Detectron2 RetinaNet
config runs with only ``MODEL.META_ARCHITECTURE`` changed. The defaults below reproduce
Detectron2's behaviour; ``configs/Base-RetinaNet-FL.yaml`` sets the paper's.
"""

import logging
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as get_detectron2_cfg

from .data.by_path import canonical_dataset_name, check_registered, register_path_datasets
from .data.classes import check_same_classes, resolve_num_classes


def add_retinanet_fl_config(cfg: CN) -> CN:
    """
    Add this project's keys to a Detectron2 config, in place. Safe to call more than once: keys
    already present (e.g. set by an earlier call or a merged file) keep their values.

    Args:
        cfg: a Detectron2 config.

    Returns:
        the same config, for chaining.
    """
    if "RETINANET_FL" in cfg.MODEL:
        return cfg
    _C = cfg
    # Training images that cannot be read are left out with a warning, up to this share of the
    # training set: found before training from their headers (retinanet_fl/data/image_check.py),
    # or skipped by the loader (which draws another) when their pixels fail to decode. Beyond the
    # share, or with SKIP_UNREADABLE_IMAGES False, training stops with an error naming them.
    _C.DATALOADER.SKIP_UNREADABLE_IMAGES = True
    _C.DATALOADER.MAX_UNREADABLE_FRACTION = 0.01
    _C.MODEL.RETINANET_FL = CN()

    # Classification loss: a name in CLS_LOSS_REGISTRY ("focal", "focal_star", "ce", "ohem",
    # "softmax_focal": K + 1 logits per anchor, the last for background; beyond the paper,
    # "quality_focal" and "varifocal", on IoU targets).
    # γ and α come from MODEL.RETINANET.FOCAL_LOSS_GAMMA / FOCAL_LOSS_ALPHA (α < 0: no α weighting).
    _C.MODEL.RETINANET_FL.CLS_LOSS = "focal"
    # Per-class α (not with "ohem"): None or empty (the scalar FOCAL_LOSS_ALPHA), a list of
    # NUM_CLASSES values in [0, 1], or "inverse_frequency" / "effective_number" (β = 0.999):
    # computed from the training set's annotation counts when the Trainer starts, scaled to a
    # mean of FOCAL_LOSS_ALPHA and clipped to [0, 1] (retinanet_fl/modeling/class_alpha.py).
    # None as the default lets a config set either a list or a rule name.
    _C.MODEL.RETINANET_FL.ALPHA_PER_CLASS = None
    # FL* (paper appendix A): p*_t = sigmoid(γ x_t + β), loss = -log(p*_t) / γ.
    _C.MODEL.RETINANET_FL.FOCAL_STAR_GAMMA = 2.0
    _C.MODEL.RETINANET_FL.FOCAL_STAR_BETA = 1.0
    # OHEM (Table 1d): examples kept per image after NMS over the anchors.
    _C.MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE = 128
    # OHEM: IoU threshold of the NMS among examples, scored by their loss.
    _C.MODEL.RETINANET_FL.OHEM_NMS_THRESH = 0.7
    # OHEM: negatives per positive among the kept examples (3 = the paper's "OHEM 1:3";
    # 0 = no ratio).
    _C.MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO = 0.0
    # "compiled" (one fused kernel through torch.compile) or "eager" (closed form, no compile step).
    _C.MODEL.RETINANET_FL.LOSS_KERNEL = "compiled"
    # Beyond the paper, losses whose target for a foreground anchor's class is the IoU of its
    # predicted box with its ground truth (retinanet_fl/layers/soft_focal_losses.py):
    # GFL's Quality Focal Loss, -|y - σ|^β BCE(σ, y).
    _C.MODEL.RETINANET_FL.QUALITY_FOCAL_BETA = 2.0
    # VarifocalNet's loss: negatives weighted by α p^γ (α weights the negatives, unlike
    # FOCAL_LOSS_ALPHA, which weights the positives), positives by their IoU target.
    _C.MODEL.RETINANET_FL.VARIFOCAL_ALPHA = 0.75
    _C.MODEL.RETINANET_FL.VARIFOCAL_GAMMA = 2.0

    # Initialise the classification bias to -log((1 - π) / π) with π = MODEL.RETINANET.PRIOR_PROB;
    # False sets it to 0 (the "no prior" ablation).
    _C.MODEL.RETINANET_FL.USE_PRIOR_INIT = True

    # OctaveAnchorGenerator: base size = ANCHOR_SCALE × stride;
    # sizes base × 2^(i / SCALES_PER_OCTAVE);
    # aspect ratios from MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS.
    _C.MODEL.RETINANET_FL.ANCHOR_SCALE = 4.0
    _C.MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE = 3

    # Anchor assignment (retinanet_fl/modeling/matching.py): "iou" (MODEL.RETINANET.IOU_THRESHOLDS
    # and IOU_LABELS, the paper) or "atss" (beyond the paper: Zhang et al. 2020, adaptive
    # per-object IoU threshold over the ATSS_TOPK anchors per level nearest to the object's
    # centre, per anchor position; no ignored anchors).
    _C.MODEL.RETINANET_FL.ANCHOR_MATCHER = "iou"
    _C.MODEL.RETINANET_FL.ATSS_TOPK = 9
    # "iou": give each GT box its best-overlapping anchors even below the foreground threshold
    # (Detectron2's behaviour); False is the paper's rule.
    _C.MODEL.RETINANET_FL.ALLOW_LOW_QUALITY_MATCHES = True
    # Anchors per chunk when computing IoU, so the full (GT, anchors) matrix is never held at once.
    _C.MODEL.RETINANET_FL.IOU_CHUNK_SIZE = 100000
    # Loss normalizer: "num_pos" (the paper: foreground anchors in the batch, summed over workers)
    # or "ema" (Detectron2: exponential moving average of it).
    _C.MODEL.RETINANET_FL.LOSS_NORMALIZER = "ema"
    _C.MODEL.RETINANET_FL.LOSS_NORMALIZER_MOMENTUM = 0.9

    # Speed (docs/BENCHMARKS.md): the backbone, FPN and head in the channels-last memory format
    # (NHWC, which oneDNN and cuDNN convolutions prefer; on the CPU 8-10% faster in inference and
    # 5-10% in training, measured); frozen batch norms folded into the convolutions before them;
    # and/or compiled with torch.compile (off: see docs/BENCHMARKS.md for its break-even).
    _C.MODEL.RETINANET_FL.CHANNELS_LAST = True
    _C.MODEL.RETINANET_FL.FOLD_FROZEN_BN = True
    _C.MODEL.RETINANET_FL.COMPILE = False

    # With every COCO-style evaluation, write the report OUTPUT_DIR/report/ (index.html, its
    # pictures, report.json): per-class AP and thresholds, PR curves, confusion matrix, TIDE
    # errors, worst and best images, training curves (retinanet_fl/evaluation/).
    _C.TEST.REPORT = True
    # With TEST.EVAL_PERIOD > 0: the losses on DATASETS.TEST[0] at each evaluation (logged as
    # validation/<loss>); model_best.pth by this metric ("" for none; a name with "loss" is
    # minimised, others maximised); and early stopping after this many evaluations without
    # improvement of the metric (0: off).
    _C.TEST.VALIDATION_LOSS = True
    _C.TEST.BEST_CHECKPOINT_METRIC = "bbox/AP"
    _C.SOLVER.EARLY_STOP_PATIENCE = 0

    # "SGD" (Detectron2's and the paper's, with SOLVER.MOMENTUM) or "AdamW" (β = SOLVER.ADAM_BETAS),
    # which trains a model from scratch in far fewer iterations (the synthetic demo).
    _C.SOLVER.OPTIMIZER = "SGD"
    _C.SOLVER.ADAM_BETAS = (0.9, 0.999)
    return cfg


def get_cfg() -> CN:
    """
    Returns:
        a copy of Detectron2's default config with this project's keys added.
    """
    return add_retinanet_fl_config(get_detectron2_cfg())


def load_config(config_file: str, opts: Sequence[str] = (), for_inference: bool = False) -> CN:
    """
    Build a config the way this project's tools do: defaults, then the file, then ``KEY VALUE``
    overrides. On a machine without CUDA, a CUDA ``MODEL.DEVICE`` falls back to the CPU with a
    warning. Datasets given by path in ``DATASETS.TRAIN`` / ``TEST`` get absolute paths and are
    registered (:mod:`retinanet_fl.data.by_path`), any other name must be registered, the
    datasets' classes are checked against each other, and a
    ``MODEL.RETINANET.NUM_CLASSES`` of 0 set to the number of classes of the data (for
    inference, of the ``MODEL.WEIGHTS`` checkpoint first).

    Args:
        config_file: a YAML config (may use ``_BASE_``); empty for the defaults alone.
        opts: overrides as a flat list, e.g. ``["SOLVER.MAX_ITER", "100"]``.
        for_inference: True when only the trained model is needed (predict, export, evaluation):
            a dataset that does not exist or is not registered is then left to the code that
            reads it, instead of being an error here.

    Returns:
        the config, not frozen.
    """
    cfg = get_cfg()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"Config file '{config_file}' does not exist (see configs/ for ours)."
            )
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but CUDA is not available: running on the CPU. "
            "Set MODEL.DEVICE cpu to silence this."
        )
        cfg.MODEL.DEVICE = "cpu"
    # Absolute paths: "coco:a.json" and "coco:./a.json" are one dataset, and the run's saved
    # config.yaml works from any directory.
    cfg.DATASETS.TRAIN = tuple(canonical_dataset_name(name) for name in cfg.DATASETS.TRAIN)
    cfg.DATASETS.TEST = tuple(canonical_dataset_name(name) for name in cfg.DATASETS.TEST)
    dataset_names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    if not for_inference:
        check_registered(dataset_names)
    register_path_datasets(dataset_names, skip_missing=for_inference)
    check_same_classes(dataset_names)
    resolve_num_classes(cfg, for_inference)
    return cfg
