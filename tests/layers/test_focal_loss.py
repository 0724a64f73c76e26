"""
Functional losses: agreement with torchvision, fvcore and float64 formulas for both kernels,
independence of the call history, gradients (first and second), TorchScript, dtypes, extremes.
"""

import functools
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss as fvcore_focal_loss
from fvcore.nn import sigmoid_focal_loss_star as fvcore_focal_loss_star
from torchvision.ops import sigmoid_focal_loss as torchvision_focal_loss

from retinanet_fl.layers import closed_form
from retinanet_fl.layers.focal_loss import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_from_labels,
)

GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
ALPHAS = (-1.0, 0.25, 0.75)
REDUCTIONS = ("none", "mean", "sum")
NUM_CLASSES = 7
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@pytest.fixture(params=closed_form.KERNELS)
def kernel(request) -> str:
    return request.param


def with_kernel(kernel: str):
    """The four public losses with ``kernel`` bound."""
    return (
        functools.partial(sigmoid_focal_loss, kernel=kernel),
        functools.partial(sigmoid_focal_loss_from_labels, kernel=kernel),
        functools.partial(sigmoid_focal_loss_star, kernel=kernel),
        functools.partial(sigmoid_focal_loss_star_from_labels, kernel=kernel),
    )


def random_labels(num_anchors: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> torch.Tensor:
    """Labels in [-1, K] with every kind present: classes, background (K) and ignored (-1)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, num_classes + 1, (num_anchors,), generator=generator)
    labels[:3] = torch.tensor([-1, num_classes, 0])
    return labels


def one_hot(labels: torch.Tensor, num_classes: int, dtype=torch.float64) -> torch.Tensor:
    valid = labels >= 0
    targets = torch.zeros(len(labels), num_classes, dtype=dtype, device=labels.device)
    targets[valid] = F.one_hot(labels[valid], num_classes + 1)[:, :num_classes].to(dtype)
    return targets


def random_logits(*shape, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * 3).to(dtype)


def value_and_grad(fn, logits: torch.Tensor, *args, **kwargs):
    logits = logits.detach().clone().requires_grad_()
    loss = fn(logits, *args, **kwargs)
    # A non-uniform upstream gradient for "none", so every element's gradient is checked.
    if loss.dim() == 0:
        upstream = torch.ones((), dtype=loss.dtype, device=loss.device)
    else:
        upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
        upstream = upstream.reshape(loss.shape)
    (grad,) = torch.autograd.grad(loss, logits, upstream)
    return loss.detach(), grad


def assert_norm_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    actual, expected = actual.double(), expected.double()
    error = torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)
    assert error <= rtol, f"relative error {error:.3g} > {rtol}"


@pytest.mark.parametrize("gamma, alpha", list(itertools.product(GAMMAS, ALPHAS)))
def test_matches_torchvision_values_and_gradients_float64(gamma, alpha, kernel):
    focal, *_ = with_kernel(kernel)
    logits = random_logits(40, NUM_CLASSES)
    targets = one_hot(random_labels(40), NUM_CLASSES)
    for reduction in REDUCTIONS:
        ours = value_and_grad(focal, logits, targets, alpha, gamma, reduction)
        reference = value_and_grad(torchvision_focal_loss, logits, targets, alpha, gamma, reduction)
        torch.testing.assert_close(ours[0], reference[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(ours[1], reference[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma, alpha", list(itertools.product(GAMMAS, ALPHAS)))
def test_matches_fvcore_values_and_gradients(gamma, alpha, kernel):
    # fvcore casts its inputs to fp32 (`inputs.float()`), so its results carry fp32 rounding;
    # compared over the whole tensor, ours (float64) agree to 1e-6 relative.
    focal, *_ = with_kernel(kernel)
    logits = random_logits(40, NUM_CLASSES)
    targets = one_hot(random_labels(40), NUM_CLASSES)
    for reduction in REDUCTIONS:
        ours = value_and_grad(focal, logits, targets, alpha, gamma, reduction)
        reference = value_and_grad(fvcore_focal_loss, logits, targets, alpha, gamma, reduction)
        assert_norm_close(ours[0], reference[0], rtol=1e-6)
        assert_norm_close(ours[1], reference[1], rtol=1e-6)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_soft_targets_match_torchvision(gamma, kernel):
    focal, *_ = with_kernel(kernel)
    logits = random_logits(30, 4)
    targets = torch.rand(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = value_and_grad(focal, logits, targets, 0.25, gamma, "none")
    reference = value_and_grad(torchvision_focal_loss, logits, targets, 0.25, gamma, "none")
    torch.testing.assert_close(ours[0], reference[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-6, atol=1e-12)


def test_targets_that_require_grad_are_differentiated():
    logits = random_logits(10, 3)
    targets = torch.rand(10, 3, dtype=torch.float64, requires_grad=True)
    (ours,) = torch.autograd.grad(sigmoid_focal_loss(logits, targets, reduction="sum"), targets)
    (reference,) = torch.autograd.grad(
        torchvision_focal_loss(logits, targets, reduction="sum"), targets
    )
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
def test_gradcheck_and_gradgradcheck(gamma, kernel):
    # Second derivatives (create_graph=True) are supported: torchvision's loss has them.
    focal, focal_labels, star, star_labels = with_kernel(kernel)
    logits = random_logits(6, 4).requires_grad_()
    labels = torch.tensor([0, 3, 4, -1, 2, 4])
    soft_targets = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    checks = {
        "labels": lambda x: focal_labels(x, labels, 0.25, gamma, "none"),
        "labels_mean": lambda x: focal_labels(x, labels, 0.75, gamma, "mean"),
        "soft_targets": lambda x: focal(x, soft_targets, 0.25, gamma, "none"),
        "star_labels": lambda x: star_labels(x, labels, gamma + 1, 1.0, 0.25, "sum"),
        "star_targets": lambda x: star(x, soft_targets, gamma + 1, -0.5),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (logits,)), name
        assert torch.autograd.gradgradcheck(fn, (logits,)), name


def test_second_derivative_matches_torchvision(kernel):
    focal, *_ = with_kernel(kernel)
    logits = random_logits(30, NUM_CLASSES)
    targets = one_hot(random_labels(30), NUM_CLASSES)
    hessian_diagonals = []
    for fn in (focal, torchvision_focal_loss):
        x = logits.clone().requires_grad_()
        (grad,) = torch.autograd.grad(fn(x, targets, 0.25, 2.0, "sum"), x, create_graph=True)
        hessian_diagonals.append(torch.autograd.grad(grad.sum(), x)[0])
    torch.testing.assert_close(*hessian_diagonals, rtol=1e-6, atol=1e-12)


def test_gradient_is_appendix_b_formula(kernel):
    focal, *_ = with_kernel(kernel)
    logits = random_logits(50, NUM_CLASSES)
    labels = random_labels(50)
    targets = one_hot(labels, NUM_CLASSES)
    gamma, alpha = 2.0, 0.25
    _, grad = value_and_grad(focal, logits, targets, alpha, gamma, "sum")
    # dFL/dx = y_s α_t (1 - p_t)^γ (γ p_t log(p_t) + p_t - 1), y_s = ±1.
    sign = 2 * targets - 1
    p_t = torch.sigmoid(sign * logits)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    expected = sign * alpha_t * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("star", (False, True))
def test_labels_path_equals_one_hot_path(reduction, star, kernel):
    focal, focal_labels, star_dense, star_labels = with_kernel(kernel)
    logits = random_logits(60, NUM_CLASSES)
    labels = random_labels(60)
    valid = labels >= 0
    targets = one_hot(labels, NUM_CLASSES)
    if star:

        def from_labels(x):
            return star_labels(x, labels, 4.0, 0.0, 0.25, reduction)

        def dense(x):
            return star_dense(x[valid], targets[valid], 4.0, 0.0, 0.25, reduction)

    else:

        def from_labels(x):
            return focal_labels(x, labels, 0.25, 2.0, reduction)

        def dense(x):
            return focal(x[valid], targets[valid], 0.25, 2.0, reduction)

    value, grad = value_and_grad(from_labels, logits)
    expected_value, expected_grad = value_and_grad(dense, logits)
    if reduction == "none":
        torch.testing.assert_close(value[valid], expected_value, rtol=1e-12, atol=0)
        assert (value[~valid] == 0).all()
    else:
        torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=0)
    if reduction != "none":  # the upstream gradients differ in layout for "none"
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)


def test_ignored_rows_contribute_nothing(kernel):
    _, focal_labels, _, _ = with_kernel(kernel)
    logits = random_logits(20, NUM_CLASSES, dtype=torch.float32)
    labels = random_labels(20)
    ignored = labels == -1
    poisoned = logits.clone()
    poisoned[ignored] = float("nan")
    poisoned[ignored.nonzero()[0]] = float("inf")
    for kernel_input in (logits, poisoned):
        value, grad = value_and_grad(focal_labels, kernel_input, labels)
        assert torch.isfinite(value)
        assert (grad[ignored] == 0).all()
        assert (grad[~ignored] != 0).all()
    clean = focal_labels(logits, labels)
    torch.testing.assert_close(focal_labels(poisoned, labels), clean)
    # Changing the logits of ignored rows changes nothing.
    shifted = logits.clone()
    shifted[ignored] += 5
    assert focal_labels(shifted, labels) == clean


@pytest.mark.parametrize("alpha", ALPHAS)
def test_focal_star_matches_appendix_a(alpha, kernel):
    _, _, star, _ = with_kernel(kernel)
    logits = random_logits(30, NUM_CLASSES)
    targets = one_hot(random_labels(30), NUM_CLASSES)
    for gamma, beta in ((2.0, 1.0), (4.0, 0.0), (0.5, -2.0)):
        value, grad = value_and_grad(star, logits, targets, gamma, beta, alpha, "sum")
        sign = 2 * targets - 1
        p_star_t = torch.sigmoid(gamma * sign * logits + beta)
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets) if alpha >= 0 else 1.0
        expected = (-alpha_t * torch.log(p_star_t) / gamma).sum()
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
        # Appendix B: dFL*/dx = y_s (p*_t - 1), times α_t.
        torch.testing.assert_close(grad, sign * alpha_t * (p_star_t - 1), rtol=1e-10, atol=1e-12)
    # With β = 0, fvcore's FL* (which computes in fp32).
    value, grad = value_and_grad(star, logits, targets, 3.0, 0.0, alpha, "none")
    expected_value, expected_grad = value_and_grad(
        fvcore_focal_loss_star, logits, targets, alpha, 3.0
    )
    assert_norm_close(value, expected_value, rtol=1e-6)
    assert_norm_close(grad, expected_grad, rtol=1e-6)


def test_gamma_zero_is_cross_entropy(kernel):
    focal, *_ = with_kernel(kernel)
    logits = random_logits(25, NUM_CLASSES)
    targets = one_hot(random_labels(25), NUM_CLASSES)
    for reduction in REDUCTIONS:
        value, grad = value_and_grad(focal, logits, targets, -1, 0.0, reduction)
        expected = value_and_grad(
            F.binary_cross_entropy_with_logits, logits, targets, reduction=reduction
        )
        torch.testing.assert_close(value, expected[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, expected[1], rtol=1e-12, atol=0)
    # α-balanced: each element weighted by α_t.
    alpha_t = 0.75 * targets + 0.25 * (1 - targets)
    value = focal(logits, targets, 0.75, 0.0, "none")
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * alpha_t
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("gamma", GAMMAS)
def test_extreme_logits_finite_and_correct(dtype, gamma, kernel):
    # Rows labelled 0 and 1. Column 0: confidently right at ±1e4 (a positive, then a negative);
    # column 1: confidently wrong (a negative, then a positive); column 2: moderate.
    focal, focal_labels, _, star_labels = with_kernel(kernel)
    logits = torch.tensor([[1e4, 1e4, 3.0], [-1e4, -1e4, -3.0]]).to(dtype)
    labels = torch.tensor([0, 1])
    targets = one_hot(labels, 3, dtype)
    alpha = 0.25
    cases = {
        # The label path returns fp32 (the detector sums many anchors); the float-target path
        # returns the dtype of the logits, as torchvision does.
        "labels": (lambda x: focal_labels(x, labels, alpha, gamma, "none"), torch.float32),
        "targets": (lambda x: focal(x, targets, alpha, gamma, "none"), dtype),
    }
    for name, (fn, value_dtype) in cases.items():
        x = logits.clone().requires_grad_()
        value = fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
        value = value.detach().float()
        assert fn(x).dtype == value_dtype and grad.dtype == dtype, name
        assert torch.isfinite(value).all() and torch.isfinite(grad.float()).all(), name
        # Confidently right: no loss, no gradient. Confidently wrong: α_t |x| and slope ±α_t.
        assert (value[:, 0] == 0).all() and (grad[:, 0] == 0).all(), name
        assert float(value[0, 1]) == pytest.approx((1 - alpha) * 1e4, rel=1e-2), name
        assert float(value[1, 1]) == pytest.approx(alpha * 1e4, rel=1e-2), name
        assert float(grad[0, 1]) == pytest.approx(1 - alpha, rel=1e-6), name
        assert float(grad[1, 1]) == pytest.approx(-alpha, rel=1e-6), name
    star_value, star_grad = value_and_grad(
        lambda x: star_labels(x, labels, max(gamma, 0.5), 1.0, alpha, "none"), logits
    )
    assert torch.isfinite(star_value).all() and torch.isfinite(star_grad.float()).all()


def test_half_precision_matches_fp32(kernel):
    focal, focal_labels, _, _ = with_kernel(kernel)
    logits = random_logits(50, NUM_CLASSES, dtype=torch.float32)
    labels = random_labels(50)
    reference = focal_labels(logits.half().float(), labels)
    value, grad = value_and_grad(focal_labels, logits.half(), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=0)
    assert grad.dtype == torch.float16
    # The float-target path computes in fp32 and rounds the result to the input dtype.
    targets = one_hot(labels, NUM_CLASSES, torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        expected = focal(logits.to(dtype).float(), targets, reduction="sum").to(dtype)
        assert focal(logits.to(dtype), targets.to(dtype), reduction="sum") == expected


def test_gradient_is_released_after_use_and_recomputed(kernel):
    _, focal_labels, _, _ = with_kernel(kernel)
    logits = random_logits(30, NUM_CLASSES, dtype=torch.float32)
    labels = random_labels(30)
    x = logits.clone().requires_grad_()
    loss = focal_labels(x, labels)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x, torch.tensor(2.0))
    torch.testing.assert_close(second, 2 * first)
    # Without grad, only the loss, and the same one.
    with torch.no_grad():
        assert focal_labels(x, labels) == loss.detach()


def test_compiled_kernel_equals_eager():
    logits = random_logits(300, NUM_CLASSES, dtype=torch.float32)
    labels = random_labels(300)
    compiled = value_and_grad(sigmoid_focal_loss_from_labels, logits, labels, kernel="compiled")
    assert "cpu" not in closed_form._COMPILE_FAILED_DEVICES, "torch.compile failed on this machine"
    eager = value_and_grad(sigmoid_focal_loss_from_labels, logits, labels, kernel="eager")
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-7)


def history_settings():
    """
    16 settings that together take every γ, α, path, reduction and row count of the grid (a
    full product would be 120 compiles).
    """
    paths, reductions, rows = ("targets", "labels"), ("sum", "none"), (50, 173)
    return [
        (GAMMAS[i % 5], ALPHAS[i % 3], paths[i % 2], reductions[(i // 2) % 2], rows[(i // 4) % 2])
        for i in range(16)
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_results_do_not_depend_on_earlier_calls(kernel, device):
    # A γ/α sweep in one process, in two shuffled orders, each call against torchvision in
    # float64: the compiled kernel once returned the first recompiled γ's loss for every later γ.
    focal, focal_labels, _, _ = with_kernel(kernel)
    settings = history_settings()
    # First a plain γ sweep per path (a Figure-1 style loop), then the grid in two orders.
    order = [(gamma, 0.25, path, "sum", 173) for path in ("targets", "labels") for gamma in GAMMAS]
    order += random.Random(0).sample(settings, len(settings))
    order += random.Random(1).sample(settings, len(settings))
    for gamma, alpha, path, reduction, num_rows in order:
        labels = random_labels(num_rows, seed=num_rows).to(device)
        logits = random_logits(num_rows, NUM_CLASSES, dtype=torch.float32, seed=num_rows)
        logits = logits.to(device)
        valid = labels >= 0
        targets = one_hot(labels, NUM_CLASSES, torch.float32)
        if path == "labels":
            ours = value_and_grad(focal_labels, logits, labels, alpha, gamma, reduction)
        else:
            ours = value_and_grad(focal, logits[valid], targets[valid], alpha, gamma, reduction)
        reference = value_and_grad(
            torchvision_focal_loss,
            logits[valid].double(),
            targets[valid].double(),
            alpha,
            gamma,
            reduction,
        )
        setting = f"gamma={gamma} alpha={alpha} {path} {reduction} R={num_rows}"
        value, grad = ours[0].double(), ours[1].double()
        if path == "labels":
            value = value[valid] if reduction == "none" else value
            assert (grad[~valid] == 0).all(), setting
            grad = grad[valid]
        assert_norm_close(value, reference[0], rtol=1e-5)
        if reduction == "sum":  # "none" weights the elements in a layout that differs
            assert_norm_close(grad, reference[1], rtol=1e-5)


def test_float_target_losses_are_scriptable():
    focal = torch.jit.script(sigmoid_focal_loss)
    star = torch.jit.script(sigmoid_focal_loss_star)
    logits = random_logits(20, NUM_CLASSES)
    targets = one_hot(random_labels(20), NUM_CLASSES)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(
            focal(logits, targets, 0.25, 2.0, reduction),
            torchvision_focal_loss(logits, targets, 0.25, 2.0, reduction),
            rtol=1e-6,
            atol=0,
        )
        expected = fvcore_focal_loss_star(logits, targets, 0.25, 3.0, reduction)
        assert_norm_close(star(logits, targets, 3.0, 0.0, 0.25, reduction), expected, rtol=1e-6)
    assert focal(logits.half(), targets.half()).dtype == torch.float16
    with pytest.raises(Exception, match="Invalid reduction"):
        focal(logits, targets, 0.25, 2.0, "avg")


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda x, y, t: sigmoid_focal_loss(x, t, gamma=-1.0),
            "gamma must be a finite number >= 0",
        ),
        (lambda x, y, t: sigmoid_focal_loss(x, t, alpha=1.5), r"alpha must be in \[0, 1\]"),
        (lambda x, y, t: sigmoid_focal_loss(x, t, reduction="avg"), "Invalid reduction 'avg'"),
        (lambda x, y, t: sigmoid_focal_loss(x, t[:1]), "targets must have the shape"),
        (lambda x, y, t: sigmoid_focal_loss(x, t, kernel="fast"), "kernel must be one of"),
        (lambda x, y, t: sigmoid_focal_loss_star(x, t, 0.0, 1.0), "must be a finite number > 0"),
        (lambda x, y, t: sigmoid_focal_loss_star(x, t, 2.0, float("inf")), "beta of FL"),
        (lambda x, y, t: sigmoid_focal_loss_from_labels(x, y + 5), r"labels must lie in \[-1, 3\]"),
        (lambda x, y, t: sigmoid_focal_loss_from_labels(x, y.int()), "int64 tensor of shape"),
        (lambda x, y, t: sigmoid_focal_loss_from_labels(x[0], y), r"shape \(R, K\)"),
        (lambda x, y, t: sigmoid_focal_loss_from_labels(x.long(), y), "floating-point"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    logits = torch.zeros(2, 3)
    labels = torch.tensor([0, 3])
    targets = torch.zeros(2, 3)
    with pytest.raises((ValueError, TypeError), match=message):
        call(logits, labels, targets)
