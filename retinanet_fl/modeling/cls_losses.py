"""
Classification losses of the detector (paper Table 1a/b/d and Table 3), chosen by name with
``MODEL.RETINANET_FL.CLS_LOSS``:

* ``"focal"``: the focal loss, γ and α from ``MODEL.RETINANET.FOCAL_LOSS_GAMMA / _ALPHA``.
* ``"focal_star"``: FL* with ``MODEL.RETINANET_FL.FOCAL_STAR_GAMMA / _BETA`` and the same α.
* ``"ce"``: cross entropy, α-balanced when α ≥ 0.
* ``"ohem"``: cross entropy over the examples kept by online hard example mining.

Every loss is an ``nn.Module`` called as ``loss(pred_logits, gt_labels, anchors)`` that returns
the fp32 sum of the classification loss over the batch; the meta-architecture divides it by its
normalizer (the number of foreground anchors, or its moving average).
"""

import math
from typing import Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import nms
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..layers.closed_form import check_kernel
from ..layers.focal_loss import (
    check_alpha,
    check_beta,
    check_gamma,
    check_star_gamma,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star_from_labels,
)

__all__ = [
    "CLS_LOSS_REGISTRY",
    "build_cls_loss",
    "FocalClsLoss",
    "FocalStarClsLoss",
    "CrossEntropyClsLoss",
    "OHEMClsLoss",
    "ohem_select",
]


class _NamedRegistry(Registry):
    """Detectron2's registry, with entries named by the config value (``"focal"``) rather than
    by the class name."""

    def register_as(self, name: str):
        def decorator(cls):
            self._do_register(name, cls)
            return cls

        return decorator


CLS_LOSS_REGISTRY = _NamedRegistry("CLS_LOSS")
CLS_LOSS_REGISTRY.__doc__ = """
Registry for classification losses, selected by ``MODEL.RETINANET_FL.CLS_LOSS``.

A registered object is called with ``cfg`` and returns an ``nn.Module`` whose
``forward(pred_logits (N, R, K), gt_labels (N, R), anchors (R, 4))`` returns the fp32 summed loss.
Its ``RETINANET_FL_KEYS`` names the MODEL.RETINANET_FL keys that only it reads.
"""

_GAMMA_KEY = "MODEL.RETINANET.FOCAL_LOSS_GAMMA"
_ALPHA_KEY = "MODEL.RETINANET.FOCAL_LOSS_ALPHA"
_KERNEL_KEY = "MODEL.RETINANET_FL.LOSS_KERNEL"


def build_cls_loss(cfg) -> nn.Module:
    """
    Build the classification loss named by ``cfg.MODEL.RETINANET_FL.CLS_LOSS``.
    """
    name = cfg.MODEL.RETINANET_FL.CLS_LOSS
    if name not in CLS_LOSS_REGISTRY:
        registered = sorted(key for key, _ in CLS_LOSS_REGISTRY)
        raise KeyError(
            f"MODEL.RETINANET_FL.CLS_LOSS = {name!r} is not a registered classification loss; "
            f"choose one of {registered}."
        )
    return CLS_LOSS_REGISTRY.get(name)(cfg)


def _kernel_from_config(cfg) -> str:
    return check_kernel(cfg.MODEL.RETINANET_FL.LOSS_KERNEL, name=_KERNEL_KEY)


def _flatten(pred_logits: Tensor, gt_labels: Tensor) -> Tuple[Tensor, Tensor]:
    """(N, R, K) logits and (N, R) labels -> (N·R, K) and (N·R,)."""
    if pred_logits.dim() != 3 or gt_labels.shape != pred_logits.shape[:2]:
        raise ValueError(
            "pred_logits must be (N, R, K) and gt_labels (N, R); got "
            f"{tuple(pred_logits.shape)} and {tuple(gt_labels.shape)}."
        )
    return pred_logits.flatten(0, 1), gt_labels.flatten()


@CLS_LOSS_REGISTRY.register_as("focal")
class FocalClsLoss(nn.Module):
    """The focal loss summed over all non-ignored anchors and classes (paper §3.2)."""

    RETINANET_FL_KEYS = ()

    @configurable
    def __init__(self, *, gamma: float = 2.0, alpha: float = 0.25, kernel: str = "compiled"):
        """
        Args:
            gamma: γ ≥ 0.
            alpha: α in [0, 1], or negative for no α weighting.
            kernel: "compiled" or "eager"; see :mod:`retinanet_fl.layers.focal_loss`.
        """
        super().__init__()
        self.gamma = check_gamma(gamma, name=f"gamma ({_GAMMA_KEY})")
        self.alpha = check_alpha(alpha, name=f"alpha ({_ALPHA_KEY})")
        self.kernel = check_kernel(kernel, name=f"kernel ({_KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "kernel": _kernel_from_config(cfg),
        }

    def forward(self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor) -> Tensor:
        """
        Args:
            pred_logits: (N, R, K) classification logits of all levels, any float dtype.
            gt_labels: (N, R) int64: class in [0, K), K for background, -1 for ignored.
            anchors: (R, 4) XYXY anchors; unused.

        Returns:
            fp32 scalar: the loss summed over the batch.
        """
        logits, labels = _flatten(pred_logits, gt_labels)
        return sigmoid_focal_loss_from_labels(
            logits, labels, alpha=self.alpha, gamma=self.gamma, reduction="sum", kernel=self.kernel
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, kernel={self.kernel!r}"


@CLS_LOSS_REGISTRY.register_as("ce")
class CrossEntropyClsLoss(FocalClsLoss):
    """Sigmoid cross entropy (the focal loss with γ = 0), α-balanced when α ≥ 0 (Table 1a)."""

    @configurable
    def __init__(self, *, alpha: float = 0.25, kernel: str = "compiled"):
        """
        Args:
            alpha: α in [0, 1], or negative for plain cross entropy.
            kernel: "compiled" or "eager".
        """
        super().__init__(gamma=0.0, alpha=alpha, kernel=kernel)

    @classmethod
    def from_config(cls, cfg):
        return {"alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, "kernel": _kernel_from_config(cfg)}


@CLS_LOSS_REGISTRY.register_as("focal_star")
class FocalStarClsLoss(nn.Module):
    """FL* = -α_t log(sigmoid(γ x_t + β)) / γ (appendix A, Table 3)."""

    RETINANET_FL_KEYS = ("FOCAL_STAR_GAMMA", "FOCAL_STAR_BETA")

    @configurable
    def __init__(
        self,
        *,
        gamma: float = 2.0,
        beta: float = 1.0,
        alpha: float = 0.25,
        kernel: str = "compiled",
    ):
        """
        Args:
            gamma: γ > 0.
            beta: β, finite.
            alpha: α in [0, 1], or negative for no α weighting.
            kernel: "compiled" or "eager".
        """
        super().__init__()
        self.gamma = check_star_gamma(gamma, name="gamma (MODEL.RETINANET_FL.FOCAL_STAR_GAMMA)")
        self.beta = check_beta(beta, name="beta (MODEL.RETINANET_FL.FOCAL_STAR_BETA)")
        self.alpha = check_alpha(alpha, name=f"alpha ({_ALPHA_KEY})")
        self.kernel = check_kernel(kernel, name=f"kernel ({_KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "gamma": cfg.MODEL.RETINANET_FL.FOCAL_STAR_GAMMA,
            "beta": cfg.MODEL.RETINANET_FL.FOCAL_STAR_BETA,
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "kernel": _kernel_from_config(cfg),
        }

    def forward(self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor) -> Tensor:
        """See :meth:`FocalClsLoss.forward`."""
        logits, labels = _flatten(pred_logits, gt_labels)
        return sigmoid_focal_loss_star_from_labels(
            logits,
            labels,
            gamma=self.gamma,
            beta=self.beta,
            alpha=self.alpha,
            reduction="sum",
            kernel=self.kernel,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, beta={self.beta}, alpha={self.alpha}, kernel={self.kernel!r}"


def ohem_select(
    example_losses: Tensor,
    gt_labels: Tensor,
    anchors: Tensor,
    *,
    num_classes: int,
    batch_size: int,
    nms_thresh: float,
    neg_pos_ratio: float = 0.0,
) -> Tensor:
    """
    Online hard example mining for one image: NMS among the non-ignored examples, scored by their
    loss, on their anchor boxes; then the highest-loss survivors.

    Greedy NMS visits boxes by decreasing score, so the survivors among the k highest-scoring boxes
    do not depend on the others. NMS therefore runs on a prefix of the sorted examples that doubles
    until it holds enough survivors: the result equals NMS over all examples, at a fraction of the
    cost when most of the ~100k examples are easy.

    Args:
        example_losses: (R,) loss of each anchor, summed over the classes.
        gt_labels: (R,) int64: class in [0, K), K for background, -1 for ignored (never kept).
        anchors: (R, 4) XYXY anchor boxes.
        num_classes: K.
        batch_size: B > 0, the most examples kept.
        nms_thresh: IoU above which a lower-loss example is suppressed.
        neg_pos_ratio: r > 0 keeps at most max(1, ⌊B / (1 + r)⌋) positives and at most
            ⌊r · (positives kept)⌋ negatives, B in total (the paper's "OHEM 1:3" is r = 3; as
            in SSD, an image without positive survivors keeps nothing); 0 keeps the top B
            survivors.

    Returns:
        (M,) int64 indices of the kept anchors, M ≤ B, by decreasing loss.
    """
    candidates = torch.nonzero(gt_labels >= 0).squeeze(1)
    order = torch.argsort(example_losses[candidates], descending=True, stable=True)
    candidates = candidates[order]
    is_pos = (gt_labels >= 0) & (gt_labels < num_classes)
    max_pos = max(1, math.floor(batch_size / (1 + neg_pos_ratio))) if neg_pos_ratio > 0 else 0

    prefix = min(len(candidates), 2 * batch_size)
    while True:
        head = candidates[:prefix]
        # Scores by rank, so NMS visits the boxes in exactly this order (ties included).
        rank_scores = torch.arange(prefix, 0, -1, device=head.device, dtype=torch.float32)
        survivors = head[nms(anchors[head].float(), rank_scores, nms_thresh)]
        exhausted = prefix == len(candidates)
        if neg_pos_ratio <= 0:
            if len(survivors) >= batch_size or exhausted:
                return survivors[:batch_size]
        else:
            pos, neg = survivors[is_pos[survivors]], survivors[~is_pos[survivors]]
            needed_neg = min(math.floor(neg_pos_ratio * max_pos), batch_size - max_pos)
            if (len(pos) >= max_pos and len(neg) >= needed_neg) or exhausted:
                pos = pos[:max_pos]
                num_neg = min(math.floor(neg_pos_ratio * len(pos)), batch_size - len(pos))
                kept = torch.cat([pos, neg[:num_neg]])
                return kept[torch.argsort(example_losses[kept], descending=True, stable=True)]
        prefix = min(2 * prefix, len(candidates))


@CLS_LOSS_REGISTRY.register_as("ohem")
class OHEMClsLoss(nn.Module):
    """
    Cross entropy over the examples kept by online hard example mining (paper Table 1d).

    Per image, every non-ignored anchor is an example scored by its cross entropy summed over the
    K classes (with the configured α: set ``MODEL.RETINANET.FOCAL_LOSS_ALPHA`` < 0 for plain CE).
    NMS runs over the examples on their **anchor boxes**: they are available before any decoding
    and do not move during training, and the paper does not say which boxes it used. The B
    highest-loss survivors (optionally at 1 positive : r negatives) are kept, and the loss is the
    cross entropy summed over the kept examples and their K classes only; easy examples get no
    gradient at all. The meta-architecture divides this sum by the same normalizer as for the
    focal loss (the number of foreground anchors), so the loss weights of FL and OHEM compare.
    """

    RETINANET_FL_KEYS = ("OHEM_BATCH_SIZE_PER_IMAGE", "OHEM_NMS_THRESH", "OHEM_NEG_POS_RATIO")

    @configurable
    def __init__(
        self,
        *,
        batch_size_per_image: int = 128,
        nms_thresh: float = 0.7,
        neg_pos_ratio: float = 0.0,
        alpha: float = 0.25,
        kernel: str = "compiled",
    ):
        """
        Args:
            batch_size_per_image: B > 0, examples kept per image (the paper: 128, 256, 512).
            nms_thresh: IoU threshold in (0, 1] of the NMS among examples (the paper: 0.5, 0.7).
            neg_pos_ratio: negatives per positive among the kept examples (3 for "OHEM 1:3"),
                0 for no ratio.
            alpha: α in [0, 1] for α-balanced CE, or negative for plain CE.
            kernel: "compiled" or "eager".
        """
        super().__init__()
        if not (isinstance(batch_size_per_image, int) and batch_size_per_image > 0):
            raise ValueError(
                "batch_size_per_image (MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE) must be an "
                f"integer > 0, got {batch_size_per_image!r}."
            )
        if not (0 < nms_thresh <= 1):
            raise ValueError(
                "nms_thresh (MODEL.RETINANET_FL.OHEM_NMS_THRESH) must be in (0, 1], "
                f"got {nms_thresh}."
            )
        if not (math.isfinite(neg_pos_ratio) and neg_pos_ratio >= 0):
            raise ValueError(
                "neg_pos_ratio (MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO) must be a finite number "
                f">= 0 (0 for no ratio, 3 for OHEM 1:3), got {neg_pos_ratio}."
            )
        self.batch_size_per_image = batch_size_per_image
        self.nms_thresh = float(nms_thresh)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.alpha = check_alpha(alpha, name=f"alpha ({_ALPHA_KEY})")
        self.kernel = check_kernel(kernel, name=f"kernel ({_KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "batch_size_per_image": cfg.MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE,
            "nms_thresh": cfg.MODEL.RETINANET_FL.OHEM_NMS_THRESH,
            "neg_pos_ratio": cfg.MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO,
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "kernel": _kernel_from_config(cfg),
        }

    def forward(self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor) -> Tensor:
        """
        Args:
            pred_logits: (N, R, K) classification logits of all levels, any float dtype.
            gt_labels: (N, R) int64: class in [0, K), K for background, -1 for ignored.
            anchors: (R, 4) XYXY anchors of all levels, concatenated like the logits.

        Returns:
            fp32 scalar: cross entropy summed over the kept examples of the batch.
        """
        logits, labels = _flatten(pred_logits, gt_labels)
        num_images, num_anchors, num_classes = pred_logits.shape
        if anchors.shape != (num_anchors, 4):
            raise ValueError(
                f"anchors must be (R, 4) = ({num_anchors}, 4), got {tuple(anchors.shape)}."
            )
        kept = []
        for image_index in range(num_images):
            image_logits, image_labels = pred_logits[image_index], gt_labels[image_index]
            with torch.no_grad():
                example_losses = sigmoid_focal_loss_from_labels(
                    image_logits.detach(),
                    image_labels,
                    alpha=self.alpha,
                    gamma=0.0,
                    reduction="none",
                    kernel=self.kernel,
                ).sum(dim=1)
            kept_anchors = ohem_select(
                example_losses,
                image_labels,
                anchors,
                num_classes=num_classes,
                batch_size=self.batch_size_per_image,
                nms_thresh=self.nms_thresh,
                neg_pos_ratio=self.neg_pos_ratio,
            )
            kept.append(kept_anchors + image_index * num_anchors)
        kept = torch.cat(kept)
        return sigmoid_focal_loss_from_labels(
            logits[kept],
            labels[kept],
            alpha=self.alpha,
            gamma=0.0,
            reduction="sum",
            kernel=self.kernel,
        )

    def extra_repr(self) -> str:
        return (
            f"batch_size_per_image={self.batch_size_per_image}, nms_thresh={self.nms_thresh}, "
            f"neg_pos_ratio={self.neg_pos_ratio}, alpha={self.alpha}, kernel={self.kernel!r}"
        )
