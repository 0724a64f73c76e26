"""
The kernel machinery of the losses: compile settings (and the PyTorch bug they avoid), the eager
kernel's row blocks, and the fallback when compiling fails.
"""

import logging

import pytest
import torch

from retinanet_fl.layers import closed_form
from retinanet_fl.layers.focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_from_labels
from tests.layers.test_focal_loss import (
    NUM_CLASSES,
    REDUCTIONS,
    random_labels,
    random_logits,
    value_and_grad,
)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_eager_kernel_in_chunks_equals_one_pass(monkeypatch, reduction):
    logits = random_logits(50, NUM_CLASSES)
    labels = random_labels(50)
    targets = torch.rand(50, NUM_CLASSES, dtype=torch.float64)
    calls = {
        "labels": lambda x: sigmoid_focal_loss_from_labels(
            x, labels, 0.25, 2.0, reduction, "eager"
        ),
        "targets": lambda x: sigmoid_focal_loss(x, targets, 0.25, 0.5, reduction, "eager"),
    }
    one_pass = {name: value_and_grad(call, logits) for name, call in calls.items()}
    monkeypatch.setattr(
        closed_form, "_EAGER_CHUNK_ELEMENTS", 3 * NUM_CLASSES
    )  # 17 chunks of 3 rows
    for name, call in calls.items():
        chunked = value_and_grad(call, logits)
        torch.testing.assert_close(chunked[0], one_pass[name][0], rtol=1e-12, atol=0, msg=name)
        torch.testing.assert_close(chunked[1], one_pass[name][1], rtol=1e-12, atol=0, msg=name)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    def failing_compile(fn):
        def compiled(*args):
            raise RuntimeError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(closed_form, "_compiled", failing_compile)
    monkeypatch.setattr(closed_form, "_COMPILE_FAILED_DEVICES", set())
    logits = random_logits(20, NUM_CLASSES, dtype=torch.float32)
    labels = random_labels(20)
    with caplog.at_level(logging.WARNING, logger=closed_form.__name__):
        first = value_and_grad(sigmoid_focal_loss_from_labels, logits, labels, kernel="compiled")
        second = value_and_grad(sigmoid_focal_loss_from_labels, logits, labels, kernel="compiled")
    eager = value_and_grad(sigmoid_focal_loss_from_labels, logits, labels, kernel="eager")
    assert len([r for r in caplog.records if "torch.compile" in r.getMessage()]) == 1
    for result in (first, second):
        torch.testing.assert_close(result[0], eager[0], rtol=0, atol=0)
        torch.testing.assert_close(result[1], eager[1], rtol=0, atol=0)


def test_pytorch_float_specialization_bug_is_avoided():
    # Minimal reproduction of pytorch/pytorch#194976 (torch 2.14): a Python float used both as a
    # pow() exponent and as a factor. After a recompile makes it symbolic, inductor burns the
    # value of that call into pow() without a guard, and every later value reuses it. Our
    # kernels compile with specialize_float=True; this checks that the setting still prevents it.
    def formula(x: torch.Tensor, gamma: float):
        return x.pow(gamma).sum(), (x * gamma).sum()

    x = torch.rand(64, 12)
    compiled = closed_form._compiled(formula)
    for gamma in (0.0, 0.5, 1.0, 2.0):
        torch.testing.assert_close(compiled(x, gamma), formula(x, gamma))


@pytest.mark.xfail(
    reason="pytorch/pytorch#194976: stale float in inductor; passes once PyTorch has the fix",
    strict=False,
)
def test_pytorch_float_specialization_bug_reproduction():
    def formula(x: torch.Tensor, gamma: float):
        return x.pow(gamma).sum(), (x * gamma).sum()

    x = torch.rand(64, 12)
    compiled = torch.compile(formula)
    for gamma in (0.0, 0.5, 1.0, 2.0):
        torch.testing.assert_close(compiled(x, gamma), formula(x, gamma))
