"""
Classification losses of the detector (paper Table 1a/b/d and Table 3), chosen by name with
``MODEL.RETINANET_FL.CLS_LOSS``:

* ``"focal"``: the focal loss, γ and α from ``MODEL.RETINANET.FOCAL_LOSS_GAMMA / _ALPHA``.
* ``"focal_star"``: FL* with ``MODEL.RETINANET_FL.FOCAL_STAR_GAMMA / _BETA`` and the same α.
* ``"ce"``: cross entropy, α-balanced when α ≥ 0.
* ``"softmax_focal"``: the (K + 1)-way softmax focal loss; the head then predicts K + 1 logits
  per anchor, the last for background.
* ``"ohem"`` (:mod:`.ohem`): cross entropy over the examples kept by online hard example mining.

All but OHEM also take per-class α (``MODEL.RETINANET_FL.ALPHA_PER_CLASS``, :mod:`.class_alpha`).
Every loss is an ``nn.Module`` called as ``loss(pred_logits, gt_labels, anchors)`` that returns
the fp32 sum of the classification loss over the batch; the meta-architecture divides it by its
normalizer (the number of foreground anchors, or its moving average).
"""

from typing import Optional, Sequence, Tuple, Union

from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..layers.closed_form import check_kernel
from ..layers.focal_loss import (
    check_beta,
    check_gamma,
    check_star_gamma,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star_from_labels,
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
with C = K logits per anchor, or K + 1 when its ``BACKGROUND_LOGIT`` is True.
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
