"""
Quality Focal Loss and Varifocal Loss: values and gradients against their papers' formulas written
here in float64, both kernels, soft and hard targets, extreme logits, gradcheck, errors.
"""

import pytest
import torch

from retinanet_fl.layers import closed_form
from retinanet_fl.layers.focal_loss import sigmoid_focal_loss
from retinanet_fl.layers.soft_focal_losses import quality_focal_loss, varifocal_loss

REDUCTIONS = ("none", "mean", "sum")


def qfl_reference(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """GFL eq. 5: -|y - σ|^β ((1 - y) log(1 - σ) + y log σ)."""
    sigma = torch.sigmoid(x)
    return -((y - sigma).abs() ** beta) * ((1 - y) * torch.log(1 - sigma) + y * torch.log(sigma))


def vfl_reference(x: torch.Tensor, q: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """VarifocalNet eq. 2: -q (q log p + (1 - q) log(1 - p)) if q > 0, else -α p^γ log(1 - p)."""
    p = torch.sigmoid(x)
    positive = -q * (q * torch.log(p) + (1 - q) * torch.log(1 - p))
    negative = -alpha * p**gamma * torch.log(1 - p)
    return torch.where(q > 0, positive, negative)


def soft_targets(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """Float64 targets in [0, 1]: mostly 0 (negatives), some exactly 1, the rest in between."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.rand(rows, columns, generator=generator, dtype=torch.float64)
    kind = torch.randint(0, 4, (rows, columns), generator=generator)
    targets[kind == 0] = 0.0
    targets[kind == 1] = 1.0
    targets[0, 0], targets[0, 1] = 0.0, 1.0
    return targets


def random_logits(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, columns, generator=generator, dtype=torch.float64) * 3


def value_and_grad(fn, logits: torch.Tensor, *args, **kwargs):
    """The loss and its gradient under a non-uniform upstream gradient (for "none")."""
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (grad,) = torch.autograd.grad(loss, x, upstream)
    return loss.detach(), grad


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@pytest.mark.parametrize("kernel", closed_form.KERNELS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_both_losses_match_their_formulas_float64(kernel, reduction):
    logits, targets = random_logits(40, 5), soft_targets(40, 5)
    cases = [
        (quality_focal_loss, (2.0,), lambda x: qfl_reference(x, targets, 2.0)),
        (varifocal_loss, (0.75, 2.0), lambda x: vfl_reference(x, targets, 0.75, 2.0)),
    ]
    for loss, params, reference in cases:
        ours = value_and_grad(loss, logits, targets, *params, reduction, kernel)
        expected = value_and_grad(lambda x: reduce(reference(x), reduction), logits)
        torch.testing.assert_close(ours[0], expected[0], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(ours[1], expected[1], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("beta", (0.0, 0.5, 1.0, 2.5))
def test_quality_focal_loss_other_betas(beta):
    logits, targets = random_logits(40, 5, seed=1), soft_targets(40, 5, seed=1)
    ours = value_and_grad(quality_focal_loss, logits, targets, beta, "sum", "eager")
    expected = value_and_grad(lambda x: qfl_reference(x, targets, beta).sum(), logits)
    torch.testing.assert_close(ours[0], expected[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(ours[1], expected[1], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("alpha, gamma", ((0.75, 0.0), (0.25, 1.0), (1.0, 0.5), (0.75, 3.0)))
def test_varifocal_loss_other_settings(alpha, gamma):
    logits, targets = random_logits(40, 5, seed=2), soft_targets(40, 5, seed=2)
    ours = value_and_grad(varifocal_loss, logits, targets, alpha, gamma, "sum", "eager")
    expected = value_and_grad(lambda x: vfl_reference(x, targets, alpha, gamma).sum(), logits)
    torch.testing.assert_close(ours[0], expected[0], rtol=1e-10, atol=0)
    torch.testing.assert_close(ours[1], expected[1], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("gamma", (0.0, 0.5, 1.0, 2.0, 5.0))
def test_quality_focal_with_hard_targets_is_focal_loss_without_alpha(gamma):
    logits = random_logits(40, 5, seed=3)
    hard = (soft_targets(40, 5, seed=3) > 0.5).double()
    ours = value_and_grad(quality_focal_loss, logits, hard, gamma, "none", "eager")
    focal = value_and_grad(sigmoid_focal_loss, logits, hard, -1.0, gamma, "none", "eager")
    torch.testing.assert_close(ours[0], focal[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(ours[1], focal[1], rtol=1e-12, atol=1e-15)


def test_varifocal_positive_weight_is_the_target_and_negatives_are_down_weighted():
    # q = 1: plain cross entropy -log p; q = 0: -α p^γ log(1 - p), smaller than CE.
    logits = torch.tensor([[-2.0, 0.0, 3.0]], dtype=torch.float64)
    ones, zeros = torch.ones_like(logits), torch.zeros_like(logits)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(varifocal_loss(logits, ones), -torch.log(p))
    torch.testing.assert_close(
        varifocal_loss(logits, zeros, 0.75, 2.0), -0.75 * p**2 * torch.log(1 - p)
    )


@pytest.mark.parametrize("kernel", closed_form.KERNELS)
def test_gradcheck_and_gradgradcheck(kernel):
    logits = random_logits(6, 4, seed=4).requires_grad_()
    targets = soft_targets(6, 4, seed=4)
    checks = {
        "varifocal": lambda x: varifocal_loss(x, targets, 0.75, 2.0, "none", kernel),
        "varifocal_sum": lambda x: varifocal_loss(x, targets, 0.5, 1.0, "sum", kernel),
        "quality_focal": lambda x: quality_focal_loss(x, targets, 2.0, "none", kernel),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (logits,)), name
        assert torch.autograd.gradgradcheck(fn, (logits,)), name


@pytest.mark.parametrize("kernel", closed_form.KERNELS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_extreme_logits_are_finite_and_correct(kernel, dtype):
    # Columns: x = +1e4 and -1e4; rows: targets 0, 0.25, 1.
    logits = torch.tensor([[1e4, -1e4]] * 3, dtype=dtype)
    targets = torch.tensor([[0.0] * 2, [0.25] * 2, [1.0] * 2], dtype=dtype)
    for name, fn in (
        ("quality_focal", lambda x: quality_focal_loss(x, targets, 2.0, "none", kernel)),
        ("varifocal", lambda x: varifocal_loss(x, targets, 0.75, 2.0, "none", kernel)),
    ):
        x = logits.clone().requires_grad_()
        value = fn(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert value.dtype == dtype and grad.dtype == dtype, name
        value, grad = value.float(), grad.float()
        assert torch.isfinite(value).all() and torch.isfinite(grad).all(), name
        # Confidently right (target 0 at -1e4, target 1 at +1e4): no loss, no gradient.
        assert value[0, 1] == 0 and grad[0, 1] == 0 and value[2, 0] == 0 and grad[2, 0] == 0, name
    # Confidently wrong, target 0 at +1e4: QFL = |0 - 1|^2 · 1e4, slope 1 (times the upstream
    # 0.5 of value_and_grad); VFL = .75 · 1e4.
    logits, targets = logits.float().round(decimals=-4), targets.float()
    qfl_value, qfl_grad = value_and_grad(quality_focal_loss, logits, targets, kernel=kernel)
    assert qfl_value[0, 0] == pytest.approx(1e4) and qfl_grad[0, 0] == pytest.approx(0.5)
    vfl_value, _ = value_and_grad(varifocal_loss, logits, targets, kernel=kernel)
    assert vfl_value[0, 0] == pytest.approx(0.75e4)
    # Target .25 at +1e4: VFL = .25 · (.75 · 1e4) (the BCE with q is (1 - q) x for x -> inf).
    assert vfl_value[1, 0] == pytest.approx(0.25 * 0.75 * 1e4, rel=1e-3)


def test_compiled_kernel_equals_eager():
    logits = random_logits(300, 7, seed=5).float()
    targets = soft_targets(300, 7, seed=5).float()
    for fn in (quality_focal_loss, varifocal_loss):
        compiled = value_and_grad(fn, logits, targets, reduction="sum", kernel="compiled")
        assert "cpu" not in closed_form._COMPILE_FAILED_DEVICES, "torch.compile failed"
        eager = value_and_grad(fn, logits, targets, reduction="sum", kernel="eager")
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda x, t: quality_focal_loss(x, t, beta=-1.0),
            ValueError,
            r"beta must be a finite number >= 0.*got -1.0",
        ),
        (
            lambda x, t: varifocal_loss(x, t, alpha=float("nan")),
            ValueError,
            r"alpha must be a finite number >= 0 \(the weight of the negatives.*nan",
        ),
        (
            lambda x, t: varifocal_loss(x, t, gamma=-2.0),
            ValueError,
            r"gamma must be a finite number >= 0 \(the focusing exponent of the negatives.*-2.0",
        ),
        (
            lambda x, t: quality_focal_loss(x, t[:, :2]),
            ValueError,
            r"targets must have the shape of logits \(4, 3\), got \(4, 2\)",
        ),
        (lambda x, t: varifocal_loss(x, t, reduction="max"), ValueError, "Invalid reduction"),
        (lambda x, t: quality_focal_loss(x.long(), t), TypeError, "floating-point"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(random_logits(4, 3), soft_targets(4, 3))


@pytest.mark.parametrize("kernel", closed_form.KERNELS)
def test_no_rows_give_an_empty_or_zero_loss(kernel):
    logits = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.zeros(0, 3, dtype=torch.float64)
    for fn in (quality_focal_loss, varifocal_loss):
        assert fn(logits, targets, reduction="none", kernel=kernel).shape == (0, 3)
        total = fn(logits, targets, reduction="sum", kernel=kernel)
        (grad,) = torch.autograd.grad(total, logits)
        assert total.item() == 0 and grad.shape == (0, 3)
