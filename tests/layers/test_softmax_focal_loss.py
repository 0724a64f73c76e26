"""
The softmax focal loss: a float64 reference formula, F.cross_entropy at γ = 0, both kernels,
gradients, independence of the call history, extremes and argument checks.
"""

import functools
import random

import pytest
import torch
import torch.nn.functional as F

from retinanet_fl.layers import closed_form
from retinanet_fl.layers.softmax_focal_loss import (
    softmax_focal_loss_from_labels,
    softmax_row_weights,
)
from tests.layers.test_focal_loss import (
    DEVICES,
    REDUCTIONS,
    assert_norm_close,
    random_labels,
    value_and_grad,
)

NUM_CLASSES = 6  # K; the logits have K + 1 columns
GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
ALPHAS = (-1.0, 0.25, 0.75, (0.1, 0.2, 0.3, 0.5, 0.8, 1.0))


@pytest.fixture(params=closed_form.KERNELS)
def kernel(request) -> str:
    return request.param


def random_logits(num_rows: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, NUM_CLASSES + 1, generator=generator, dtype=torch.float64)
    return (logits * 3).to(dtype)


def reference_loss(logits, labels, alpha, gamma, reduction):
    """-α_t (1 - p_t)^γ log(p_t) in float64 by autograd, written from the definition."""
    x = logits.double()
    valid = labels >= 0
    log_p_t = torch.log_softmax(x[valid], dim=1).gather(1, labels[valid, None]).squeeze(1)
    loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    if not (isinstance(alpha, float) and alpha < 0):
        alpha_c = torch.as_tensor(alpha, dtype=torch.float64).expand(NUM_CLASSES)
        background = 1 - alpha_c.mean()
        is_background = labels[valid] == NUM_CLASSES
        alpha_t = torch.where(
            is_background, background, alpha_c[labels[valid].clamp(max=NUM_CLASSES - 1)]
        )
        loss = loss * alpha_t
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / valid.sum()
    full = torch.zeros(len(labels), dtype=torch.float64)
    full[valid] = loss
    return full


def alpha_argument(alpha):
    return torch.tensor(alpha, dtype=torch.float64) if isinstance(alpha, tuple) else alpha


@pytest.mark.parametrize(
    "gamma, alpha", [(0.0, 0.25), (0.5, ALPHAS[3]), (2.0, 0.75), (5.0, ALPHAS[3])]
)
def test_matches_float64_reference_values_and_gradients(gamma, alpha, kernel):
    logits = random_logits(40)
    labels = random_labels(40, NUM_CLASSES)
    loss = functools.partial(softmax_focal_loss_from_labels, kernel=kernel)
    for reduction in REDUCTIONS:
        ours = value_and_grad(loss, logits, labels, alpha_argument(alpha), gamma, reduction)
        expected = value_and_grad(reference_loss, logits, labels, alpha, gamma, reduction)
        torch.testing.assert_close(ours[0], expected[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours[1], expected[1], rtol=1e-8, atol=1e-12)


def test_gamma_zero_without_alpha_is_cross_entropy(kernel):
    logits = random_logits(50)
    labels = random_labels(50, NUM_CLASSES)  # classes, background and ignored rows
    assert (labels == -1).any() and (labels == NUM_CLASSES).any()
    for reduction in REDUCTIONS:
        ours = value_and_grad(
            softmax_focal_loss_from_labels, logits, labels, -1.0, 0.0, reduction, kernel
        )
        expected = value_and_grad(
            F.cross_entropy, logits, labels, ignore_index=-1, reduction=reduction
        )
        torch.testing.assert_close(ours[0], expected[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ours[1], expected[1], rtol=1e-12, atol=1e-14)
    # fp32, the detector's dtype, through the default (compiled) kernel as well.
    value = softmax_focal_loss_from_labels(logits.float(), labels, -1.0, 0.0)
    expected = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=0)


def test_ignored_rows_contribute_nothing(kernel):
    logits = random_logits(20, dtype=torch.float32)
    labels = random_labels(20, NUM_CLASSES)
    ignored = labels == -1
    poisoned = logits.clone()
    poisoned[ignored] = float("nan")
    value, grad = value_and_grad(
        softmax_focal_loss_from_labels, poisoned, labels, 0.25, 2.0, "none", kernel
    )
    assert torch.isfinite(value).all() and (value[ignored] == 0).all()
    assert (grad[ignored] == 0).all() and torch.isfinite(grad).all()
    clean = softmax_focal_loss_from_labels(logits, labels, kernel=kernel)
    torch.testing.assert_close(softmax_focal_loss_from_labels(poisoned, labels), clean)


@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
def test_gradcheck_and_gradgradcheck(gamma, kernel):
    # Logits of moderate size: at γ < 1 the second derivative grows like (1 - p_t)^(γ - 1),
    # beyond what finite differences resolve.
    logits = (random_logits(6) / 3).requires_grad_()
    labels = torch.tensor([0, 6, 3, -1, 6, 5])
    per_class = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9, 1.0], dtype=torch.float64)
    checks = {
        "none": lambda x: softmax_focal_loss_from_labels(x, labels, 0.25, gamma, "none", kernel),
        "mean": lambda x: softmax_focal_loss_from_labels(x, labels, -1.0, gamma, "mean", kernel),
        "per_class": lambda x: softmax_focal_loss_from_labels(
            x, labels, per_class, gamma, "sum", kernel
        ),
    }
    for name, fn in checks.items():
        assert torch.autograd.gradcheck(fn, (logits,)), name
        assert torch.autograd.gradgradcheck(fn, (logits,)), name


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
def test_extreme_logits_finite_and_correct(dtype, gamma, kernel):
    # Row 0: confidently right (class 0 at +1e4). Row 1: confidently wrong (label 0, class 1 at
    # +1e4). Row 2: background confidently right. Row 3: a moderate row.
    big = 1e4
    logits = torch.zeros(4, NUM_CLASSES + 1)
    logits[0, 0], logits[1, 1], logits[2, NUM_CLASSES] = big, big, big
    logits[:3] -= big / 2
    logits[3, :3] = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([0, 0, NUM_CLASSES, 2])
    alpha = 0.25
    x = logits.to(dtype).requires_grad_()
    value = softmax_focal_loss_from_labels(x, labels, alpha, gamma, "none", kernel)
    (grad,) = torch.autograd.grad(value.sum(), x)
    value = value.detach()
    assert value.dtype == torch.float32 and grad.dtype == dtype
    assert torch.isfinite(value).all() and torch.isfinite(grad.float()).all()
    assert value[0] == 0 and value[2] == 0 and (grad[0] == 0).all() and (grad[2] == 0).all()
    # Confidently wrong: loss α (x_1 - x_0), gradient α (e_1 - e_0).
    assert float(value[1]) == pytest.approx(alpha * big, rel=1e-2)
    assert float(grad[1, 1]) == pytest.approx(alpha, rel=1e-2)
    assert float(grad[1, 0]) == pytest.approx(-alpha, rel=1e-2)
    assert 0 < float(value[3]) < 10


def test_compiled_equals_eager_and_default_kernel_is_compiled():
    logits = random_logits(300, dtype=torch.float32)
    labels = random_labels(300, NUM_CLASSES)
    default = value_and_grad(softmax_focal_loss_from_labels, logits, labels)
    compiled = value_and_grad(softmax_focal_loss_from_labels, logits, labels, kernel="compiled")
    assert "cpu" not in closed_form._COMPILE_FAILED_DEVICES, "torch.compile failed on this machine"
    eager = value_and_grad(softmax_focal_loss_from_labels, logits, labels, kernel="eager")
    for result in (default, compiled):
        torch.testing.assert_close(result[0], eager[0], rtol=1e-5, atol=0)
        torch.testing.assert_close(result[1], eager[1], rtol=1e-5, atol=1e-7)


def test_eager_kernel_in_chunks_equals_one_pass(monkeypatch):
    logits = random_logits(50)
    labels = random_labels(50, NUM_CLASSES)
    for reduction in REDUCTIONS:
        call = functools.partial(
            softmax_focal_loss_from_labels,
            labels=labels,
            alpha=0.25,
            gamma=2.0,
            reduction=reduction,
            kernel="eager",
        )
        one_pass = value_and_grad(call, logits)
        with monkeypatch.context() as patch:
            patch.setattr(closed_form, "_EAGER_CHUNK_ELEMENTS", 3 * (NUM_CLASSES + 1))
            chunked = value_and_grad(call, logits)
        torch.testing.assert_close(chunked[0], one_pass[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(chunked[1], one_pass[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_results_do_not_depend_on_earlier_calls(device):
    # A γ/α sweep in one process, in shuffled order, on the default (compiled) kernel, each call
    # against the float64 reference: the compiled kernel once returned stale γ values.
    settings = [
        (GAMMAS[i % 5], ALPHAS[i % 4], REDUCTIONS[i % 3], (50, 173)[(i // 3) % 2])
        for i in range(12)
    ]
    order = [(gamma, 0.25, "sum", 173) for gamma in GAMMAS]
    order += random.Random(0).sample(settings, len(settings))
    order += random.Random(1).sample(settings, len(settings))
    for gamma, alpha, reduction, num_rows in order:
        labels = random_labels(num_rows, NUM_CLASSES, seed=num_rows)
        logits = random_logits(num_rows, dtype=torch.float32, seed=num_rows)
        value, grad = value_and_grad(
            softmax_focal_loss_from_labels,
            logits.to(device),
            labels.to(device),
            alpha_argument(alpha),
            gamma,
            reduction,
        )
        value, grad = value.cpu(), grad.cpu()
        expected = value_and_grad(reference_loss, logits.double(), labels, alpha, gamma, reduction)
        assert_norm_close(value, expected[0], rtol=1e-5)
        assert_norm_close(grad, expected[1], rtol=1e-5)


def test_row_weights():
    torch.testing.assert_close(
        softmax_row_weights(0.25, 3), torch.tensor([0.25, 0.25, 0.25, 0.75], dtype=torch.float64)
    )
    assert softmax_row_weights(-1.0, 3) is None
    torch.testing.assert_close(
        softmax_row_weights([0.1, 0.2, 0.6], 3),
        torch.tensor([0.1, 0.2, 0.6, 0.7], dtype=torch.float64),
    )


def test_per_class_alpha_all_equal_is_scalar_alpha(kernel):
    logits = random_logits(60)
    labels = random_labels(60, NUM_CLASSES)
    scalar = value_and_grad(softmax_focal_loss_from_labels, logits, labels, 0.4, 2.0, "sum", kernel)
    per_class = value_and_grad(
        softmax_focal_loss_from_labels, logits, labels, [0.4] * NUM_CLASSES, 2.0, "sum", kernel
    )
    torch.testing.assert_close(per_class[0], scalar[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(per_class[1], scalar[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "logits, labels, kwargs, message",
    [
        (torch.zeros(2, 4), torch.tensor([0, 4]), {}, r"labels must lie in \[-1, 3\]"),
        (torch.zeros(2, 1), torch.tensor([0, 0]), {}, r"shape \(R, K \+ 1\)"),
        (torch.zeros(2, 4), torch.tensor([0, 3]), {"gamma": -1.0}, "gamma must be"),
        (torch.zeros(2, 4), torch.tensor([0, 3]), {"alpha": 2.0}, r"alpha must be in \[0, 1\]"),
        (
            torch.zeros(2, 4),
            torch.tensor([0, 3]),
            {"alpha": [0.5, 0.5]},
            r"3 per-class values \(one per class\), each in \[0, 1\]",
        ),
        (
            torch.zeros(2, 4),
            torch.tensor([0, 3]),
            {"alpha": [0.5, 0.5, 1.5]},
            r"each in \[0, 1\]; got \[0.5, 0.5, 1.5\]",
        ),
        (torch.zeros(2, 4), torch.tensor([0, 3]), {"reduction": "avg"}, "Invalid reduction"),
    ],
)
def test_bad_arguments_raise_clear_errors(logits, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        softmax_focal_loss_from_labels(logits, labels, **kwargs)
