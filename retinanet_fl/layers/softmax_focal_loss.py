"""
The (K + 1)-way softmax focal loss, the alternative to the paper's sigmoid form that Detectron
also implemented, for logits with one column per class plus a last column for background.

Per non-ignored row with label y (a class in [0, K), or K for background) and p = softmax(x):

    FL = -α_t (1 - p_y)^γ log(p_y),
    α_t = α_y for a foreground row, 1 - ᾱ for a background row,

where α_c = α for every class when α is one number (so α_t = α for foreground, 1 - α for
background, as in Detectron's ``SoftmaxFocalLoss``), or the per-class α_c given, and ᾱ is the
mean of the α_c (= α for one number). γ = 0 without α is ``F.cross_entropy``.

The closed-form gradient w.r.t. logit j, with t the one-hot label:

    dFL/dx_j = α_t (1 - p_y)^γ (p_j - t_j) (1 - γ p_y log(p_y) / (1 - p_y)),

written with log-softmax (one logsumexp per row) and expm1, so that logits of ±1e4 and γ < 1
stay finite. :mod:`.closed_form` evaluates it with the "compiled" (default) or "eager" kernel;
dtypes as for :func:`~retinanet_fl.layers.focal_loss.sigmoid_focal_loss_from_labels`.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .closed_form import Alpha, ClosedFormLoss, closed_form_loss, smallest_normal, upcast
from .focal_loss import check_class_alpha, check_gamma, check_labels

__all__ = ["softmax_focal_loss_from_labels", "softmax_row_weights"]


def softmax_row_weights(alpha: Alpha, num_classes: int) -> Optional[Tensor]:
    """
    The α_t of each label of the softmax focal loss.

    Args:
        alpha: α in [0, 1] (negative: no α weighting), or the (K,) per-class α_c in [0, 1].
        num_classes: K, the number of foreground classes.

    Returns:
        (K + 1,) float64 tensor: α_c for each class c, then 1 - ᾱ for background (ᾱ = α, or the
        mean of the α_c); None without α weighting.
    """
    alpha = check_class_alpha(alpha, num_classes)
    if not isinstance(alpha, Tensor):
        if alpha < 0:
            return None
        alpha = torch.full((num_classes,), alpha, dtype=torch.float64)
    return torch.cat([alpha, (1 - alpha.mean()).reshape(1)])


def _softmax_focal_formula(
    x: Tensor, t: Tensor, row_weights: Optional[Tensor], gamma: float
) -> Tuple[Tensor, Tensor]:
    """
    The softmax focal loss of each row and its derivative.

    Args:
        x: (R, K + 1) logits, fp32 or fp64.
        t: (R, K + 1) one-hot labels (rows of ignored anchors are zero; the caller masks them).
        row_weights: (K + 1,) α_t of each label, or None.
        gamma: γ ≥ 0.

    Returns:
        the (R,) loss and its (R, K + 1) derivative w.r.t. x.
    """
    log_p = x - torch.logsumexp(x, dim=1, keepdim=True)
    p = torch.exp(log_p)
    log_p_t = (t * log_p).sum(dim=1, keepdim=True)
    p_t = torch.exp(log_p_t)
    one_minus_p_t = -torch.expm1(log_p_t)
    # 1 - p_t is 0 for ignored rows (t = 0) and where p_t rounds to 1. Clamped there, so that
    # the ratio below is 0 instead of 0 / 0 (the modulator (γ > 0) or the γ factor (γ = 0) then
    # makes its term vanish), and so that second derivatives (create_graph=True) see no
    # infinite derivative of (1 - p_t)^γ at 0.
    clamped = one_minus_p_t.clamp_min(smallest_normal(x))
    modulator = clamped.pow(gamma)
    # log(p_t) / (1 - p_t) lies in (-inf, -1]; written this way, no (1 - p_t)^(γ - 1) overflows
    # for γ < 1 at p_t -> 1.
    ratio = log_p_t / clamped
    # p - t, written without the cancellation of p_y - 1 at p_y -> 1.
    cross_entropy_grad = (1 - t) * p - t * one_minus_p_t
    loss = -modulator * log_p_t
    grad = modulator * cross_entropy_grad * (1 - gamma * p_t * ratio)
    if row_weights is not None:
        alpha_t = (t * row_weights).sum(dim=1, keepdim=True)
        loss, grad = loss * alpha_t, grad * alpha_t
    return loss.squeeze(1), grad


def softmax_focal_loss_from_labels(
    logits: Tensor,
    labels: Tensor,
    alpha: Alpha = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    kernel: str = "compiled",
) -> Tensor:
    """
    The softmax focal loss -α_t (1 - p_t)^γ log(p_t) from class indices (see the module
    docstring for α_t), without building a one-hot tensor.

    Args:
        logits: (R, K + 1) float tensor, the last column for background; fp16, bf16, fp32 or
            fp64 (computed in fp32, fp64 for fp64).
        labels: (R,) int64: a class in [0, K), K for background, -1 for ignored rows, which
            contribute nothing (zero loss and gradient).
        alpha: α in [0, 1] (foreground rows α, background rows 1 - α), negative for no α
            weighting, or the per-class α_c as a (K,) tensor or sequence of values in [0, 1]
            (background rows: 1 - mean α_c).
        gamma: γ ≥ 0; γ = 0 with α < 0 is ``F.cross_entropy(logits, labels, ignore_index=-1)``.
        reduction: "none" | "mean" (over the non-ignored rows) | "sum".
        kernel: "compiled" | "eager".

    Returns:
        fp32 loss (fp64 for fp64 logits): (R,) for "none", else a scalar.
    """
    check_labels(logits, labels, background_logit=True)
    row_weights = softmax_row_weights(alpha, logits.shape[1] - 1)
    if row_weights is not None:
        row_weights = row_weights.to(device=logits.device, dtype=upcast(logits).dtype)
    loss_fn = ClosedFormLoss(
        _softmax_focal_formula,
        (row_weights, check_gamma(gamma)),
        from_labels=True,
        per_row=True,
        reduction=reduction,
        kernel=kernel,
    )
    return closed_form_loss(logits, labels, loss_fn)
