"""
Anchor labelling (paper §4, "Anchors"): each anchor gets its matched GT box's class, background
or "ignored", from Detectron2's ``Matcher`` on IoU computed in chunks of anchors, so that labelling
~100k anchors against many GT boxes never holds the whole IoU matrix.
"""

import copy
from typing import List, Sequence, Tuple

import torch
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import Tensor

__all__ = ["build_anchor_matcher", "label_anchors", "match_anchors"]


def match_anchors(
    gt_boxes: Boxes, anchors: Boxes, matcher: Matcher, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """
    ``matcher(pairwise_iou(gt_boxes, anchors))`` without ever holding more than ``chunk_size``
    anchors' IoU columns: thresholds are applied chunk by chunk, and the low-quality matches
    (each GT box's best anchors, ties included) use the best IoU over all chunks, recomputing IoU
    only for the chunks that contain such an anchor.

    Args:
        gt_boxes: M ground-truth boxes.
        anchors: R anchors.
        matcher: Detectron2's matcher; its ``allow_low_quality_matches`` is honoured.
        chunk_size: anchors per chunk.

    Returns:
        Tensor: ``(R,)`` int64, index of the matched GT box of each anchor.
        Tensor: ``(R,)`` int8, the matcher's label of each anchor (1, 0 or -1).
    """
    num_anchors = len(anchors)
    if num_anchors <= chunk_size:
        return matcher(pairwise_iou(gt_boxes, anchors))

    threshold_matcher = copy.copy(matcher)
    threshold_matcher.allow_low_quality_matches = False
    starts = range(0, num_anchors, chunk_size)
    matched_idxs, match_labels, chunk_best_iou = [], [], []
    for start in starts:
        iou = pairwise_iou(gt_boxes, anchors[start : start + chunk_size])
        idxs, labels = threshold_matcher(iou)
        matched_idxs.append(idxs)
        match_labels.append(labels)
        chunk_best_iou.append(iou.max(dim=1).values)
    matched_idxs = torch.cat(matched_idxs)
    match_labels = torch.cat(match_labels)

    if matcher.allow_low_quality_matches:
        best_iou_per_gt = torch.stack(chunk_best_iou).max(dim=0).values  # (M,)
        for start, chunk_best in zip(starts, chunk_best_iou):
            if not (chunk_best == best_iou_per_gt).any():
                continue
            iou = pairwise_iou(gt_boxes, anchors[start : start + chunk_size])
            is_best_for_a_gt = (iou == best_iou_per_gt[:, None]).any(dim=0)
            match_labels[start : start + chunk_size][is_best_for_a_gt] = 1
    return matched_idxs, match_labels


def build_anchor_matcher(
    iou_thresholds: Sequence[float], iou_labels: Sequence[int], allow_low_quality_matches: bool
) -> Matcher:
    """
    Detectron2's ``Matcher``, after checking the config values with messages that name the keys.

    Args:
        iou_thresholds: increasing IoU thresholds in (0, 1], e.g. [0.4, 0.5].
        iou_labels: one label in {-1, 0, 1} per interval, e.g. [0, -1, 1].
        allow_low_quality_matches: give each GT box its best anchors even below the threshold.
    """
    thresholds = [float(t) for t in iou_thresholds]
    if (
        not thresholds
        or any(not 0.0 < t <= 1.0 for t in thresholds)
        or any(lo > hi for lo, hi in zip(thresholds[:-1], thresholds[1:]))
    ):
        raise ValueError(
            f"MODEL.RETINANET.IOU_THRESHOLDS must be non-decreasing values in (0, 1] (the paper: "
            f"[0.4, 0.5]), got {list(iou_thresholds)}."
        )
    labels = [int(label) for label in iou_labels]
    if len(labels) != len(thresholds) + 1 or any(label not in (-1, 0, 1) for label in labels):
        raise ValueError(
            f"MODEL.RETINANET.IOU_LABELS must have len(IOU_THRESHOLDS) + 1 = {len(thresholds) + 1} "
            f"values in {{-1, 0, 1}} (the paper: [0, -1, 1]), got {list(iou_labels)}."
        )
    return Matcher(thresholds, labels, allow_low_quality_matches=bool(allow_low_quality_matches))


def label_anchors(
    anchors: Boxes,
    gt_instances: List[Instances],
    matcher: Matcher,
    num_classes: int,
    chunk_size: int,
) -> Tuple[Tensor, List[Tensor]]:
    """
    Args:
        anchors: the R anchors of all levels.
        gt_instances: N images' ground truth, with ``gt_boxes`` and ``gt_classes``.
        matcher: see :func:`match_anchors`.
        num_classes: K.
        chunk_size: anchors per IoU chunk.

    Returns:
        Tensor: ``(N, R)`` int64 labels: a class in [0, K) for foreground, K for background, -1
            for ignored.
        list[Tensor]: N tensors ``(R, 4)``, the matched GT box of each anchor (meaningful for
            foreground anchors only).
    """
    gt_labels, matched_gt_boxes = [], []
    for gt_per_image in gt_instances:
        if len(gt_per_image) == 0:
            gt_labels.append(
                torch.full((len(anchors),), num_classes, dtype=torch.int64, device=anchors.device)
            )
            matched_gt_boxes.append(torch.zeros_like(anchors.tensor))
            continue
        _check_gt_classes(gt_per_image.gt_classes, num_classes)
        matched_idxs, match_labels = match_anchors(
            gt_per_image.gt_boxes, anchors, matcher, chunk_size
        )
        labels = gt_per_image.gt_classes[matched_idxs]
        labels[match_labels == 0] = num_classes
        labels[match_labels == -1] = -1
        gt_labels.append(labels)
        matched_gt_boxes.append(gt_per_image.gt_boxes.tensor[matched_idxs])
    return torch.stack(gt_labels), matched_gt_boxes


def _check_gt_classes(gt_classes: Tensor, num_classes: int) -> None:
    if gt_classes.min() < 0 or gt_classes.max() >= num_classes:
        raise ValueError(
            f"Ground-truth class ids must be in [0, MODEL.RETINANET.NUM_CLASSES = "
            f"{num_classes}), got ids from {gt_classes.min().item()} to "
            f"{gt_classes.max().item()}; set NUM_CLASSES to the dataset's number of classes."
        )
