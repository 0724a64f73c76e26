"""
Focal losses with soft targets, the successors that train the classification score to predict
localisation quality (beyond the paper): for positives the target of the positive class is the
IoU of the predicted box with its ground truth, q ∈ [0, 1], and 0 elsewhere.

* Quality Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020, eq. 5), with σ = sigmoid(x)
  and target y:

      QFL = -|y - σ|^β ((1 - y) log(1 - σ) + y log σ),    β = 2,

  the binary cross entropy with the soft target, modulated by the distance to it; for y ∈ {0, 1}
  it is the focal loss without α at γ = β.
* Varifocal Loss (Zhang et al., "VarifocalNet", CVPR 2021, eq. 2), with p = sigmoid(x), target q:

      VFL = -q (q log p + (1 - q) log(1 - p))    for q > 0,
      VFL = -α p^γ log(1 - p)                    for q = 0,    α = 0.75, γ = 2:

  positives weighted by their own target, only negatives down-weighted (by α p^γ).

Each is written once as a closed form (loss and d/dx, from softplus and one exp and one log1p,
finite for logits of ±1e4) and evaluated by :mod:`.closed_form` with the "compiled" (default) or
"eager" kernel. Dtypes as for :func:`~.focal_loss.sigmoid_focal_loss`: fp16 / bf16 / fp32 logits
are computed in fp32 (fp64 in fp64) and the loss is returned in the dtype of the logits.
"""

import math
from typing import Tuple

import torch
from torch import Tensor

from .closed_form import ClosedFormLoss, closed_form_loss, smallest_normal
from .focal_loss import _check_targets, _sigmoid_softplus

__all__ = [
    "check_quality_beta",
    "check_varifocal_alpha",
    "check_varifocal_gamma",
    "quality_focal_loss",
    "varifocal_loss",
]


def _finite_nonnegative(value: float, name: str, meaning: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 ({meaning}), got {value}.")
    return float(value)


def check_quality_beta(beta: float, name: str = "beta") -> float:
    """The QFL β: finite and >= 0 (0: binary cross entropy with the soft targets)."""
    return _finite_nonnegative(
        beta, name, "the paper: 2; 0 gives binary cross entropy with the soft targets"
    )


def check_varifocal_alpha(alpha: float, name: str = "alpha") -> float:
    """The VFL α, the weight of the negatives: finite and >= 0."""
    return _finite_nonnegative(alpha, name, "the weight of the negatives; the paper: 0.75")


def check_varifocal_gamma(gamma: float, name: str = "gamma") -> float:
    """The VFL γ, the focusing exponent of the negatives: finite and >= 0."""
    return _finite_nonnegative(gamma, name, "the focusing exponent of the negatives; the paper: 2")


# ---------------------------------------------------------------------------------------------
# The formulas: elementwise loss and d loss / dx. Out-of-place operations only, so that autograd
# can differentiate the gradient again.
# ---------------------------------------------------------------------------------------------
def _quality_focal_formula(x: Tensor, t: Tensor, beta: float) -> Tuple[Tensor, Tensor]:
    """
    QFL: |t - σ|^β BCE(x, t).

    Returns:
        the loss and its derivative w.r.t. x, shaped like x.
    """
    p, one_minus_p, minus_log_p, minus_log_one_minus_p = _sigmoid_softplus(x)
    cross_entropy = t * minus_log_p + (1 - t) * minus_log_one_minus_p
    # σ - t, written without the cancellation of σ - 1 at σ -> 1; it is d BCE / dx.
    difference = (1 - t) * p - t * one_minus_p
    distance = difference.abs()
    modulator = distance.pow(beta)
    # d|σ - t|^β / dx = β |σ - t|^β sign(σ - t) σ (1 - σ) / |σ - t|. Written this way, no
    # |σ - t|^(β - 1) overflows; where σ = t exactly the ratio is taken as 0 (the modulator, or
    # the sign, is 0 there). For β < 1 the derivative is unbounded near σ = t, as |σ - t|^β's is.
    # The modulator multiplies the ratio first: for β >= 1 their product is bounded.
    ratio = p * one_minus_p / distance.clamp_min(smallest_normal(x))
    grad = modulator * difference + beta * cross_entropy * difference.sign() * (modulator * ratio)
    return cross_entropy * modulator, grad


def _varifocal_formula(x: Tensor, t: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor]:
    """
    VFL: t BCE(x, t) where t > 0, α p^γ BCE(x, 0) = -α p^γ log(1 - p) where t = 0.

    Returns:
        the loss and its derivative w.r.t. x, shaped like x.
    """
    p, one_minus_p, minus_log_p, minus_log_one_minus_p = _sigmoid_softplus(x)
    cross_entropy = t * minus_log_p + (1 - t) * minus_log_one_minus_p
    positive = t > 0
    negative_weight = alpha * p.pow(gamma)
    weight = torch.where(positive, t, negative_weight)
    # d BCE / dx = p - t (without the cancellation of p - 1 at p -> 1); for t = 0 the weight's
    # derivative adds d(α p^γ)/dx BCE(x, 0) = α γ p^γ (1 - p) BCE(x, 0).
    cross_entropy_grad = (1 - t) * p - t * one_minus_p
    weight_grad = torch.where(positive, 0.0, gamma * negative_weight * one_minus_p)
    return weight * cross_entropy, weight * cross_entropy_grad + weight_grad * cross_entropy


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def quality_focal_loss(
    logits: Tensor,
    targets: Tensor,
    beta: float = 2.0,
    reduction: str = "none",
    kernel: str = "compiled",
) -> Tensor:
    """
    The Quality Focal Loss of GFL, -|y - σ|^β ((1 - y) log(1 - σ) + y log σ) with σ =
    sigmoid(logits) and y the targets. No α: GFL has none (with y ∈ {0, 1} it equals
    ``sigmoid_focal_loss(logits, y, alpha=-1, gamma=beta)``).

    Args:
        logits: float tensor of any shape; fp16, bf16, fp32 or fp64.
        targets: soft targets y ∈ [0, 1] shaped like ``logits`` (GFL: the IoU of the predicted
            box with its ground truth for the class of a positive, 0 elsewhere). Not checked.
        beta: β ≥ 0 (GFL: 2); 0 gives binary cross entropy with the soft targets.
        reduction: "none" | "mean" (over all elements) | "sum".
        kernel: "compiled" | "eager".

    Returns:
        the loss in the dtype of ``logits`` (computed in fp32 or fp64): shaped like ``logits``
        for "none", else a scalar.
    """
    _check_targets(logits, targets)
    loss_fn = ClosedFormLoss(
        _quality_focal_formula, (check_quality_beta(beta),), reduction=reduction, kernel=kernel
    )
    return closed_form_loss(logits, targets, loss_fn)


def varifocal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    reduction: str = "none",
    kernel: str = "compiled",
) -> Tensor:
    """
    The Varifocal Loss of VarifocalNet: -q (q log p + (1 - q) log(1 - p)) where the target
    q > 0, -α p^γ log(1 - p) where q = 0, with p = sigmoid(logits).

    Args:
        logits: float tensor of any shape; fp16, bf16, fp32 or fp64.
        targets: soft targets q ∈ [0, 1] shaped like ``logits`` (VarifocalNet: the IoU of the
            predicted box with its ground truth for the class of a positive, 0 elsewhere). Not
            checked.
        alpha: α ≥ 0, the weight of the negatives (the paper: 0.75).
        gamma: γ ≥ 0, the focusing exponent of the negatives (the paper: 2).
        reduction: "none" | "mean" (over all elements) | "sum".
        kernel: "compiled" | "eager".

    Returns:
        the loss in the dtype of ``logits`` (computed in fp32 or fp64): shaped like ``logits``
        for "none", else a scalar.
    """
    _check_targets(logits, targets)
    params = (check_varifocal_alpha(alpha), check_varifocal_gamma(gamma))
    loss_fn = ClosedFormLoss(_varifocal_formula, params, reduction=reduction, kernel=kernel)
    return closed_form_loss(logits, targets, loss_fn)
