"""
The paper's Figure 1 (the focal loss against p_t) and Figure 4 (cumulative distribution of the
loss of a trained model over positive and negative samples).

A *sample* in Figure 4 is one binary classification: an (anchor, class) pair of a non-ignored
anchor. Positives are the foreground anchors' ground-truth classes; negatives are all other pairs
(every class of background anchors and the other classes of foreground anchors). Ignored anchors
(IoU between the thresholds) are left out, as they are from training.
"""

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..layers.focal_loss import sigmoid_focal_loss

logger = logging.getLogger(__name__)

FIGURE1_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0)
FIGURE4_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
# Shares of the hardest samples at which Figure 4's summary reports the share of the loss.
HARDEST_FRACTIONS: Tuple[float, ...] = (0.01, 0.1, 0.2)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def focal_loss_of_pt(p_t: Tensor, gamma: float) -> Tensor:
    """
    FL(p_t) = -(1 - p_t)^γ log(p_t), without α, via the project's loss on a positive target.

    Args:
        p_t: probabilities of the ground-truth class, in (0, 1).
        gamma: γ ≥ 0.

    Returns:
        the loss, of the shape of ``p_t``.
    """
    logits = torch.logit(p_t.double()).float()
    return sigmoid_focal_loss(
        logits, torch.ones_like(logits), alpha=-1.0, gamma=gamma, kernel="eager"
    )


def figure1(output: Path, gammas: Sequence[float] = FIGURE1_GAMMAS) -> Path:
    """
    Plot FL against p_t for several γ (the paper's Figure 1).

    Args:
        output: the PNG to write.
        gammas: the γ values, one curve each.

    Returns:
        ``output``.
    """
    plt = _pyplot()
    p_t = torch.linspace(1e-3, 1 - 1e-6, 1000)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    for gamma in gammas:
        ax.plot(p_t.numpy(), focal_loss_of_pt(p_t, gamma).numpy(), label=f"γ = {gamma:g}")
    ax.axvspan(0.6, 1.0, color="tab:green", alpha=0.08)
    ax.text(0.8, 4.6, "well-classified\nexamples", ha="center", va="top", fontsize=9)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 5.0)
    ax.set_xlabel("probability of ground truth class")
    ax.set_ylabel("loss")
    ax.set_title(r"Figure 1: FL$(p_t) = -(1 - p_t)^\gamma \log(p_t)$", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


def split_samples(logits: Tensor, gt_labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """
    Split one image's logits into positive and negative samples.

    Args:
        logits: (R, K) classification logits over all anchors.
        gt_labels: (R,) int64: a class in [0, K), K for background, -1 for ignored.
        num_classes: K.

    Returns:
        Tensor: (P,) logits of the foreground anchors at their ground-truth class.
        Tensor: (M,) logits of every other (anchor, class) pair of the non-ignored anchors.
    """
    is_fg = (gt_labels >= 0) & (gt_labels < num_classes)
    is_target = torch.zeros_like(logits, dtype=torch.bool)
    is_target[is_fg, gt_labels[is_fg]] = True
    is_negative = (gt_labels >= 0)[:, None] & ~is_target
    return logits[is_target], logits[is_negative]


def normalized_loss_cdf(losses: Tensor, num_points: int = 1000) -> Tuple[np.ndarray, np.ndarray]:
    """
    The cumulative share of the loss held by the samples, sorted from the easiest to the hardest.

    Args:
        losses: (S,) non-negative losses.
        num_points: points returned, evenly spaced in the fraction of samples.

    Returns:
        fractions of samples in [0, 1] and the cumulative normalized loss at each (ends at 1).
    """
    sorted_losses = torch.sort(losses.double()).values
    cumulative = torch.cumsum(sorted_losses, 0)
    cumulative = cumulative / cumulative[-1].clamp(min=torch.finfo(torch.float64).tiny)
    fractions = torch.arange(1, len(losses) + 1, dtype=torch.float64) / len(losses)
    grid = np.linspace(0.0, 1.0, num_points)
    return grid, np.interp(grid, fractions.numpy(), cumulative.numpy(), left=0.0)


def hardest_share(losses: Tensor, fraction: float) -> float:
    """
    Returns:
        the share of the total loss held by the hardest ``fraction`` of the samples.
    """
    count = max(1, int(round(fraction * len(losses))))
    total = losses.double().sum().clamp(min=torch.finfo(torch.float64).tiny)
    return float(torch.topk(losses.double(), count).values.sum() / total)


@torch.no_grad()
def dense_predictions_and_labels(
    model: torch.nn.Module, batched_input: Dict
) -> Tuple[Tensor, Tensor]:
    """
    One image through a FocalLossRetinaNet: its classification logits over all anchors and the
    labels the model assigns those anchors in training (``model.label_anchors``).

    Args:
        model: a FocalLossRetinaNet, in eval mode.
        batched_input: a Detectron2 input dict with "image" and "instances".

    Returns:
        Tensor: (R, K) logits.
        Tensor: (R,) int64 labels: a class in [0, K), K for background, -1 for ignored.
    """
    images = model.preprocess_image([batched_input])
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    pred_logits, _ = model._transpose_dense_predictions(
        model.head(features), [model.num_classes, 4]
    )
    anchors = model.anchor_generator(features)
    gt_labels, _ = model.label_anchors(anchors, [batched_input["instances"].to(model.device)])
    return torch.cat(pred_logits, dim=1)[0].float().cpu(), gt_labels[0].cpu()


@torch.no_grad()
def gather_sample_logits(
    model: torch.nn.Module,
    inputs: Sequence[Dict],
    max_negatives_per_image: Optional[int] = None,
    seed: int = 0,
) -> Tuple[Tensor, Tensor]:
    """
    Run a FocalLossRetinaNet over images and collect the logits of its positive and negative
    samples, with the anchor labels the model assigns in training (``model.label_anchors``).

    Args:
        model: a FocalLossRetinaNet, in eval mode.
        inputs: Detectron2 inputs (dicts with "image" and "instances"), one image each.
        max_negatives_per_image: if given, a random subset of at most this many negatives per image.
        seed: seed of that subset.

    Returns:
        Tensor: (P,) positive sample logits.
        Tensor: (M,) negative sample logits.
    """
    generator = torch.Generator().manual_seed(seed)
    positives: List[Tensor] = []
    negatives: List[Tensor] = []
    for batched_input in inputs:
        pos, neg = split_samples(
            *dense_predictions_and_labels(model, batched_input), model.num_classes
        )
        if max_negatives_per_image is not None and len(neg) > max_negatives_per_image:
            neg = neg[torch.randperm(len(neg), generator=generator)[:max_negatives_per_image]]
        positives.append(pos)
        negatives.append(neg)
    return torch.cat(positives), torch.cat(negatives)


def load_inputs(cfg, num_images: int, dataset_name: Optional[str] = None) -> List[Dict]:
    """
    Args:
        cfg: the model's config.
        num_images: images to load, from the dataset's start.
        dataset_name: a registered dataset; default ``cfg.DATASETS.TEST[0]``.

    Returns:
        Detectron2 inputs of the dataset's first images, resized as at test time, with their GT.
    """
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    if dataset_name is None:
        if not cfg.DATASETS.TEST:
            raise ValueError(
                "DATASETS.TEST is empty: Figure 4 runs the model over the first test dataset's "
                "images."
            )
        dataset_name = cfg.DATASETS.TEST[0]
    dataset_dicts = DatasetCatalog.get(dataset_name)[:num_images]
    mapper = DatasetMapper(
        is_train=True,  # keeps the annotations; the only augmentation is the test resize
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
    )
    return [mapper(d) for d in dataset_dicts]


def figure4(
    cfg,
    output: Path,
    num_images: int = 50,
    gammas: Sequence[float] = FIGURE4_GAMMAS,
    max_negatives: int = 10_000_000,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """
    The paper's Figure 4 for a trained model: the cumulative distribution of the normalized focal
    loss over its positive and its negative samples, one curve per γ (same model, same samples).

    Args:
        cfg: the model's config, with ``MODEL.WEIGHTS`` the trained checkpoint.
        output: the PNG to write; a ``.json`` beside it gets the summary.
        num_images: images of ``DATASETS.TEST[0]`` to run the model over.
        gammas: the γ values.
        max_negatives: at most this many negative samples in all (the paper: ~10^7), drawn at
            random evenly over the images.

    Returns:
        per group ("positive", "negative"), per γ, the sample count and the share of the loss held
        by the hardest 1 %, 10 % and 20 % of the samples.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import retinanet_fl  # noqa: F401  registers the meta-architecture and the datasets

    model = build_model(cfg)
    if not hasattr(model, "label_anchors"):
        raise ValueError(
            "Figure 4 needs MODEL.META_ARCHITECTURE FocalLossRetinaNet, "
            f"got {cfg.MODEL.META_ARCHITECTURE}."
        )
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: Figure 4 of an untrained model.")
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    inputs = load_inputs(cfg, num_images)
    positives, negatives = gather_sample_logits(model, inputs, max_negatives // max(1, len(inputs)))
    if len(positives) == 0:
        raise ValueError(
            f"No foreground anchors in the first {len(inputs)} images of {cfg.DATASETS.TEST[0]}; "
            "use more images (--num-images)."
        )

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2))
    summary: Dict[str, Dict[str, Dict[str, float]]] = {}
    for ax, (group, logits) in zip(axes, (("positive", positives), ("negative", negatives))):
        targets = torch.ones_like(logits) if group == "positive" else torch.zeros_like(logits)
        summary[group] = {}
        for gamma in gammas:
            losses = sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=gamma, kernel="eager")
            ax.plot(*normalized_loss_cdf(losses), label=f"γ = {gamma:g}")
            summary[group][f"gamma={gamma:g}"] = {
                "samples": len(losses),
                **{f"hardest_{f:g}_share": hardest_share(losses, f) for f in HARDEST_FRACTIONS},
            }
        ax.set_xlabel(
            f"fraction of {'foreground' if group == 'positive' else 'background'} examples"
        )
        ax.set_ylabel("cumulative normalized loss")
        ax.set_title(f"{group} samples ({len(logits):,})", fontsize=10)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"Figure 4: {cfg.MODEL.WEIGHTS or 'untrained model'}, {len(inputs)} images", fontsize=10
    )
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary
