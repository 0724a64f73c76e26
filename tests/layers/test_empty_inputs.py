"""
Empty inputs (no rows, or no classes) on every public loss, kernel and reduction: the value
torchvision, fvcore or ``F.cross_entropy`` gives on the same input (0 for "sum", NaN for "mean",
an empty tensor for "none"), and a gradient shaped like the logits.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_star as fvcore_focal_loss_star
from torchvision.ops import sigmoid_focal_loss as torchvision_focal_loss

from retinanet_fl.layers import closed_form
from retinanet_fl.layers.focal_loss import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_from_labels,
)
from retinanet_fl.layers.softmax_focal_loss import softmax_focal_loss_from_labels

REDUCTIONS = ("none", "mean", "sum")
# (rows, classes): no anchors, and anchors of a model without classes.
EMPTY_SHAPES = ((0, 5), (4, 0))
GAMMA, BETA = 2.0, 1.0


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].double()


def _mean_over_rows(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """A reference's per-element loss reduced as our label losses reduce it."""
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _sigmoid_cases(shape):
    """(our loss, its arguments, the reference's value) for the four sigmoid losses."""
    logits = torch.zeros(shape, dtype=torch.float64)
    targets = torch.zeros(shape, dtype=torch.float64)
    labels = torch.full(shape[:1], shape[1], dtype=torch.int64)  # background
    one_hot = _one_hot(labels, shape[1])
    return [
        (
            sigmoid_focal_loss,
            (targets,),
            lambda reduction: torchvision_focal_loss(logits, targets, reduction=reduction),
        ),
        (
            sigmoid_focal_loss_from_labels,
            (labels,),
            lambda reduction: torchvision_focal_loss(logits, one_hot, reduction=reduction),
        ),
        (
            functools.partial(sigmoid_focal_loss_star, gamma=GAMMA, beta=BETA),
            (targets,),
            lambda reduction: _mean_over_rows(
                # fvcore's FL* has no β: at β = 0 it equals ours, and empty is empty at any β.
                fvcore_focal_loss_star(logits, targets, alpha=0.25, gamma=GAMMA),
                reduction,
            ),
        ),
        (
            functools.partial(sigmoid_focal_loss_star_from_labels, gamma=GAMMA, beta=BETA),
            (labels,),
            lambda reduction: _mean_over_rows(
                fvcore_focal_loss_star(logits, one_hot, alpha=0.25, gamma=GAMMA), reduction
            ),
        ),
    ]


def _check(loss_fn, logits_shape, args, expected, kernel: str, reduction: str) -> None:
    logits = torch.zeros(logits_shape, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(logits, *args, reduction=reduction, kernel=kernel)
    torch.testing.assert_close(loss, expected.to(loss.dtype), equal_nan=True)
    if reduction == "none":
        assert not loss.isnan().any()
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad.shape == logits.shape
    assert not grad.isnan().any()


@pytest.mark.parametrize("kernel", closed_form.KERNELS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("which", range(4))
def test_sigmoid_losses_on_empty_input_equal_the_reference(which, shape, reduction, kernel):
    loss_fn, args, reference = _sigmoid_cases(shape)[which]
    _check(loss_fn, shape, args, reference(reduction), kernel, reduction)


@pytest.mark.parametrize("kernel", closed_form.KERNELS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_focal_loss_on_no_rows_equals_cross_entropy(reduction, kernel):
    # γ = 0 without α is F.cross_entropy; a (0, K + 1) input has no class-free form (K + 1 >= 2).
    logits = torch.zeros(0, 6, dtype=torch.float64)
    labels = torch.zeros(0, dtype=torch.int64)
    expected = F.cross_entropy(logits, labels, reduction=reduction)
    loss_fn = functools.partial(softmax_focal_loss_from_labels, alpha=-1.0, gamma=0.0)
    _check(loss_fn, logits.shape, (labels,), expected, kernel, reduction)
    focal = functools.partial(softmax_focal_loss_from_labels, gamma=GAMMA)
    _check(focal, logits.shape, (labels,), expected, kernel, reduction)
