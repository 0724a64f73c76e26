"""
Inference helpers of :class:`FocalLossRetinaNet`: class scores from logits, the per-level top
candidates, non-finite boxes.
"""

import logging
from typing import Tuple

import torch
from detectron2.structures import Instances
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor

__all__ = ["class_scores", "top_candidates", "drop_non_finite_boxes"]


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


def top_candidates(
    scores: Tensor, score_thresh: float, topk_candidates: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    The (anchor, class) pairs of one level scoring above ``score_thresh``, at most the
    ``topk_candidates`` best of them: what Detectron2's ``_decode_per_level_predictions`` selects,
    bit for bit, in less time.

    Detectron2 indexes the ``(R, K)`` scores with the 2-D mask and takes the mask's 2-D
    ``nonzero``: two scans of the mask, the 2-column one several times slower than a 1-D one on
    the CPU, and a slow boolean-mask gather. Here the flattened mask is scanned once (1-D
    ``nonzero``) and its indices gather the scores. A 1-D ``nonzero`` lists the flat indices in the
    row-major order of the 2-D one, so top-k gets the same tensor as Detectron2's and returns the
    same scores and indices, ties included.

    Args:
        scores: ``(R, K)`` class probabilities of R anchors.
        score_thresh: pairs scoring ``<=`` it are no candidates.
        topk_candidates: candidates kept at most.

    Returns:
        scores: ``(C,)`` of the candidates kept, best first, C = min(above threshold, top-k).
        anchor_idxs: ``(C,)`` int64 anchor of each, in [0, R).
        class_idxs: ``(C,)`` int64 class of each, in [0, K).
    """
    num_classes = scores.shape[1]
    # A view when the scores are contiguous (the sigmoid's): the flat index is anchor * K + class.
    flat_scores = scores.reshape(-1)
    flat_idxs = (flat_scores > score_thresh).nonzero().squeeze(1)
    # index_select, not flat_scores[flat_idxs]: advanced indexing is several times slower for the
    # millions of candidates that a low threshold leaves on the finest level.
    candidate_scores = flat_scores.index_select(0, flat_idxs)

    num_candidates = flat_idxs.shape[0]
    if isinstance(num_candidates, Tensor):
        # A traced size is a tensor: clamping keeps the traced top-k valid on images with fewer
        # candidates than the one traced (Detectron2's tracing branch).
        num_topk = torch.clamp(num_candidates, max=topk_candidates)
    else:
        num_topk = min(num_candidates, topk_candidates)
    top_scores, order = candidate_scores.topk(num_topk)
    flat_idxs = flat_idxs.index_select(0, order)
    anchor_idxs = torch.div(flat_idxs, num_classes, rounding_mode="floor")
    class_idxs = flat_idxs % num_classes
    return top_scores, anchor_idxs, class_idxs


def drop_non_finite_boxes(candidates: Instances) -> Instances:
    """
    Remove the detections whose decoded box is not finite: they are no boxes, they would defeat the
    NMS (a NaN overlaps nothing) and Detectron2's postprocessing asserts on them. Logged, since
    non-finite predictions mean the weights or the input are broken. A traced or scripted model
    applies the mask unconditionally, so that it drops them too.

    Args:
        candidates: with "pred_boxes".

    Returns:
        the candidates with finite boxes, in their order; ``candidates`` itself in eager mode when
        all are finite.
    """
    finite = torch.isfinite(candidates.pred_boxes.tensor).all(dim=1)
    if not torch.jit.is_scripting():
        if not torch.jit.is_tracing():
            num_dropped = int((~finite).sum())
            if num_dropped == 0:
                # The usual case: a boolean mask would copy every field through a nonzero.
                return candidates
            _warn_non_finite(num_dropped, len(candidates))
    return candidates[finite]


def _warn_non_finite(num_dropped: int, num_candidates: int) -> None:
    log_every_n_seconds(
        logging.WARNING,
        f"Dropped {num_dropped} of {num_candidates} candidate detections whose decoded boxes are "
        "NaN or infinite: the model's predictions or its input are not finite.",
        n=60,
    )
