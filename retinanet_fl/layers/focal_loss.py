"""
Functional classification losses of the paper (§3, appendix A and B): the focal loss, FL* and
α-balanced cross entropy, for float targets (a drop-in for torchvision's and fvcore's
``sigmoid_focal_loss``) and for integer class labels (the detector's path, no one-hot tensor).

Each loss is written once, as a function of the logits x and the targets t that returns the
elementwise loss and its closed-form derivative d/dx (appendix B), with softplus / sigmoid of the
logits from one exp and one log1p (never ``log(sigmoid(x))``), which keeps values and gradients
finite for logits up to ±1e4 and any γ ≥ 0, including γ < 1 at p_t → 1. :mod:`.closed_form`
evaluates it with the "compiled" (default) or "eager" kernel.

Dtypes: fp16 / bf16 / fp32 logits are computed in fp32 (fp64 in fp64). The float-target functions
return the loss in the dtype of the logits, as torchvision does; the label functions always
return fp32 (or fp64), because the detector sums ~10^5 anchors under mixed precision. The
gradient has the dtype of the logits; second derivatives are supported.
"""

import math
from typing import Callable, Tuple

import torch
from torch import Tensor

from .closed_form import (
    KERNELS,
    Alpha,
    ClosedFormLoss,
    closed_form_loss,
    scripted_loss,
    smallest_normal,
    upcast,
)

__all__ = [
    "KERNELS",
    "check_class_alpha",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "sigmoid_focal_loss_star",
    "sigmoid_focal_loss_star_from_labels",
]


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
def check_gamma(gamma: float, name: str = "gamma") -> float:
    """The focal loss γ: finite and >= 0."""
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(
            f"{name} must be a finite number >= 0 (0 gives alpha-balanced cross entropy), "
            f"got {gamma}."
        )
    return float(gamma)


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """α: in [0, 1], or negative for no α weighting."""
    if not (math.isfinite(alpha) and alpha <= 1):
        raise ValueError(
            f"{name} must be in [0, 1], or negative to turn the alpha weighting off, got {alpha}."
        )
    return float(alpha)


def check_class_alpha(alpha: Alpha, num_classes: int, name: str = "alpha") -> Alpha:
    """
    α of a label loss: a float as in :func:`check_alpha`, or per-class α_c, one value in [0, 1]
    per class.

    Args:
        alpha: a float, or a sequence or (K,) tensor of K floats.
        num_classes: K, the number of foreground classes.
        name: what the error message calls ``alpha``.

    Returns:
        the float, or the α_c as a (K,) float64 tensor.
    """
    if isinstance(alpha, (int, float)):
        return check_alpha(alpha, name)
    values = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu()
    if values.shape != (num_classes,) or not bool(((values >= 0) & (values <= 1)).all()):
        raise ValueError(
            f"{name} must be a number or {num_classes} per-class values (one per class), each "
            f"in [0, 1]; got {values.tolist()}."
        )
    return values


def check_star_gamma(gamma: float, name: str = "gamma") -> float:
    """The FL* γ: finite and > 0."""
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(
            f"{name} of FL* must be a finite number > 0 (FL* divides by it), got {gamma}."
        )
    return float(gamma)


def check_beta(beta: float, name: str = "beta") -> float:
    """The FL* β: finite."""
    if not math.isfinite(beta):
        raise ValueError(f"{name} of FL* must be a finite number, got {beta}.")
    return float(beta)


def _check_logits(logits: Tensor) -> None:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}.")


def _check_targets(logits: Tensor, targets: Tensor) -> None:
    _check_logits(logits)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}."
        )


def check_labels(logits: Tensor, labels: Tensor, background_logit: bool = False) -> None:
    """
    Check (R, C) logits and (R,) int64 labels in [-1, K]: C = K, or C = K + 1 when the last
    column is the background's (``background_logit``).
    """
    _check_logits(logits)
    shape = "(R, K + 1)" if background_logit else "(R, K)"
    if logits.dim() != 2 or (background_logit and logits.shape[1] < 2):
        raise ValueError(f"logits must have shape {shape}, got {tuple(logits.shape)}.")
    if labels.dtype != torch.int64 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must be an int64 tensor of shape (R,) = {tuple(logits.shape[:1])}, "
            f"got dtype {labels.dtype} and shape {tuple(labels.shape)}."
        )
    num_classes = logits.shape[1] - int(background_logit)
    if labels.numel() and bool((labels < -1).any() | (labels > num_classes).any()):
        raise ValueError(
            f"labels must lie in [-1, {num_classes}]: a class index, {num_classes} for "
            "background or -1 for ignored."
        )


# ---------------------------------------------------------------------------------------------
# The formulas, each written once: elementwise loss and d loss / dx, without α.
# Out-of-place operations only, so that autograd can differentiate the gradient again.
# TorchScript compiles them too (the scripted drop-ins below).
# ---------------------------------------------------------------------------------------------
def _sigmoid_softplus(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """
    p = sigmoid(x), 1 - p, -log(p) = softplus(-x) and -log(1 - p) = softplus(x), from one exp
    and one log1p: the compiled kernel is bound by these transcendentals.
    """
    e = torch.exp(-x.abs())
    inverse = 1 / (1 + e)
    nonnegative = x >= 0
    log1p_e = torch.log1p(e)
    return (
        torch.where(nonnegative, inverse, e * inverse),
        torch.where(nonnegative, e * inverse, inverse),
        torch.relu(-x) + log1p_e,
        torch.relu(x) + log1p_e,
    )


def _focal_formula(x: Tensor, t: Tensor, gamma: float) -> Tuple[Tensor, Tensor]:
    """
    FL without α: CE(x, t) (1 - p_t)^γ, with 1 - p_t = t (1 - p) + (1 - t) p (fvcore's and
    torchvision's definition, which accepts soft targets t in [0, 1]).

    Returns:
        the loss and its derivative w.r.t. x (appendix B for t in {0, 1}), shaped like x.
    """
    p, one_minus_p, minus_log_p, minus_log_one_minus_p = _sigmoid_softplus(x)
    cross_entropy = t * minus_log_p + (1 - t) * minus_log_one_minus_p
    one_minus_p_t = t * one_minus_p + (1 - t) * p
    modulator = one_minus_p_t.pow(gamma)
    # d/dx of (1 - p_t)^γ = γ (1 - p_t)^γ (1 - 2t) p (1 - p) / (1 - p_t). The ratio
    # p (1 - p) / (1 - p_t) lies in [0, 1] (it is p_t for t in {0, 1}); written this way, no
    # (1 - p_t)^(γ - 1) overflows for γ < 1 at p_t -> 1. Where 1 - p_t underflows to 0, so does
    # p (1 - p), and the ratio is 0 instead of 0 / 0.
    ratio = p * one_minus_p / one_minus_p_t.clamp_min(smallest_normal(x))
    # d CE / dx = p - t, written without the cancellation of p - 1 at p -> 1.
    cross_entropy_grad = (1 - t) * p - t * one_minus_p
    grad = modulator * (cross_entropy_grad + gamma * cross_entropy * (1 - 2 * t) * ratio)
    return cross_entropy * modulator, grad


def _focal_star_formula(x: Tensor, t: Tensor, gamma: float, beta: float) -> Tuple[Tensor, Tensor]:
    """
    FL* without α (appendix A): -log(sigmoid(γ x_t + β)) / γ with x_t = x (2t - 1) (fvcore's
    sign convention for soft targets).

    Returns:
        the loss and its derivative w.r.t. x, y_s (p*_t - 1) with y_s = 2t - 1 (appendix B).
    """
    sign = 2 * t - 1
    _, one_minus_p_star_t, minus_log_p_star_t, _ = _sigmoid_softplus(gamma * x * sign + beta)
    return minus_log_p_star_t / gamma, -sign * one_minus_p_star_t


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    kernel: str = "compiled",
) -> Tensor:
    """
    The focal loss FL = -α_t (1 - p_t)^γ log(p_t). A drop-in for
    ``torchvision.ops.sigmoid_focal_loss``: the same signature, defaults and results, scriptable
    with ``torch.jit.script``. fvcore's ``sigmoid_focal_loss`` takes the same arguments but
    defaults to ``alpha=-1``: pass it explicitly when replacing fvcore's.

    Args:
        logits: float tensor of any shape; fp16, bf16, fp32 or fp64.
        targets: tensor of the shape of ``logits``: 1 for the positive class, 0 for the negative
            (values in between are accepted, as by torchvision and fvcore).
        alpha: weight of the positives in [0, 1] (negatives get 1 - α); α < 0 turns it off.
        gamma: focusing parameter γ ≥ 0; γ = 0 gives α-balanced cross entropy, and with α < 0
            ``F.binary_cross_entropy_with_logits``.
        reduction: "none" | "mean" | "sum".
        kernel: "compiled" | "eager"; ignored under TorchScript, which runs the formula as
            scripted operations.

    Returns:
        the loss in the dtype of ``logits`` (computed in fp32 or fp64): shaped like ``logits``
        for "none", else a scalar.
    """
    if torch.jit.is_scripting():
        x = upcast(logits)
        t = targets.to(x.dtype)
        loss = scripted_loss(_focal_formula(x, t, gamma)[0], t, alpha, reduction)
        return loss.to(logits.dtype)
    _check_targets(logits, targets)
    params = (check_gamma(gamma),)
    loss_fn = ClosedFormLoss(
        _focal_formula, params, check_alpha(alpha), reduction=reduction, kernel=kernel
    )
    return closed_form_loss(logits, targets, loss_fn)


def sigmoid_focal_loss_from_labels(
    logits: Tensor,
    labels: Tensor,
    alpha: Alpha = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    kernel: str = "compiled",
) -> Tensor:
    """
    The focal loss from class indices, without building a one-hot (R, K) tensor. Equals
    ``sigmoid_focal_loss`` on the one-hot targets of the non-ignored rows.

    Args:
        logits: (R, K) float tensor; fp16, bf16, fp32 or fp64.
        labels: (R,) int64: a class in [0, K), K for background, -1 for ignored rows, which
            contribute nothing (zeros for "none", and no gradient).
        alpha: as in :func:`sigmoid_focal_loss`, or per-class α_c, a (K,) tensor or sequence of
            values in [0, 1]: element (r, c) is weighted by α_c if row r is of class c, else by
            1 - α_c.
        gamma, kernel: as in :func:`sigmoid_focal_loss`.
        reduction: "none" | "mean" (over the elements of non-ignored rows) | "sum".

    Returns:
        fp32 loss (fp64 for fp64 logits): (R, K) for "none", else a scalar.
    """
    return _loss_from_labels(
        logits, labels, _focal_formula, (check_gamma(gamma),), alpha, reduction, kernel
    )


def sigmoid_focal_loss_star(
    logits: Tensor,
    targets: Tensor,
    gamma: float,
    beta: float,
    alpha: float = 0.25,
    reduction: str = "none",
    kernel: str = "compiled",
) -> Tensor:
    """
    FL* (appendix A): -α_t log(sigmoid(γ x_t + β)) / γ with x_t = x (2 t - 1). With β = 0 it
    equals ``fvcore.nn.sigmoid_focal_loss_star`` (whose signature has no β and defaults to
    ``alpha=-1``). Scriptable with ``torch.jit.script``.

    Args:
        logits, targets, reduction, kernel: as in :func:`sigmoid_focal_loss`.
        gamma: γ > 0. The paper uses (γ, β) = (2, 1) and (4, 0).
        beta: β, any finite number.
        alpha: as in :func:`sigmoid_focal_loss`.

    Returns:
        the loss in the dtype of ``logits``: shaped like ``logits`` for "none", else a scalar.
    """
    if torch.jit.is_scripting():
        x = upcast(logits)
        t = targets.to(x.dtype)
        loss = scripted_loss(_focal_star_formula(x, t, gamma, beta)[0], t, alpha, reduction)
        return loss.to(logits.dtype)
    _check_targets(logits, targets)
    params = (check_star_gamma(gamma), check_beta(beta))
    loss_fn = ClosedFormLoss(
        _focal_star_formula, params, check_alpha(alpha), reduction=reduction, kernel=kernel
    )
    return closed_form_loss(logits, targets, loss_fn)


def sigmoid_focal_loss_star_from_labels(
    logits: Tensor,
    labels: Tensor,
    gamma: float,
    beta: float,
    alpha: Alpha = 0.25,
    reduction: str = "sum",
    kernel: str = "compiled",
) -> Tensor:
    """
    FL* from class indices; see :func:`sigmoid_focal_loss_star` and
    :func:`sigmoid_focal_loss_from_labels` for the arguments (α may be per class).

    Returns:
        fp32 loss (fp64 for fp64 logits): (R, K) for "none", else a scalar.
    """
    params = (check_star_gamma(gamma), check_beta(beta))
    return _loss_from_labels(logits, labels, _focal_star_formula, params, alpha, reduction, kernel)


def _loss_from_labels(
    logits: Tensor,
    labels: Tensor,
    formula: Callable[..., Tuple[Tensor, Tensor]],
    params: Tuple[float, ...],
    alpha: Alpha,
    reduction: str,
    kernel: str,
) -> Tensor:
    """The elementwise loss of ``formula`` from class indices, after checking the labels and α."""
    check_labels(logits, labels)
    alpha = check_class_alpha(alpha, logits.shape[1])
    if isinstance(alpha, Tensor):
        alpha = alpha.to(device=logits.device, dtype=upcast(logits).dtype)
    loss_fn = ClosedFormLoss(
        formula, params, alpha, from_labels=True, reduction=reduction, kernel=kernel
    )
    return closed_form_loss(logits, labels, loss_fn)
