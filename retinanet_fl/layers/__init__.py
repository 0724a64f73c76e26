"""Layers of the paper: the focal loss and its variants (sigmoid and softmax) as functions with
closed-form gradients."""

from .focal_loss import (
    KERNELS,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_from_labels,
)
from .softmax_focal_loss import softmax_focal_loss_from_labels

__all__ = [
    "KERNELS",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "sigmoid_focal_loss_star",
    "sigmoid_focal_loss_star_from_labels",
    "softmax_focal_loss_from_labels",
]
