"""
Anchor labelling: each anchor gets its matched GT box's class, background or "ignored", from the
matcher named by ``MODEL.RETINANET_FL.ANCHOR_MATCHER`` (``ANCHOR_MATCHERS``):

* ``"iou"`` (paper §4, "Anchors"; the default): Detectron2's ``Matcher`` on IoU thresholds,
  computed in chunks of anchors, so that labelling ~100k anchors against many GT boxes never
  holds the whole IoU matrix.
* ``"atss"`` (beyond the paper): :class:`ATSSMatcher`, adaptive training sample selection
  (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive
  Training Sample Selection", CVPR 2020).
"""

import copy
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from torch import Tensor

__all__ = [
    "ANCHOR_MATCHERS",
    "ATSSMatcher",
    "build_anchor_matcher",
    "build_anchor_matcher_from_config",
    "label_anchors",
    "match_anchors",
]

MATCHER_KEY = "MODEL.RETINANET_FL.ANCHOR_MATCHER"


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


class ATSSMatcher:
    """
    Adaptive training sample selection (ATSS, Zhang et al. 2020, Algorithm 1). For each GT box:

    1. candidates: on each pyramid level, the ``topk × A`` anchors whose centres are nearest to
       the box's centre (L2), A anchors per position (the authors' code: k positions' anchors;
       the paper states it for A = 1); ties by anchor order;
    2. threshold: the mean + the standard deviation (unbiased, as the authors' code) of the
       candidates' IoUs with the box;
    3. positives: the candidates with IoU >= the threshold whose centre lies strictly inside the
       box (the authors' code asks for a margin of 0.01 px).

    An anchor positive for several boxes goes to the one it overlaps most (ties: the first box);
    every other anchor is background: no anchor is ignored.
    """

    def __init__(self, topk: int = 9, anchors_per_location: int = 1):
        """
        Args:
            topk: k, candidate positions per level (the paper: 9).
            anchors_per_location: A, the anchors at each position of the feature maps.
        """
        if int(topk) != topk or topk < 1:
            raise ValueError(
                f"MODEL.RETINANET_FL.ATSS_TOPK must be an integer >= 1 (the paper: 9), got {topk}."
            )
        if int(anchors_per_location) != anchors_per_location or anchors_per_location < 1:
            raise ValueError(
                f"anchors_per_location must be an integer >= 1, got {anchors_per_location}."
            )
        self.topk = int(topk)
        self.anchors_per_location = int(anchors_per_location)

    def __call__(self, gt_boxes: Boxes, anchors: List[Boxes]) -> Tuple[Tensor, Tensor]:
        """
        Args:
            gt_boxes: M >= 1 ground-truth boxes.
            anchors: per-level anchors, each (R_l, 4).

        Returns:
            Tensor: (R,) int64, the index of the matched GT box of each anchor (0 for
                background anchors).
            Tensor: (R,) int8, 1 for foreground, 0 for background (the labels of Detectron2's
                ``Matcher``).
        """
        gt = gt_boxes.tensor
        candidates = self._candidates(gt, anchors)  # (M, C)
        all_anchors = Boxes.cat(anchors).tensor
        candidate_boxes = all_anchors[candidates]  # (M, C, 4)
        num_gt, num_candidates = candidates.shape
        iou = matched_pairwise_iou(
            Boxes(gt[:, None].expand(-1, num_candidates, -1).reshape(-1, 4)),
            Boxes(candidate_boxes.reshape(-1, 4)),
        ).view(num_gt, num_candidates)
        # One candidate has no spread: its IoU is the threshold.
        spread = iou.std(dim=1, keepdim=True, correction=1) if num_candidates > 1 else 0.0
        threshold = iou.mean(dim=1, keepdim=True) + spread
        centres = (candidate_boxes[..., :2] + candidate_boxes[..., 2:]) / 2
        margins = torch.cat([centres - gt[:, None, :2], gt[:, None, 2:] - centres], dim=2)
        positive = (iou >= threshold) & (margins.min(dim=2).values > 0)
        return _resolve_overlaps(candidates, iou, positive, len(all_anchors))

    def _candidates(self, gt: Tensor, anchors: List[Boxes]) -> Tensor:
        """(M, C) indices into the concatenated anchors: each box's candidates of every level."""
        gt_centres = (gt[:, :2] + gt[:, 2:]) / 2
        candidates, start = [], 0
        for level in anchors:
            boxes = level.tensor
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            dx = gt_centres[:, 0:1] - centres[None, :, 0]
            dy = gt_centres[:, 1:2] - centres[None, :, 1]
            k = min(self.topk * self.anchors_per_location, len(boxes))
            if k > 0:
                candidates.append(_k_nearest(dx * dx + dy * dy, k) + start)
            start += len(boxes)
        return torch.cat(candidates, dim=1)

    def __repr__(self) -> str:
        return f"ATSSMatcher(topk={self.topk}, anchors_per_location={self.anchors_per_location})"


def _k_nearest(squared_distances: Tensor, k: int) -> Tensor:
    """
    (M, k) column indices of the k smallest values of each row of (M, R), in increasing index
    order; among equal values the lower index is taken (``topk`` alone leaves that open).
    """
    kth = squared_distances.topk(k, dim=1, largest=False).values[:, -1:]
    nearer = squared_distances < kth
    at_kth = squared_distances == kth
    still_needed = k - nearer.sum(dim=1, keepdim=True)
    chosen = nearer | (at_kth & (at_kth.cumsum(dim=1) <= still_needed))
    return chosen.nonzero()[:, 1].view(-1, k)


def _resolve_overlaps(
    candidates: Tensor, iou: Tensor, positive: Tensor, num_anchors: int
) -> Tuple[Tensor, Tensor]:
    """
    Each anchor positive for some GT boxes goes to the one of highest IoU (ties: the lowest
    index); returns the matched index (0 where none) and the 1 / 0 label of each anchor.
    """
    num_gt = len(candidates)
    gt_idxs = torch.arange(num_gt, device=candidates.device)[:, None].expand_as(candidates)
    anchor_idxs, gt_idxs, values = candidates[positive], gt_idxs[positive], iou[positive]
    best = iou.new_full((num_anchors,), -1.0).scatter_reduce(0, anchor_idxs, values, "amax")
    wins = values == best[anchor_idxs]
    matched = torch.full((num_anchors,), num_gt, dtype=torch.int64, device=candidates.device)
    matched = matched.scatter_reduce(0, anchor_idxs[wins], gt_idxs[wins], "amin")
    foreground = matched < num_gt
    return matched.masked_fill(~foreground, 0), foreground.to(torch.int8)


AnchorMatcher = Union[Matcher, ATSSMatcher]
# MODEL.RETINANET_FL.ANCHOR_MATCHER -> builder(cfg, anchors per location) of the matcher.
ANCHOR_MATCHERS: Dict[str, Callable[..., AnchorMatcher]] = {
    "iou": lambda cfg, anchors_per_location: build_anchor_matcher(
        cfg.MODEL.RETINANET.IOU_THRESHOLDS,
        cfg.MODEL.RETINANET.IOU_LABELS,
        cfg.MODEL.RETINANET_FL.ALLOW_LOW_QUALITY_MATCHES,
    ),
    "atss": lambda cfg, anchors_per_location: ATSSMatcher(
        cfg.MODEL.RETINANET_FL.ATSS_TOPK, anchors_per_location
    ),
}


def build_anchor_matcher_from_config(cfg, anchors_per_location: int) -> AnchorMatcher:
    """
    The matcher named by ``MODEL.RETINANET_FL.ANCHOR_MATCHER``.

    Args:
        cfg: the config.
        anchors_per_location: A, the anchors at each position (ATSS takes k positions' anchors).
    """
    name = cfg.MODEL.RETINANET_FL.ANCHOR_MATCHER
    if name not in ANCHOR_MATCHERS:
        raise ValueError(
            f"{MATCHER_KEY} = {name!r} is not an anchor matcher; choose one of "
            f"{sorted(ANCHOR_MATCHERS)}."
        )
    return ANCHOR_MATCHERS[name](cfg, anchors_per_location)


def label_anchors(
    anchors: List[Boxes],
    gt_instances: List[Instances],
    matcher: AnchorMatcher,
    num_classes: int,
    chunk_size: int,
) -> Tuple[Tensor, List[Tensor]]:
    """
    Args:
        anchors: per-level anchors, R in all.
        gt_instances: N images' ground truth, with ``gt_boxes`` and ``gt_classes``.
        matcher: Detectron2's ``Matcher``, applied to IoU in chunks (:func:`match_anchors`), or
            an :class:`ATSSMatcher`.
        num_classes: K.
        chunk_size: anchors per IoU chunk (the IoU matcher).

    Returns:
        Tensor: ``(N, R)`` int64 labels: a class in [0, K) for foreground, K for background, -1
            for ignored.
        list[Tensor]: N tensors ``(R, 4)``, the matched GT box of each anchor (meaningful for
            foreground anchors only).
    """
    all_anchors = Boxes.cat(anchors)
    gt_labels, matched_gt_boxes = [], []
    for gt_per_image in gt_instances:
        if len(gt_per_image) == 0:
            gt_labels.append(
                torch.full(
                    (len(all_anchors),), num_classes, dtype=torch.int64, device=all_anchors.device
                )
            )
            matched_gt_boxes.append(torch.zeros_like(all_anchors.tensor))
            continue
        _check_gt_classes(gt_per_image.gt_classes, num_classes)
        if isinstance(matcher, Matcher):
            matched_idxs, match_labels = match_anchors(
                gt_per_image.gt_boxes, all_anchors, matcher, chunk_size
            )
        else:
            matched_idxs, match_labels = matcher(gt_per_image.gt_boxes, anchors)
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
