"""Layers of the paper: the focal loss and its variants (sigmoid and softmax) as functions with
closed-form gradients; beyond the paper, its soft-target successors (Quality Focal Loss,
Varifocal Loss)."""

from .focal_loss import (
    KERNELS,
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star,
    sigmoid_focal_loss_star_from_labels,
)
from .soft_focal_losses import quality_focal_loss, varifocal_loss
from .softmax_focal_loss import softmax_focal_loss_from_labels

__all__ = [
    "KERNELS",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "sigmoid_focal_loss_star",
    "sigmoid_focal_loss_star_from_labels",
    "softmax_focal_loss_from_labels",
    "varifocal_loss",
]
