"""
Functional classification losses of the paper (§3, appendix A and B): the focal loss, FL* and
α-balanced cross entropy, for float targets (a drop-in for torchvision's and fvcore's
``sigmoid_focal_loss``) and for integer class labels (the detector's path, no one-hot tensor).

Each loss is written once, as a function of the logits x and the targets t that returns the
elementwise loss and its derivative d/dx (the closed form of appendix B); integer labels become
t = [label == class] inside the kernel. A ``torch.autograd.Function`` evaluates both in one pass
and keeps only the gradient (one (R, K) tensor, which backward would allocate anyway) until
backward. Both are written with softplus / sigmoid of the logits (never ``log(sigmoid(x))``), from
one exp and one log1p, which keeps values and gradients finite for logits up to ±1e4 and any
γ ≥ 0, including γ < 1 at p_t → 1.

Two kernels run that same function:

* ``"compiled"`` (the default): ``torch.compile`` fuses it into one loop (C++ on CPU, Triton on
  GPU). γ, α and β are compiled in as constants (γ = 2 becomes a multiplication), so each new
  setting costs one compile (about 1.5 s on a CPU) the first time it is used in a process; the
  number of anchors is a symbolic size. Where compilation is impossible (no C++ compiler, an
  unsupported device) the eager kernel is used instead, with one warning.
* ``"eager"``: the same function as ordinary tensor operations, no compile step.

Dtypes: fp16 / bf16 / fp32 logits are computed in fp32 (fp64 in fp64). The float-target functions
return the loss in the dtype of the logits, as torchvision does; the label functions always
return fp32 (or fp64), because the detector sums ~10^5 anchors under mixed precision. The
gradient has the dtype of the logits. A second derivative (``create_graph=True``) is supported:
backward then evaluates the closed-form gradient with differentiable operations.
"""

import functools
import logging
import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "KERNELS",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "sigmoid_focal_loss_star",
    "sigmoid_focal_loss_star_from_labels",
]

logger = logging.getLogger(__name__)

KERNELS = ("compiled", "eager")
REDUCTIONS = ("none", "mean", "sum")

# Device types ("cpu", "cuda", ...) on which torch.compile failed once; they use the eager kernel.
_COMPILE_FAILED_DEVICES = set()


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
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
        raise ValueError(f"Invalid reduction {reduction!r}: must be one of {REDUCTIONS}.")


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


def _smallest_normal(x: Tensor) -> float:
    # torch.finfo(x.dtype).tiny, which TorchScript cannot compile; x is fp32 or fp64.
    return 2.2250738585072014e-308 if x.dtype == torch.float64 else 1.1754943508222875e-38


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
    ratio = p * one_minus_p / one_minus_p_t.clamp_min(_smallest_normal(x))
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


_FORMULAS = {"focal": _focal_formula, "focal_star": _focal_star_formula}


def _alpha_t(t: Tensor, alpha: float) -> Tensor:
    """α for positives, 1 - α for negatives (interpolated for soft targets)."""
    return alpha * t + (1 - alpha) * (1 - t)


# ---------------------------------------------------------------------------------------------
# The kernel: targets or labels -> (loss, gradient); the same function for both kernels.
# ---------------------------------------------------------------------------------------------
def _upcast(logits: Tensor) -> Tensor:
    """fp16 / bf16 / fp32 -> fp32; fp64 stays fp64 (gradcheck and reference comparisons)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _targets_and_mask(logits: Tensor, target: Tensor, from_labels: bool):
    """
    The targets t (R, K) in the computation dtype and the (R, 1) mask of non-ignored rows (None
    for float targets). For labels, t is a broadcast comparison that the compiler fuses into its
    loop, so it is never materialized there.
    """
    x = _upcast(logits)
    if not from_labels:
        return x, target.to(x.dtype), None
    classes = torch.arange(x.shape[1], device=x.device)
    return x, (target[:, None] == classes).to(x.dtype), (target >= 0)[:, None]


def _loss_and_grad(
    logits: Tensor,
    target: Tensor,
    from_labels: bool,
    kind: str,
    params: Tuple[float, ...],
    alpha: float,
    reduce: bool,
    with_grad: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    Args:
        logits: (R, ...) float logits.
        target: float targets shaped like ``logits``, or (R,) int64 labels (K = background,
            -1 = ignored) when ``from_labels``.
        kind: a key of ``_FORMULAS``; params: its (γ,) or (γ, β).
        alpha: α in [0, 1], or negative for none.
        reduce: return the sum instead of the elementwise loss.
        with_grad: also return d(summed loss)/d logits.

    Returns:
        the loss (elementwise or summed) and the gradient or None, in the computation dtype.
    """
    x, t, valid = _targets_and_mask(logits, target, from_labels)
    loss, grad = _FORMULAS[kind](x, t, *params)
    if alpha >= 0:
        weight = _alpha_t(t, alpha)
        loss, grad = loss * weight, grad * weight
    if valid is not None:
        # A select, not a product: non-finite logits of ignored rows stay out of the result.
        loss, grad = torch.where(valid, loss, 0.0), torch.where(valid, grad, 0.0)
    if reduce:
        # Accumulated in fp64 (MPS has none): the compiled loop sums ~10^6 terms sequentially
        # per thread, which in fp32 drifts by ~1e-5 relative.
        accumulator = x.dtype if x.device.type == "mps" else torch.float64
        loss = loss.sum(dtype=accumulator).to(x.dtype)
    return loss, (grad if with_grad else None)


# Each setting (path, loss, dtype, γ, α, β, reduction) is one compiled graph. Python floats are
# specialized explicitly: with torch 2.14's default (specialize_float=False) the compiler turns
# γ into a symbolic input, bakes the value of the first recompile into pow() without a guard, and
# silently reuses it for every later γ (pytorch/pytorch#194976; tests/layers/test_focal_loss.py keeps a
# reproduction). Specialized, γ is a guarded constant and γ = 2 becomes a multiplication (about
# 1.7x faster than a runtime exponent on CPU). Dynamo runs a function uncompiled after 8 graphs
# by default; a sweep over settings in one process (tests, ablations) needs more.
_COMPILE_CONFIG = {"specialize_float": True, "recompile_limit": 64}


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable) -> Callable:
    compiled = torch.compile(fn)

    @functools.wraps(fn)
    def call(*args):
        with torch._dynamo.config.patch(**_COMPILE_CONFIG):
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


def _run_kernel(kernel: str, *args) -> Tuple[Tensor, Optional[Tensor]]:
    """
    ``_loss_and_grad(*args)`` with ``kernel``. A compile failure on a device type (inputs were
    validated before) is warned once and that device uses the eager kernel from then on.
    """
    device_type = args[0].device.type
    if kernel == "compiled" and device_type not in _COMPILE_FAILED_DEVICES:
        try:
            return _compiled(_loss_and_grad)(
                *[_rows_dynamic(a) if isinstance(a, Tensor) else a for a in args]
            )
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            _COMPILE_FAILED_DEVICES.add(device_type)
            logger.warning(
                "torch.compile of the loss kernel failed on %s (%s: %s); using the eager closed "
                "form instead.",
                device_type,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    return _eager_in_chunks(*args)


# Elements per chunk of the eager kernel: its ~12 temporaries then stay in the CPU's cache.
_EAGER_CHUNK_ELEMENTS = 2**18


def _eager_in_chunks(
    logits: Tensor, target: Tensor, *settings
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    The eager kernel: ``_loss_and_grad`` over blocks of rows, written into preallocated outputs,
    so that its temporaries take a chunk's memory instead of the whole tensor's.
    """
    row_elements = max(1, logits[0].numel()) if logits.dim() else 1
    chunk_rows = max(1, _EAGER_CHUNK_ELEMENTS // row_elements)
    if logits.dim() == 0 or len(logits) <= chunk_rows:
        return _loss_and_grad(logits, target, *settings)
    reduce, with_grad = settings[-2:]
    dtype = _upcast(logits).dtype
    loss = torch.zeros((), dtype=dtype, device=logits.device) if reduce else None
    if not reduce:
        loss = torch.empty(logits.shape, dtype=dtype, device=logits.device)
    grad = torch.empty(logits.shape, dtype=dtype, device=logits.device) if with_grad else None
    for start in range(0, len(logits), chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk_loss, chunk_grad = _loss_and_grad(logits[rows], target[rows], *settings)
        if reduce:
            loss += chunk_loss
        else:
            loss[rows] = chunk_loss
        if with_grad:
            grad[rows] = chunk_grad
    return loss, grad


def _mean_divisor(logits: Tensor, target: Tensor, from_labels: bool):
    """The element count "mean" divides by: every element, or those of non-ignored rows."""
    return (target >= 0).sum() * logits.shape[1] if from_labels else logits.numel()


class _ClosedFormLoss(torch.autograd.Function):
    """
    The loss with the closed-form gradient of appendix B, computed in the same pass as the loss
    and kept until backward. A second backward through the same graph (retain_graph=True)
    computes it again; under create_graph=True it is computed with differentiable operations.
    """

    @staticmethod
    def forward(ctx, logits, target, from_labels, kind, params, alpha, reduction, kernel):
        settings = (from_labels, kind, params, alpha, reduction != "none")
        loss, ctx.grad = _run_kernel(kernel, logits, target, *settings, ctx.needs_input_grad[0])
        ctx.save_for_backward(logits, target)
        ctx.settings, ctx.kernel, ctx.reduction = settings, kernel, reduction
        if reduction == "mean":
            loss = loss / _mean_divisor(logits, target, from_labels)
        return loss if from_labels else loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        logits, target = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None  # used once and released
        if ctx.reduction == "mean":
            grad_out = grad_out / _mean_divisor(logits, target, ctx.settings[0])
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable
            grad = _loss_and_grad(logits, target, *ctx.settings, True)[1] * grad_out
        else:
            if grad is None:
                grad = _run_kernel(ctx.kernel, logits, target, *ctx.settings, True)[1]
            grad = grad.mul_(grad_out)  # in place: no second (R, K) tensor
        return grad.to(logits.dtype), None, None, None, None, None, None, None


def _closed_form_loss(logits, target, from_labels, kind, params, alpha, reduction, kernel):
    _check_reduction(reduction)
    kernel = check_kernel(kernel)
    if not from_labels and target.requires_grad:
        # The closed form differentiates w.r.t. the logits only; let autograd trace the same
        # formula instead (it keeps its intermediates).
        settings = (False, kind, params, alpha, reduction != "none", False)
        loss, _ = _loss_and_grad(logits, target, *settings)
        loss = loss / logits.numel() if reduction == "mean" else loss
        return loss.to(logits.dtype)
    return _ClosedFormLoss.apply(logits, target, from_labels, kind, params, alpha, reduction, kernel)


def _scripted_loss(loss: Tensor, t: Tensor, alpha: float, reduction: str) -> Tensor:
    """α weighting and reduction for the TorchScript versions of the float-target losses."""
    if alpha >= 0:
        loss = loss * _alpha_t(t, alpha)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError("Invalid reduction " + reduction + ": must be 'none', 'mean' or 'sum'.")
    return loss


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
        x = _upcast(logits)
        t = targets.to(x.dtype)
        loss = _scripted_loss(_focal_formula(x, t, gamma)[0], t, alpha, reduction)
        return loss.to(logits.dtype)
    _check_targets(logits, targets)
    params = (check_gamma(gamma),)
    return _closed_form_loss(
        logits, targets, False, "focal", params, check_alpha(alpha), reduction, kernel
    )


def sigmoid_focal_loss_from_labels(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
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
        alpha, gamma, kernel: as in :func:`sigmoid_focal_loss`.
        reduction: "none" | "mean" (over the elements of non-ignored rows) | "sum".

    Returns:
        fp32 loss (fp64 for fp64 logits): (R, K) for "none", else a scalar.
    """
    _check_labels(logits, labels)
    params = (check_gamma(gamma),)
    return _closed_form_loss(
        logits, labels, True, "focal", params, check_alpha(alpha), reduction, kernel
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
        x = _upcast(logits)
        t = targets.to(x.dtype)
        loss = _scripted_loss(_focal_star_formula(x, t, gamma, beta)[0], t, alpha, reduction)
        return loss.to(logits.dtype)
    _check_targets(logits, targets)
    params = (check_star_gamma(gamma), check_beta(beta))
    return _closed_form_loss(
        logits, targets, False, "focal_star", params, check_alpha(alpha), reduction, kernel
    )


def sigmoid_focal_loss_star_from_labels(
    logits: Tensor,
    labels: Tensor,
    gamma: float,
    beta: float,
    alpha: float = 0.25,
    reduction: str = "sum",
    kernel: str = "compiled",
) -> Tensor:
    """
    FL* from class indices; see :func:`sigmoid_focal_loss_star` and
    :func:`sigmoid_focal_loss_from_labels` for the arguments.

    Returns:
        fp32 loss (fp64 for fp64 logits): (R, K) for "none", else a scalar.
    """
    _check_labels(logits, labels)
    params = (check_star_gamma(gamma), check_beta(beta))
    return _closed_form_loss(
        logits, labels, True, "focal_star", params, check_alpha(alpha), reduction, kernel
    )
