"""
Classification losses of the detector (paper Table 1a/b/d and Table 3), chosen by name with
``MODEL.RETINANET_FL.CLS_LOSS``:

* ``"focal"``: the focal loss, γ and α from ``MODEL.RETINANET.FOCAL_LOSS_GAMMA / _ALPHA``.
* ``"focal_star"``: FL* with ``MODEL.RETINANET_FL.FOCAL_STAR_GAMMA / _BETA`` and the same α.
* ``"ce"``: cross entropy, α-balanced when α ≥ 0.
* ``"softmax_focal"``: the (K + 1)-way softmax focal loss; the head then predicts K + 1 logits
  per anchor, the last for background.
* ``"ohem"`` (:mod:`.ohem`): cross entropy over the examples kept by online hard example mining.
* ``"quality_focal"`` (beyond the paper): GFL's Quality Focal Loss, β from
  ``MODEL.RETINANET_FL.QUALITY_FOCAL_BETA``, on IoU targets (see below).
* ``"varifocal"`` (beyond the paper): VarifocalNet's loss, α and γ from
  ``MODEL.RETINANET_FL.VARIFOCAL_ALPHA / _GAMMA`` (its α weights the negatives, the focal loss's
  the positives: hence keys of its own), on IoU targets.

The focal loss, FL*, CE and the softmax focal loss also take per-class α
(``MODEL.RETINANET_FL.ALPHA_PER_CLASS``, :mod:`.class_alpha`). Every loss is an ``nn.Module``
called as ``loss(pred_logits, gt_labels, anchors)`` that returns the fp32 sum of the
classification loss over the batch; the meta-architecture divides it by its normalizer (the
number of foreground anchors, or its moving average). A loss whose ``NEEDS_IOU_TARGETS`` is True
is called with a fourth argument, the (N, R) IoU of each foreground anchor's decoded, detached
predicted box with its matched ground-truth box (0 for the other anchors): :func:`iou_targets`.

Normalisation and box loss of the IoU-target losses. Both papers divide the classification sum by
the number of positives, as ``LOSS_NORMALIZER "num_pos"`` (the paper's configs) does here. Both
weight their box loss (GIoU) by λ = 2 (GFL) and 1.5 (VarifocalNet), and their code weights each
positive's box loss by a quality score (GFL: the detached predicted score; VarifocalNet: the IoU
target) and divides by the sum of those weights. This model does neither: its box loss
(``MODEL.RETINANET.BBOX_REG_LOSS_TYPE``, GIoU in the ``*_atss_qfl`` / ``*_atss_vfl`` configs) is
summed over the positives with weight 1 and divided by the normalizer, as with the focal loss.
"""

from typing import Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..layers.closed_form import check_kernel, upcast
from ..layers.focal_loss import (
    check_beta,
    check_gamma,
    check_labels,
    check_star_gamma,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star_from_labels,
)
from ..layers.soft_focal_losses import (
    check_quality_beta,
    check_varifocal_alpha,
    check_varifocal_gamma,
    quality_focal_loss,
    varifocal_loss,
)
from ..layers.softmax_focal_loss import softmax_focal_loss_from_labels
from .class_alpha import ClassAlphaLoss

__all__ = [
    "CLS_LOSS_REGISTRY",
    "build_cls_loss",
    "cls_loss_has_background_logit",
    "FocalClsLoss",
    "FocalStarClsLoss",
    "CrossEntropyClsLoss",
    "SoftmaxFocalClsLoss",
    "QualityFocalClsLoss",
    "VarifocalClsLoss",
    "iou_targets",
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
``forward(pred_logits (N, R, C), gt_labels (N, R), anchors (R, 4))`` returns the fp32 summed loss,
with C = K logits per anchor, or K + 1 when its ``BACKGROUND_LOGIT`` is True; when its
``NEEDS_IOU_TARGETS`` is True, ``forward`` also takes ``iou_targets (N, R)`` (:func:`iou_targets`).
Its ``RETINANET_FL_KEYS`` names the MODEL.RETINANET_FL keys that it reads (and the losses that are
not chosen do not).
"""

GAMMA_KEY = "MODEL.RETINANET.FOCAL_LOSS_GAMMA"
ALPHA_KEY = "MODEL.RETINANET.FOCAL_LOSS_ALPHA"
KERNEL_KEY = "MODEL.RETINANET_FL.LOSS_KERNEL"


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


def cls_loss_has_background_logit(cfg) -> bool:
    """
    Whether the loss named by ``MODEL.RETINANET_FL.CLS_LOSS`` needs a background logit, i.e. the
    head predicts K + 1 logits per anchor (the last for background) instead of K.
    """
    name = cfg.MODEL.RETINANET_FL.CLS_LOSS
    return name in CLS_LOSS_REGISTRY and CLS_LOSS_REGISTRY.get(name).BACKGROUND_LOGIT


def kernel_from_config(cfg) -> str:
    return check_kernel(cfg.MODEL.RETINANET_FL.LOSS_KERNEL, name=KERNEL_KEY)


def flatten_logits(pred_logits: Tensor, gt_labels: Tensor) -> Tuple[Tensor, Tensor]:
    """(N, R, C) logits and (N, R) labels -> (N·R, C) and (N·R,)."""
    if pred_logits.dim() != 3 or gt_labels.shape != pred_logits.shape[:2]:
        raise ValueError(
            "pred_logits must be (N, R, K) and gt_labels (N, R); got "
            f"{tuple(pred_logits.shape)} and {tuple(gt_labels.shape)}."
        )
    return pred_logits.flatten(0, 1), gt_labels.flatten()


_ALPHA_KEYS = ("ALPHA_PER_CLASS",)
# ALPHA_PER_CLASS: empty, a list of K values, or a rule name (see .class_alpha).
AlphaPerClass = Optional[Union[str, Sequence[float]]]


def _alpha_from_config(cfg) -> dict:
    return {
        "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
        "alpha_per_class": cfg.MODEL.RETINANET_FL.ALPHA_PER_CLASS,
        "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
    }


@CLS_LOSS_REGISTRY.register_as("focal")
class FocalClsLoss(ClassAlphaLoss):
    """The focal loss summed over all non-ignored anchors and classes (paper §3.2)."""

    RETINANET_FL_KEYS = _ALPHA_KEYS
    BACKGROUND_LOGIT = False

    @configurable
    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float = 0.25,
        alpha_per_class: AlphaPerClass = None,
        num_classes: Optional[int] = None,
        kernel: str = "compiled",
    ):
        """
        Args:
            gamma: γ ≥ 0.
            alpha: α in [0, 1], or negative for no α weighting.
            alpha_per_class: None (α for every class), K values α_c in [0, 1], or a rule of
                :mod:`.class_alpha` (``MODEL.RETINANET_FL.ALPHA_PER_CLASS``).
            num_classes: K; needed with ``alpha_per_class``.
            kernel: "compiled" or "eager"; see :mod:`retinanet_fl.layers.focal_loss`.
        """
        super().__init__()
        self.gamma = check_gamma(gamma, name=f"gamma ({GAMMA_KEY})")
        self._init_alpha(alpha, alpha_per_class, num_classes)
        self.kernel = check_kernel(kernel, name=f"kernel ({KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            **_alpha_from_config(cfg),
            "kernel": kernel_from_config(cfg),
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
        logits, labels = flatten_logits(pred_logits, gt_labels)
        return sigmoid_focal_loss_from_labels(
            logits, labels, self.loss_alpha, self.gamma, reduction="sum", kernel=self.kernel
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {self._alpha_repr()}, kernel={self.kernel!r}"


@CLS_LOSS_REGISTRY.register_as("ce")
class CrossEntropyClsLoss(FocalClsLoss):
    """Sigmoid cross entropy (the focal loss with γ = 0), α-balanced when α ≥ 0 (Table 1a)."""

    @configurable
    def __init__(
        self,
        *,
        alpha: float = 0.25,
        alpha_per_class: AlphaPerClass = None,
        num_classes: Optional[int] = None,
        kernel: str = "compiled",
    ):
        """
        Args:
            alpha: α in [0, 1], or negative for plain cross entropy.
            alpha_per_class, num_classes: per-class α, see :class:`FocalClsLoss`.
            kernel: "compiled" or "eager".
        """
        super().__init__(
            gamma=0.0,
            alpha=alpha,
            alpha_per_class=alpha_per_class,
            num_classes=num_classes,
            kernel=kernel,
        )

    @classmethod
    def from_config(cls, cfg):
        return {**_alpha_from_config(cfg), "kernel": kernel_from_config(cfg)}


@CLS_LOSS_REGISTRY.register_as("focal_star")
class FocalStarClsLoss(ClassAlphaLoss):
    """FL* = -α_t log(sigmoid(γ x_t + β)) / γ (appendix A, Table 3)."""

    RETINANET_FL_KEYS = ("FOCAL_STAR_GAMMA", "FOCAL_STAR_BETA", *_ALPHA_KEYS)
    BACKGROUND_LOGIT = False

    @configurable
    def __init__(
        self,
        *,
        gamma: float = 2.0,
        beta: float = 1.0,
        alpha: float = 0.25,
        alpha_per_class: AlphaPerClass = None,
        num_classes: Optional[int] = None,
        kernel: str = "compiled",
    ):
        """
        Args:
            gamma: γ > 0.
            beta: β, finite.
            alpha: α in [0, 1], or negative for no α weighting.
            alpha_per_class, num_classes: per-class α, see :class:`FocalClsLoss`.
            kernel: "compiled" or "eager".
        """
        super().__init__()
        self.gamma = check_star_gamma(gamma, name="gamma (MODEL.RETINANET_FL.FOCAL_STAR_GAMMA)")
        self.beta = check_beta(beta, name="beta (MODEL.RETINANET_FL.FOCAL_STAR_BETA)")
        self._init_alpha(alpha, alpha_per_class, num_classes)
        self.kernel = check_kernel(kernel, name=f"kernel ({KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "gamma": cfg.MODEL.RETINANET_FL.FOCAL_STAR_GAMMA,
            "beta": cfg.MODEL.RETINANET_FL.FOCAL_STAR_BETA,
            **_alpha_from_config(cfg),
            "kernel": kernel_from_config(cfg),
        }

    def forward(self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor) -> Tensor:
        """See :meth:`FocalClsLoss.forward`."""
        logits, labels = flatten_logits(pred_logits, gt_labels)
        return sigmoid_focal_loss_star_from_labels(
            logits,
            labels,
            gamma=self.gamma,
            beta=self.beta,
            alpha=self.loss_alpha,
            reduction="sum",
            kernel=self.kernel,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, beta={self.beta}, {self._alpha_repr()}, kernel={self.kernel!r}"


@CLS_LOSS_REGISTRY.register_as("softmax_focal")
class SoftmaxFocalClsLoss(FocalClsLoss):
    """
    The (K + 1)-way softmax focal loss summed over all non-ignored anchors, with α_t = α (α_c)
    for foreground anchors and 1 - α (1 - mean α_c) for background anchors; see
    :mod:`retinanet_fl.layers.softmax_focal_loss`. The head predicts K + 1 logits per anchor.
    """

    BACKGROUND_LOGIT = True

    def forward(self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor) -> Tensor:
        """
        Args:
            pred_logits: (N, R, K + 1) logits of all levels, the last for background.
            gt_labels: (N, R) int64: class in [0, K), K for background, -1 for ignored.
            anchors: (R, 4) XYXY anchors; unused.

        Returns:
            fp32 scalar: the loss summed over the batch.
        """
        logits, labels = flatten_logits(pred_logits, gt_labels)
        return softmax_focal_loss_from_labels(
            logits, labels, self.loss_alpha, self.gamma, reduction="sum", kernel=self.kernel
        )


# ---------------------------------------------------------------------------------------------
# Losses on IoU targets (beyond the paper)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def iou_targets(
    anchors: Tensor,
    pred_anchor_deltas: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    foreground: Tensor,
    box2box_transform: Box2BoxTransform,
) -> Tensor:
    """
    The IoU of each foreground anchor's predicted box (decoded from its deltas, detached) with
    its matched ground-truth box: the targets of GFL's and VarifocalNet's classification losses.

    Args:
        anchors: (R, 4) XYXY anchors of all levels.
        pred_anchor_deltas: per-level deltas, each (N, R_l, 4).
        gt_boxes: N tensors (R, 4), the matched ground-truth box of each anchor.
        foreground: (N, R) bool, the foreground anchors.
        box2box_transform: the model's box <-> delta encoding.

    Returns:
        (N, R) fp32: the IoU for foreground anchors, 0 elsewhere.
    """
    deltas = cat([d.detach() for d in pred_anchor_deltas], dim=1)
    image_idxs, anchor_idxs = foreground.nonzero(as_tuple=True)
    pred_boxes = box2box_transform.apply_deltas(
        deltas[image_idxs, anchor_idxs], anchors[anchor_idxs]
    )
    # Row-major, as nonzero() orders the (image, anchor) pairs.
    matched = cat([boxes[mask] for boxes, mask in zip(gt_boxes, foreground)], dim=0)
    targets = torch.zeros(foreground.shape, dtype=torch.float32, device=foreground.device)
    targets[image_idxs, anchor_idxs] = matched_pairwise_iou(
        Boxes(pred_boxes), Boxes(matched.to(pred_boxes.dtype))
    ).float()
    return targets


def soft_targets_from_labels(
    pred_logits: Tensor, gt_labels: Tensor, iou: Tensor
) -> Tuple[Tensor, Tensor]:
    """
    The (rows, K) logits and soft targets of the non-ignored anchors: the IoU for the class of a
    foreground anchor, 0 elsewhere.

    Args:
        pred_logits: (N, R, K) logits, any float dtype.
        gt_labels: (N, R) int64: class in [0, K), K for background, -1 for ignored.
        iou: (N, R) IoU targets, see :func:`iou_targets`.

    Returns:
        the logits (fp32, fp64 for fp64) and targets of the non-ignored anchors, each (M, K).
    """
    logits, labels = flatten_logits(pred_logits, gt_labels)
    check_labels(logits, labels)
    if iou.shape != gt_labels.shape:
        raise ValueError(
            f"iou_targets must be (N, R) = {tuple(gt_labels.shape)} like gt_labels, got "
            f"{tuple(iou.shape)}."
        )
    logits = upcast(logits)
    num_classes = logits.shape[1]
    foreground = (labels >= 0) & (labels < num_classes)
    targets = torch.zeros_like(logits, dtype=logits.dtype)
    targets[foreground, labels[foreground]] = iou.flatten()[foreground].to(logits.dtype)
    valid = labels >= 0
    if not bool(valid.all()):  # ignored anchors (the IoU matcher's band) contribute nothing
        return logits[valid], targets[valid]
    return logits, targets


@CLS_LOSS_REGISTRY.register_as("quality_focal")
class QualityFocalClsLoss(nn.Module):
    """
    GFL's Quality Focal Loss (Li et al. 2020) on IoU targets, summed over the non-ignored anchors
    and classes: -|y - σ|^β ((1 - y) log(1 - σ) + y log σ), y the IoU of the foreground anchor's
    predicted box with its ground truth for its class, 0 elsewhere (no α).
    """

    RETINANET_FL_KEYS = ("QUALITY_FOCAL_BETA",)
    BACKGROUND_LOGIT = False
    NEEDS_IOU_TARGETS = True

    @configurable
    def __init__(self, *, beta: float = 2.0, kernel: str = "compiled"):
        """
        Args:
            beta: β ≥ 0 (the paper: 2).
            kernel: "compiled" or "eager"; see :mod:`retinanet_fl.layers.soft_focal_losses`.
        """
        super().__init__()
        self.beta = check_quality_beta(beta, name="beta (MODEL.RETINANET_FL.QUALITY_FOCAL_BETA)")
        self.kernel = check_kernel(kernel, name=f"kernel ({KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "beta": cfg.MODEL.RETINANET_FL.QUALITY_FOCAL_BETA,
            "kernel": kernel_from_config(cfg),
        }

    def forward(
        self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor, iou_targets: Tensor
    ) -> Tensor:
        """
        Args:
            pred_logits: (N, R, K) classification logits of all levels, any float dtype.
            gt_labels: (N, R) int64: class in [0, K), K for background, -1 for ignored.
            anchors: (R, 4) XYXY anchors; unused.
            iou_targets: (N, R) IoU of each foreground anchor's predicted box with its ground
                truth (:func:`iou_targets`); read for foreground anchors only.

        Returns:
            fp32 scalar (fp64 for fp64 logits): the loss summed over the batch.
        """
        logits, targets = soft_targets_from_labels(pred_logits, gt_labels, iou_targets)
        return quality_focal_loss(logits, targets, self.beta, reduction="sum", kernel=self.kernel)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, kernel={self.kernel!r}"


@CLS_LOSS_REGISTRY.register_as("varifocal")
class VarifocalClsLoss(nn.Module):
    """
    VarifocalNet's loss (Zhang et al. 2021) on IoU targets, summed over the non-ignored anchors
    and classes: q BCE(x, q) where the target q > 0 (the IoU, for the class of a foreground
    anchor), -α p^γ log(1 - p) where q = 0.
    """

    RETINANET_FL_KEYS = ("VARIFOCAL_ALPHA", "VARIFOCAL_GAMMA")
    BACKGROUND_LOGIT = False
    NEEDS_IOU_TARGETS = True

    @configurable
    def __init__(self, *, alpha: float = 0.75, gamma: float = 2.0, kernel: str = "compiled"):
        """
        Args:
            alpha: α ≥ 0, the weight of the negatives (the paper: 0.75).
            gamma: γ ≥ 0, their focusing exponent (the paper: 2).
            kernel: "compiled" or "eager"; see :mod:`retinanet_fl.layers.soft_focal_losses`.
        """
        super().__init__()
        self.alpha = check_varifocal_alpha(alpha, name="alpha (MODEL.RETINANET_FL.VARIFOCAL_ALPHA)")
        self.gamma = check_varifocal_gamma(gamma, name="gamma (MODEL.RETINANET_FL.VARIFOCAL_GAMMA)")
        self.kernel = check_kernel(kernel, name=f"kernel ({KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET_FL.VARIFOCAL_ALPHA,
            "gamma": cfg.MODEL.RETINANET_FL.VARIFOCAL_GAMMA,
            "kernel": kernel_from_config(cfg),
        }

    def forward(
        self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor, iou_targets: Tensor
    ) -> Tensor:
        """See :meth:`QualityFocalClsLoss.forward`."""
        logits, targets = soft_targets_from_labels(pred_logits, gt_labels, iou_targets)
        return varifocal_loss(
            logits, targets, self.alpha, self.gamma, reduction="sum", kernel=self.kernel
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, kernel={self.kernel!r}"
