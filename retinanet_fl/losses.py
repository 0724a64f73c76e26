"""
Functional classification losses of the paper (§3, appendix A and B): the focal loss, FL* and
α-balanced cross entropy, for float targets (a drop-in for fvcore's and torchvision's
``sigmoid_focal_loss``) and for integer class labels (the detector's path, no one-hot tensor).

Every loss is a ``torch.autograd.Function`` with the closed-form gradient of appendix B, so
autograd keeps no ``(R, K)`` intermediates. Both directions are written with softplus / sigmoid of
the signed logit ``x_t`` (never ``log(sigmoid(x))``), which keeps values and gradients finite for
logits up to ±1e4 and any γ ≥ 0, including γ < 1 at p_t → 1.

Two kernels compute the same formulas:

* ``"compiled"``: ``torch.compile`` turns the loss into one fused loop (C++ on CPU, Triton on GPU)
  that, when the logits require grad, also writes the gradient: the exp and log are evaluated
  once for both, and the gradient (one (R, K) fp32 tensor, which backward would allocate anyway)
  is kept until backward instead of the inputs being read again. It compiles once per process
  and per setting (dtype, K, γ, α, reduction; the number of anchors is a symbolic size); where
  compilation is impossible (no C++ compiler, an unsupported device) the eager kernel is used
  instead, with one warning.
* ``"eager"``: the closed form as ordinary tensor operations, no compile step; it saves only its
  inputs and computes the gradient in backward.

``kernel=None`` picks the value of the environment variable ``RETINANET_FL_LOSS_KERNEL``, else
``"compiled"``.

All functions accept fp32 / fp16 / bf16 logits, compute in fp32 and return fp32 (fp64 logits are
computed and returned in fp64); the gradient has the dtype of the logits.
"""

import functools
import logging
import math
import os
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KERNELS",
    "KERNEL_ENV_VAR",
    "default_kernel",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "sigmoid_focal_loss_star",
    "sigmoid_focal_loss_star_from_labels",
]

logger = logging.getLogger(__name__)

KERNELS = ("compiled", "eager")
KERNEL_ENV_VAR = "RETINANET_FL_LOSS_KERNEL"
REDUCTIONS = ("none", "mean", "sum")

# Device types ("cpu", "cuda", ...) on which torch.compile failed once; they use the eager kernel.
_COMPILE_FAILED_DEVICES = set()


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
def default_kernel() -> str:
    """
    Returns:
        the kernel named by the environment variable ``RETINANET_FL_LOSS_KERNEL``, else "compiled".
    """
    kernel = os.environ.get(KERNEL_ENV_VAR, "") or "compiled"
    return check_kernel(kernel, name=f"environment variable {KERNEL_ENV_VAR}")


def check_kernel(kernel: str, name: str = "kernel") -> str:
    """Returns ``kernel`` if it is one of KERNELS, else raises an error naming ``name``."""
    if kernel not in KERNELS:
        raise ValueError(f"{name} must be one of {KERNELS}, got {kernel!r}.")
    return kernel


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


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def _check_logits(logits: Tensor) -> None:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}.")


def _check_labels(logits: Tensor, labels: Tensor) -> None:
    _check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (R, K), got {tuple(logits.shape)}.")
    if labels.dtype != torch.int64 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must be an int64 tensor of shape (R,) = {tuple(logits.shape[:1])}, "
            f"got dtype {labels.dtype} and shape {tuple(labels.shape)}."
        )
    num_classes = logits.shape[1]
    if labels.numel() and bool((labels < -1).any() | (labels > num_classes).any()):
        raise ValueError(
            f"labels must lie in [-1, {num_classes}]: a class index, {num_classes} for "
            "background or -1 for ignored."
        )


def _upcast(logits: Tensor) -> Tensor:
    """fp16 / bf16 / fp32 -> fp32; fp64 stays fp64 (gradcheck and reference comparisons)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _alpha_pos_neg(alpha: float) -> Tuple[float, float]:
    """α_t for y = 1 and for y = 0; α < 0 turns the weighting off."""
    return (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Elementwise math on the signed logit x_t (x for y = 1, -x for y = 0), without α_t.
# Each "term" has its derivative with respect to x_t; d/dx = y_s * d/dx_t with y_s = ±1.
# ---------------------------------------------------------------------------------------------
def _focal_term(x_t: Tensor, gamma: float) -> Tensor:
    # (1 - p_t)^γ · -log(p_t), with 1 - p_t = sigmoid(-x_t) and -log(p_t) = softplus(-x_t).
    # In-place steps on fresh temporaries: fewer (R, K) allocations in the eager kernel.
    neg_x_t = -x_t
    return torch.sigmoid(neg_x_t).pow_(gamma).mul_(F.softplus(neg_x_t))


def _focal_term_grad(x_t: Tensor, gamma: float) -> Tensor:
    # Appendix B: (1 - p_t)^γ (γ p_t log(p_t) + p_t - 1).
    neg_x_t = -x_t
    one_minus_p_t = torch.sigmoid(neg_x_t)
    inner = F.softplus(neg_x_t).mul_(torch.sigmoid(x_t)).mul_(gamma).add_(one_minus_p_t)
    return one_minus_p_t.pow_(gamma).mul_(inner).neg_()


def _star_term(x_t: Tensor, gamma: float, beta: float) -> Tensor:
    # Appendix A: -log(sigmoid(γ x_t + β)) / γ.
    return F.softplus(-(gamma * x_t + beta)) / gamma


def _star_term_grad(x_t: Tensor, gamma: float, beta: float) -> Tensor:
    # Appendix B: p*_t - 1.
    return -torch.sigmoid(-(gamma * x_t + beta))


_TERMS = {
    "focal": (_focal_term, _focal_term_grad),
    "focal_star": (_star_term, _star_term_grad),
}


def _sigmoid_pair_softplus(z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """
    sigmoid(z), sigmoid(-z) and softplus(z) from one exp and one log1p (separately, each costs its
    own exp): the compiled kernel is bound by these transcendentals.
    """
    e = torch.exp(-z.abs())
    inverse = 1 / (1 + e)
    nonnegative = z >= 0
    return (
        torch.where(nonnegative, inverse, e * inverse),
        torch.where(nonnegative, e * inverse, inverse),
        torch.relu(z) + torch.log1p(e),
    )


def _focal_fused(x_t: Tensor, gamma: float) -> Tuple[Tensor, Tensor]:
    """The focal term and its derivative w.r.t. x_t, sharing their transcendentals."""
    one_minus_p_t, p_t, minus_log_p_t = _sigmoid_pair_softplus(-x_t)
    modulator = one_minus_p_t.pow(gamma)
    return (
        modulator * minus_log_p_t,
        -modulator * (gamma * p_t * minus_log_p_t + one_minus_p_t),
    )


def _star_fused(x_t: Tensor, gamma: float, beta: float) -> Tuple[Tensor, Tensor]:
    """The FL* term and its derivative w.r.t. x_t, sharing their transcendentals."""
    one_minus_p_star_t, _, minus_log_p_star_t = _sigmoid_pair_softplus(-(gamma * x_t + beta))
    return minus_log_p_star_t / gamma, -one_minus_p_star_t


# The same terms as _TERMS, written for the compiler.
_FUSED_TERMS = {"focal": _focal_fused, "focal_star": _star_fused}


# ---------------------------------------------------------------------------------------------
# Float targets (any value in [0, 1], as fvcore and torchvision accept).
# ---------------------------------------------------------------------------------------------
def _focal_soft_term(x: Tensor, t: Tensor, gamma: float) -> Tensor:
    # fvcore's formula: BCE(x, t) · (1 - p_t)^γ with 1 - p_t = t (1 - p) + (1 - t) p.
    cross_entropy = t * F.softplus(-x) + (1 - t) * F.softplus(x)
    one_minus_p_t = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
    return cross_entropy * one_minus_p_t.pow(gamma)


def _focal_soft_term_grad(x: Tensor, t: Tensor, gamma: float) -> Tensor:
    p, one_minus_p = torch.sigmoid(x), torch.sigmoid(-x)
    cross_entropy = t * F.softplus(-x) + (1 - t) * F.softplus(x)
    m = t * one_minus_p + (1 - t) * p  # 1 - p_t
    # d(m^γ)/dx = γ m^γ (1 - 2t) p (1 - p) / m. The ratio p (1 - p) / m lies in [0, 1]; writing
    # it this way avoids m^(γ - 1), which overflows for γ < 1 at p_t -> 1. Where m underflows to
    # 0, so does p (1 - p), and the ratio becomes 0 instead of 0 / 0.
    ratio = p * one_minus_p / m.clamp_min(torch.finfo(m.dtype).tiny)
    return m.pow(gamma) * ((p - t) + gamma * cross_entropy * (1 - 2 * t) * ratio)


def _star_soft_term(x: Tensor, t: Tensor, gamma: float, beta: float) -> Tensor:
    # fvcore's sign convention x_t = x (2t - 1), with the paper's β added.
    return _star_term(x * (2 * t - 1), gamma, beta)


def _star_soft_term_grad(x: Tensor, t: Tensor, gamma: float, beta: float) -> Tensor:
    sign = 2 * t - 1
    return sign * _star_term_grad(x * sign, gamma, beta)


_SOFT_TERMS = {
    "focal": (_focal_soft_term, _focal_soft_term_grad),
    "focal_star": (_star_soft_term, _star_soft_term_grad),
}


def _alpha_t(t: Tensor, alpha: float) -> Tensor:
    return alpha * t + (1 - alpha) * (1 - t)


def _targets_forward(
    logits: Tensor,
    targets: Tensor,
    kind: str,
    params: Tuple[float, ...],
    alpha: float,
    reduce: bool,
) -> Tensor:
    """Elementwise loss (R, ...) or its sum, fp32."""
    x = _upcast(logits)
    t = targets.to(x.dtype)
    loss = _SOFT_TERMS[kind][0](x, t, *params)
    if alpha >= 0:
        loss = loss * _alpha_t(t, alpha)
    return loss.sum() if reduce else loss


def _targets_grad(
    logits: Tensor, targets: Tensor, kind: str, params: Tuple[float, ...], alpha: float
) -> Tensor:
    """d(summed loss)/d logits, fp32."""
    x = _upcast(logits)
    t = targets.to(x.dtype)
    grad = _SOFT_TERMS[kind][1](x, t, *params)
    return grad * _alpha_t(t, alpha) if alpha >= 0 else grad


def _targets_backward(
    logits: Tensor,
    targets: Tensor,
    grad_out: Tensor,
    kind: str,
    params: Tuple[float, ...],
    alpha: float,
) -> Tensor:
    return (_targets_grad(logits, targets, kind, params, alpha) * grad_out).to(logits.dtype)


def _targets_fused(
    logits: Tensor,
    targets: Tensor,
    kind: str,
    params: Tuple[float, ...],
    alpha: float,
    reduce: bool,
    with_grad: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The compiled kernel: the loss and, if ``with_grad``, d(summed loss)/d logits in one pass."""
    loss = _targets_forward(logits, targets, kind, params, alpha, reduce)
    if not with_grad:
        return loss, None
    return loss, _targets_grad(logits, targets, kind, params, alpha)


# ---------------------------------------------------------------------------------------------
# Integer labels: (R,) with K = background and -1 = ignored.
# ---------------------------------------------------------------------------------------------
def _labels_fused(
    logits: Tensor,
    labels: Tensor,
    kind: str,
    params: Tuple[float, ...],
    alpha: float,
    reduce: bool,
    with_grad: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    The compiled kernel: the loss and, if ``with_grad``, d(summed loss)/d logits (fp32) in one
    pass. The (R, K) comparison with the labels is a broadcast that inductor fuses into the loop,
    so it is never materialized.
    """
    x = _upcast(logits)
    is_pos = labels[:, None] == torch.arange(x.shape[1], device=x.device)
    valid = (labels >= 0)[:, None]
    alpha_pos, alpha_neg = _alpha_pos_neg(alpha)
    value, value_grad = _FUSED_TERMS[kind](torch.where(is_pos, x, -x), *params)
    loss = torch.where(valid, value * torch.where(is_pos, alpha_pos, alpha_neg), 0.0)
    loss = loss.sum() if reduce else loss
    if not with_grad:
        return loss, None
    # d/dx = y_s α_t d/dx_t with y_s = +1 for positives, -1 for negatives.
    return loss, torch.where(valid, value_grad * torch.where(is_pos, alpha_pos, -alpha_neg), 0.0)


def _positives(labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Row and class indices of the positive (anchor, class) pairs, each (P,)."""
    rows = torch.nonzero((labels >= 0) & (labels < num_classes)).squeeze(1)
    return rows, labels[rows]


def _labels_forward_eager(
    logits: Tensor, labels: Tensor, kind: str, params: Tuple[float, ...], alpha: float, reduce: bool
) -> Tensor:
    """
    The eager kernel's forward: every element as a negative, then the P positive elements
    overwritten by indexing, so no (R, K) target or mask is built.
    """
    term = _TERMS[kind][0]
    x = _upcast(logits)
    alpha_pos, alpha_neg = _alpha_pos_neg(alpha)
    valid = labels >= 0
    rows, classes = _positives(labels, x.shape[1])
    loss = term(-x, *params).mul_(alpha_neg)
    loss[rows, classes] = alpha_pos * term(x[rows, classes], *params)
    if reduce:
        # Summing the valid rows (not multiplying by a mask) keeps non-finite logits of ignored
        # rows out of the result.
        return loss.sum(dim=1)[valid].sum()
    return loss.masked_fill_(~valid[:, None], 0.0)


def _labels_backward_eager(
    logits: Tensor,
    labels: Tensor,
    grad_out: Tensor,
    kind: str,
    params: Tuple[float, ...],
    alpha: float,
) -> Tensor:
    term_grad = _TERMS[kind][1]
    x = _upcast(logits)
    alpha_pos, alpha_neg = _alpha_pos_neg(alpha)
    rows, classes = _positives(labels, x.shape[1])
    grad_pos = alpha_pos * term_grad(x[rows, classes], *params)
    grad = term_grad(-x, *params).mul_(-alpha_neg)
    grad.masked_fill_(~(labels >= 0)[:, None], 0.0)
    grad[rows, classes] = grad_pos
    return grad.mul_(grad_out).to(logits.dtype)


# ---------------------------------------------------------------------------------------------
# Kernel dispatch
# ---------------------------------------------------------------------------------------------
# Each setting (loss, dtype, γ, α, β, reduction) is one compiled graph: γ stays a constant, so
# that γ = 2 becomes a multiplication (about 1.7x faster than a runtime exponent on CPU). Dynamo
# runs a function uncompiled after 8 graphs by default; a sweep over settings in one process
# (tests, ablations) may need more.
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable) -> Callable:
    compiled = torch.compile(fn)

    @functools.wraps(fn)
    def call(*args):
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            return compiled(*args)

    return call


def _rows_dynamic(tensor: Tensor) -> Tensor:
    """
    A view whose first dimension (the number of anchors, which changes with the image size) the
    compiler treats as symbolic, so one kernel serves every size; the others (K) stay static,
    which keeps the inner loop vectorized. A view, so the caller's tensor is left unmarked.
    """
    if tensor.dim() == 0:
        return tensor
    view = tensor.view(tensor.shape)
    torch._dynamo.maybe_mark_dynamic(view, 0)
    return view


def _try_compiled(fn: Callable, *args) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
    """
    ``fn(*args)`` compiled; None where compilation is unavailable on the device of the first
    tensor argument (warned once per device type, then the eager kernel is used).
    """
    device_type = next(arg for arg in args if isinstance(arg, Tensor)).device.type
    if device_type in _COMPILE_FAILED_DEVICES:
        return None
    try:
        return _compiled(fn)(*[_rows_dynamic(a) if isinstance(a, Tensor) else a for a in args])
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # inputs were validated before: this is a compile failure
        _COMPILE_FAILED_DEVICES.add(device_type)
        logger.warning(
            "torch.compile of the loss kernel failed on %s (%s: %s); using the eager closed form "
            "instead.",
            device_type,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        return None


def _labels_mean_divisor(logits: Tensor, labels: Tensor) -> Tensor:
    return (labels >= 0).sum() * logits.shape[1]


def _targets_mean_divisor(logits: Tensor, targets: Tensor) -> int:
    return logits.numel()


# For labels and for float targets: eager forward, eager backward, fused kernel, "mean" divisor.
_PATHS = {
    "labels": (_labels_forward_eager, _labels_backward_eager, _labels_fused, _labels_mean_divisor),
    "targets": (_targets_forward, _targets_backward, _targets_fused, _targets_mean_divisor),
}


class _ClosedFormLoss(torch.autograd.Function):
    """
    The loss with the closed-form gradient of appendix B. It saves its inputs only, except that
    the compiled kernel computes the gradient in the same pass as the loss (the exp and log are
    then evaluated once instead of twice) and keeps it until backward: one (R, K) fp32 tensor,
    the one backward would allocate anyway.
    """

    @staticmethod
    def forward(ctx, logits, target, path, kind, params, alpha, reduction, kernel):
        ctx.save_for_backward(logits, target)
        ctx.settings = (path, kind, params, alpha, reduction, kernel)
        eager_forward, _, fused, mean_divisor = _PATHS[path]
        reduce = reduction != "none"
        result = None
        if kernel == "compiled":
            with_grad = ctx.needs_input_grad[0]
            result = _try_compiled(fused, logits, target, kind, params, alpha, reduce, with_grad)
        if result is None:
            loss, ctx.precomputed_grad = (
                eager_forward(logits, target, kind, params, alpha, reduce),
                None,
            )
        else:
            loss, ctx.precomputed_grad = result
        return loss / mean_divisor(logits, target) if reduction == "mean" else loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, target = ctx.saved_tensors
        path, kind, params, alpha, reduction, kernel = ctx.settings
        _, eager_backward, fused, mean_divisor = _PATHS[path]
        if reduction == "mean":
            grad_out = grad_out / mean_divisor(logits, target)
        # Used once and released; a second backward (retain_graph=True) computes it again.
        grad, ctx.precomputed_grad = ctx.precomputed_grad, None
        if grad is None and kernel == "compiled":
            result = _try_compiled(
                fused, logits, target, kind, params, alpha, reduction != "none", True
            )
            grad = None if result is None else result[1]
        if grad is None:
            grad = eager_backward(logits, target, grad_out, kind, params, alpha)
        else:
            grad = grad.mul_(grad_out).to(logits.dtype)
        return grad, None, None, None, None, None, None, None


def _targets_loss(logits, targets, kind, params, alpha, reduction, kernel) -> Tensor:
    _check_logits(logits)
    _check_reduction(reduction)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}."
        )
    kernel = default_kernel() if kernel is None else check_kernel(kernel)
    if targets.requires_grad:
        # The closed form differentiates w.r.t. the logits only; let autograd trace the same
        # formula instead (it keeps its intermediates).
        loss = _targets_forward(logits, targets, kind, params, alpha, reduction != "none")
        return loss / logits.numel() if reduction == "mean" else loss
    return _ClosedFormLoss.apply(logits, targets, "targets", kind, params, alpha, reduction, kernel)


def _labels_loss(logits, labels, kind, params, alpha, reduction, kernel) -> Tensor:
    _check_labels(logits, labels)
    _check_reduction(reduction)
    kernel = default_kernel() if kernel is None else check_kernel(kernel)
    return _ClosedFormLoss.apply(logits, labels, "labels", kind, params, alpha, reduction, kernel)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    kernel: Optional[str] = None,
) -> Tensor:
    """
    The focal loss FL = -α_t (1 - p_t)^γ log(p_t), with the signature, semantics and results of
    ``fvcore.nn.sigmoid_focal_loss`` and ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        logits: float tensor of any shape; fp32, fp16 or bf16.
        targets: tensor of the shape of ``logits``: 1 for the positive class, 0 for the negative
            (values in between are accepted, as by fvcore).
        alpha: weight of the positives in [0, 1] (negatives get 1 - α); α < 0 turns it off.
        gamma: focusing parameter γ ≥ 0; γ = 0 gives α-balanced cross entropy, and with α < 0
            ``F.binary_cross_entropy_with_logits``.
        reduction: "none" | "mean" | "sum".
        kernel: "compiled" | "eager" | None (the environment variable, else "compiled").

    Returns:
        fp32 loss, of the shape of ``logits`` for "none", else a scalar.
    """
    params = (check_gamma(gamma),)
    return _targets_loss(logits, targets, "focal", params, check_alpha(alpha), reduction, kernel)


def sigmoid_focal_loss_from_labels(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    *,
    kernel: Optional[str] = None,
) -> Tensor:
    """
    The focal loss from class indices, without building a one-hot (R, K) tensor. Equals
    ``sigmoid_focal_loss`` on the one-hot targets of the non-ignored rows.

    Args:
        logits: (R, K) float tensor; fp32, fp16 or bf16.
        labels: (R,) int64: a class in [0, K), K for background, -1 for ignored rows, which
            contribute nothing (zeros for "none", and no gradient).
        alpha, gamma, kernel: as in :func:`sigmoid_focal_loss`.
        reduction: "none" | "mean" (over the elements of non-ignored rows) | "sum".

    Returns:
        fp32 loss: (R, K) for "none", else a scalar.
    """
    params = (check_gamma(gamma),)
    return _labels_loss(logits, labels, "focal", params, check_alpha(alpha), reduction, kernel)


def sigmoid_focal_loss_star(
    logits: Tensor,
    targets: Tensor,
    gamma: float,
    beta: float,
    alpha: float = 0.25,
    reduction: str = "none",
    *,
    kernel: Optional[str] = None,
) -> Tensor:
    """
    FL* (appendix A): -α_t log(sigmoid(γ x_t + β)) / γ with x_t = x (2 t - 1). With β = 0 it
    equals ``fvcore.nn.sigmoid_focal_loss_star``.

    Args:
        logits, targets, reduction, kernel: as in :func:`sigmoid_focal_loss`.
        gamma: γ > 0. The paper uses (γ, β) = (2, 1) and (4, 0).
        beta: β, any finite number.
        alpha: as in :func:`sigmoid_focal_loss`.

    Returns:
        fp32 loss, of the shape of ``logits`` for "none", else a scalar.
    """
    params = (check_star_gamma(gamma), check_beta(beta))
    return _targets_loss(
        logits, targets, "focal_star", params, check_alpha(alpha), reduction, kernel
    )


def sigmoid_focal_loss_star_from_labels(
    logits: Tensor,
    labels: Tensor,
    gamma: float,
    beta: float,
    alpha: float = 0.25,
    reduction: str = "sum",
    *,
    kernel: Optional[str] = None,
) -> Tensor:
    """
    FL* from class indices; see :func:`sigmoid_focal_loss_star` and
    :func:`sigmoid_focal_loss_from_labels` for the arguments.

    Returns:
        fp32 loss: (R, K) for "none", else a scalar.
    """
    params = (check_star_gamma(gamma), check_beta(beta))
    return _labels_loss(logits, labels, "focal_star", params, check_alpha(alpha), reduction, kernel)
