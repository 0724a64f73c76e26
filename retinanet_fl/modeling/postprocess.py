"""Inference helpers of :class:`FocalLossRetinaNet`: class scores from logits, non-finite boxes."""

import logging

import torch
from detectron2.structures import Instances
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor

__all__ = ["class_scores", "drop_non_finite_boxes"]


def class_scores(logits: Tensor, num_classes: int, background_logit: bool) -> Tensor:
    """
    Args:
        logits: one image's logits, ``(R, K)``, or ``(R, K + 1)`` with the last for background.
        num_classes: K.
        background_logit: whether ``logits`` has the background column (the softmax loss).

    Returns:
        ``(R, K)`` class probabilities: the softmax over K + 1 with background dropped, or the
        sigmoids, computed in place as in Detectron2 (the transposed logits are read nowhere else).
    """
    if background_logit:
        return logits.softmax(dim=1)[:, :num_classes]
    return logits.sigmoid_()


def drop_non_finite_boxes(candidates: Instances) -> Instances:
    """
    Remove the detections whose decoded box is not finite: they are no boxes, they would defeat the
    NMS (a NaN overlaps nothing) and Detectron2's postprocessing asserts on them. Logged, since
    non-finite predictions mean the weights or the input are broken. The mask is applied
    unconditionally so that a traced or scripted model drops them too.
    """
    finite = torch.isfinite(candidates.pred_boxes.tensor).all(dim=1)
    if not torch.jit.is_scripting():
        if not torch.jit.is_tracing() and not finite.all():
            _warn_non_finite(int((~finite).sum()), len(candidates))
    return candidates[finite]


def _warn_non_finite(num_dropped: int, num_candidates: int) -> None:
    log_every_n_seconds(
        logging.WARNING,
        f"Dropped {num_dropped} of {num_candidates} candidate detections whose decoded boxes are "
        "NaN or infinite: the model's predictions or its input are not finite.",
        n=60,
    )
