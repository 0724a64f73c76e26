"""
The machinery that evaluates a loss given as a closed form: a function of the logits x and the
(soft) targets t that returns the elementwise loss and its derivative d/dx. A
``torch.autograd.Function`` evaluates both in one pass and keeps only the gradient (one (R, K)
tensor, which backward would allocate anyway) until backward; integer labels (K = background,
-1 = ignored) become t = [label == class] inside the kernel, never a one-hot tensor.

A loss is elementwise (loss shaped like the logits: the sigmoid losses) or per row (one value per
row of (R, C) logits: the softmax loss, whose α weighting depends on the row's label and which
therefore applies it inside its formula).

Two kernels run the same function: ``"compiled"`` (``torch.compile`` fuses it into one loop, C++
on CPU and Triton on GPU; float parameters are compiled in as guarded constants, so each new
setting costs one compile; where compiling fails, the eager kernel is used with one warning) and
``"eager"`` (plain tensor operations over blocks of rows). Under ``create_graph=True`` backward
evaluates the gradient with differentiable operations, so second derivatives work.
"""

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "KERNELS",
    "Alpha",
    "ClosedFormLoss",
    "check_kernel",
    "closed_form_loss",
    "scripted_loss",
    "smallest_normal",
    "upcast",
]

logger = logging.getLogger(__name__)

KERNELS = ("compiled", "eager")
REDUCTIONS = ("none", "mean", "sum")

# Device types ("cpu", "cuda", ...) on which torch.compile failed once; they use the eager kernel.
_COMPILE_FAILED_DEVICES = set()


def check_kernel(kernel: str, name: str = "kernel") -> str:
    """Returns ``kernel`` if it is one of KERNELS, else raises an error naming ``name``."""
    if kernel not in KERNELS:
        raise ValueError(f"{name} must be one of {KERNELS}, got {kernel!r}.")
    return kernel


# α of the elementwise losses: a float (negative: no α weighting), or a (K,) tensor of per-class
# α_c, one per column of the (R, K) logits.
Alpha = Union[float, Tensor]


@dataclass(frozen=True)
class ClosedFormLoss:
    """
    A loss given as a closed form, with its settings. The compiled kernel takes it as an input:
    its fields become guards, so each new value of a float compiles once.

    Attributes:
        formula: ``formula(x, t, *params)`` → the loss and its derivative w.r.t. x (shaped like
            x), without α; the loss is elementwise (shaped like x) or per row ((R,), with
            ``per_row``).
        params: the formula's parameters, e.g. (γ,), (γ, β), or (α_t of each label, γ) for a
            formula that weights its rows itself.
        alpha: the α weighting of an elementwise loss (see ``Alpha``); negative for none.
        from_labels: the targets are (R,) int64 labels (K = background, -1 = ignored) instead of
            floats shaped like the logits.
        per_row: the loss has one value per row; "mean" divides by the (non-ignored) rows.
        reduction: "none" | "mean" | "sum".
        kernel: "compiled" | "eager".
    """

    formula: Callable[..., Tuple[Tensor, Tensor]]
    params: Tuple[Any, ...] = ()
    alpha: Alpha = -1.0
    from_labels: bool = False
    per_row: bool = False
    reduction: str = "none"
    kernel: str = "compiled"

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"Invalid reduction {self.reduction!r}: must be one of {REDUCTIONS}.")
        check_kernel(self.kernel)


def _alpha_t(t: Tensor, alpha: float) -> Tensor:
    """
    α for positives, 1 - α for negatives (interpolated for soft targets). Annotated as a float
    for TorchScript (the scripted losses); the kernels also pass a (K,) tensor of α_c, one per
    column.
    """
    return alpha * t + (1 - alpha) * (1 - t)


def smallest_normal(x: Tensor) -> float:
    """``torch.finfo(x.dtype).tiny``, which TorchScript cannot compile; x is fp32 or fp64."""
    return 2.2250738585072014e-308 if x.dtype == torch.float64 else 1.1754943508222875e-38


def upcast(logits: Tensor) -> Tensor:
    """fp16 / bf16 / fp32 -> fp32; fp64 stays fp64 (gradcheck and reference comparisons)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _targets_and_mask(logits: Tensor, target: Tensor, from_labels: bool):
    """
    The targets t (R, K) in the computation dtype and the (R,) mask of non-ignored rows (None
    for float targets). For labels, t is a broadcast comparison that the compiler fuses into its
    loop, so it is never materialized there.
    """
    x = upcast(logits)
    if not from_labels:
        return x, target.to(x.dtype), None
    classes = torch.arange(x.shape[1], device=x.device)
    return x, (target[:, None] == classes).to(x.dtype), target >= 0


def _loss_and_grad(
    logits: Tensor, target: Tensor, loss_fn: ClosedFormLoss, with_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    Args:
        logits: (R, ...) float logits.
        target: float targets shaped like ``logits``, or (R,) int64 labels.
        loss_fn: the loss; a reduction other than "none" returns the sum (the caller divides it
            for "mean").
        with_grad: also return d(summed loss)/d logits.

    Returns:
        the loss (elementwise or summed) and the gradient or None, in the computation dtype.
    """
    x, t, valid = _targets_and_mask(logits, target, loss_fn.from_labels)
    loss, grad = loss_fn.formula(x, t, *loss_fn.params)
    if isinstance(loss_fn.alpha, Tensor) or loss_fn.alpha >= 0:
        weight = _alpha_t(t, loss_fn.alpha)
        loss, grad = loss * weight, grad * weight
    if valid is not None:
        # A select, not a product: non-finite logits of ignored rows stay out of the result.
        loss = torch.where(valid.view(-1, *[1] * (loss.dim() - 1)), loss, 0.0)
        grad = torch.where(valid[:, None], grad, 0.0)
    if loss_fn.reduction != "none":
        # Accumulated in fp64 (MPS has none): the compiled loop sums ~10^6 terms sequentially
        # per thread, which in fp32 drifts by ~1e-5 relative.
        accumulator = x.dtype if x.device.type == "mps" else torch.float64
        loss = loss.sum(dtype=accumulator).to(x.dtype)
    return loss, (grad if with_grad else None)


# Each setting (path, loss, dtype, γ, α, β, reduction) is one compiled graph. Python floats are
# specialized explicitly: with torch 2.14's default (specialize_float=False) the compiler turns
# γ into a symbolic input, bakes the value of the first recompile into pow() without a guard, and
# silently reuses it for every later γ (pytorch/pytorch#194976; tests/layers/test_closed_form.py
# keeps a reproduction). Specialized, γ is a guarded constant and γ = 2 becomes a multiplication
# (about 1.7x faster than a runtime exponent on CPU). Dynamo runs a function uncompiled after 8
# graphs by default; a sweep over settings in one process (tests, ablations) needs more.
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


def _run_kernel(
    logits: Tensor, target: Tensor, loss_fn: ClosedFormLoss, with_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    ``_loss_and_grad`` with the loss's kernel. A compile failure on a device type (inputs were
    validated before) is warned once and that device uses the eager kernel from then on.
    """
    device_type = logits.device.type
    if loss_fn.kernel == "compiled" and device_type not in _COMPILE_FAILED_DEVICES:
        try:
            return _compiled(_loss_and_grad)(
                _rows_dynamic(logits), _rows_dynamic(target), loss_fn, with_grad
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
    return _eager_in_chunks(logits, target, loss_fn, with_grad)


# Elements per chunk of the eager kernel: its ~12 temporaries then stay in the CPU's cache.
_EAGER_CHUNK_ELEMENTS = 2**18


def _eager_in_chunks(
    logits: Tensor, target: Tensor, loss_fn: ClosedFormLoss, with_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """
    The eager kernel: ``_loss_and_grad`` over blocks of rows, written into preallocated outputs,
    so that its temporaries take a chunk's memory instead of the whole tensor's.
    """
    # From the shape, not logits[0]: a batch may have no rows.
    row_elements = max(1, math.prod(logits.shape[1:]))
    chunk_rows = max(1, _EAGER_CHUNK_ELEMENTS // row_elements)
    if logits.dim() == 0 or len(logits) <= chunk_rows:
        return _loss_and_grad(logits, target, loss_fn, with_grad)
    reduce = loss_fn.reduction != "none"
    dtype = upcast(logits).dtype
    loss = torch.zeros((), dtype=dtype, device=logits.device) if reduce else None
    grad = torch.empty(logits.shape, dtype=dtype, device=logits.device) if with_grad else None
    for start in range(0, len(logits), chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk_loss, chunk_grad = _loss_and_grad(logits[rows], target[rows], loss_fn, with_grad)
        if reduce:
            loss += chunk_loss
        else:
            if loss is None:  # elementwise (R, ...) or per row (R,): as the formula gives it
                loss = chunk_loss.new_empty((len(logits), *chunk_loss.shape[1:]))
            loss[rows] = chunk_loss
        if with_grad:
            grad[rows] = chunk_grad
    return loss, grad


def _mean_divisor(logits: Tensor, target: Tensor, loss_fn: ClosedFormLoss):
    """
    The count "mean" divides by: every element, or those of non-ignored rows; for a per-row
    loss, the (non-ignored) rows.
    """
    if loss_fn.from_labels:
        return (target >= 0).sum() * (1 if loss_fn.per_row else logits.shape[1])
    return len(logits) if loss_fn.per_row else logits.numel()


def _broadcast_to_grad(grad_out: Tensor, grad: Tensor) -> Tensor:
    """The upstream gradient of a per-row loss, (R,), as (R, 1) against the (R, C) gradient."""
    return grad_out.view(*grad_out.shape, *[1] * (grad.dim() - grad_out.dim()))


class _WithClosedFormGradient(torch.autograd.Function):
    """
    The loss with the closed-form gradient of appendix B, computed in the same pass as the loss
    and kept until backward. A second backward through the same graph (retain_graph=True)
    computes it again; under create_graph=True it is computed with differentiable operations.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, loss_fn: ClosedFormLoss) -> Tensor:
        loss, ctx.grad = _run_kernel(logits, target, loss_fn, ctx.needs_input_grad[0])
        ctx.save_for_backward(logits, target)
        ctx.loss_fn = loss_fn
        ctx.mean_divisor = None
        if loss_fn.reduction == "mean":
            ctx.mean_divisor = _mean_divisor(logits, target, loss_fn)
            loss = loss / ctx.mean_divisor
        return loss if loss_fn.from_labels else loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tuple[Optional[Tensor], None, None]:
        logits, target = ctx.saved_tensors
        grad, ctx.grad = ctx.grad, None  # used once and released
        if ctx.mean_divisor is not None:
            grad_out = grad_out / ctx.mean_divisor
        if torch.is_grad_enabled():  # create_graph=True: a gradient that is differentiable
            grad = _loss_and_grad(logits, target, ctx.loss_fn, True)[1]
            grad = grad * _broadcast_to_grad(grad_out, grad)
        else:
            if grad is None:
                grad = _run_kernel(logits, target, ctx.loss_fn, True)[1]
            grad = grad.mul_(_broadcast_to_grad(grad_out, grad))  # in place: no second (R, K)
        return grad.to(logits.dtype), None, None


def closed_form_loss(logits: Tensor, target: Tensor, loss_fn: ClosedFormLoss) -> Tensor:
    """
    ``loss_fn`` on ``logits`` and ``target`` with its closed-form gradient; "mean" divides by
    the elements of non-ignored rows (by the non-ignored rows for a per-row loss, which returns
    (R,) for "none").

    Args:
        logits: (R, ...) float logits.
        target: float targets shaped like ``logits``, or (R,) int64 labels (``from_labels``).
        loss_fn: the loss and its settings.

    Returns:
        the loss, fp32 or fp64 from labels, else in the dtype of ``logits``.
    """
    if not loss_fn.from_labels and target.requires_grad:
        # The closed form differentiates w.r.t. the logits only; let autograd trace the same
        # formula instead (it keeps its intermediates).
        loss, _ = _loss_and_grad(logits, target, loss_fn, False)
        if loss_fn.reduction == "mean":
            loss = loss / _mean_divisor(logits, target, loss_fn)
        return loss.to(logits.dtype)
    return _WithClosedFormGradient.apply(logits, target, loss_fn)


def scripted_loss(loss: Tensor, t: Tensor, alpha: float, reduction: str) -> Tensor:
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
