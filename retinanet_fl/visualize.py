"""
Pictures of a trained detector, for the demo: the score threshold to draw detections at (the
F1-optimal one on a validation set) and ground truth beside the detections at a readable size.
"""

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou

TITLE_HEIGHT = 28  # pixels of the band with the panels' titles

__all__ = [
    "ThresholdChoice",
    "f1_optimal_threshold",
    "side_by_side",
]


@dataclasses.dataclass(frozen=True)
class ThresholdChoice:
    """
    Attributes:
        threshold: the score threshold (keep detections scoring at least this).
        precision, recall, f1: of the detections kept, at ``iou_threshold``.
        iou_threshold: the IoU a detection needs with an unmatched GT box of its class.
        num_gt: ground-truth boxes.
        num_detections: detections scoring at least the threshold.
    """

    threshold: float
    precision: float
    recall: float
    f1: float
    iou_threshold: float
    num_gt: int
    num_detections: int


def _xyxy(boxes: Sequence[Sequence[float]], mode: BoxMode) -> torch.Tensor:
    tensor = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return BoxMode.convert(tensor, mode, BoxMode.XYXY_ABS)


def _match(gt_boxes: torch.Tensor, det_boxes: torch.Tensor, iou_threshold: float) -> List[bool]:
    """
    Greedy matching of one image's detections of one class, in the given (descending score)
    order: each takes the unmatched GT box it overlaps most, if by ``iou_threshold`` or more.

    Args:
        gt_boxes: (G, 4) XYXY.
        det_boxes: (D, 4) XYXY, sorted by descending score.

    Returns:
        D flags: whether each detection is a true positive.
    """
    if len(gt_boxes) == 0:
        return [False] * len(det_boxes)
    iou = pairwise_iou(Boxes(det_boxes), Boxes(gt_boxes))
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    flags = []
    for row in iou:
        row = row.masked_fill(taken, -1.0)
        best = int(row.argmax())
        hit = bool(row[best] >= iou_threshold)
        if hit:
            taken[best] = True
        flags.append(hit)
    return flags


def f1_optimal_threshold(
    dataset_dicts: Sequence[Dict],
    detections: Sequence[Dict],
    dataset_id_to_contiguous: Optional[Mapping[int, int]] = None,
    iou_threshold: float = 0.5,
) -> ThresholdChoice:
    """
    The score threshold that maximizes F1 of the detections kept, over a labelled image set.

    Args:
        dataset_dicts: the images in Detectron2's format (``image_id``, ``annotations`` with
            ``bbox``, ``bbox_mode`` and contiguous ``category_id``).
        detections: COCO-format results (``image_id``, ``category_id``, ``bbox`` XYWH,
            ``score``), as ``COCOEvaluator`` writes them to ``coco_instances_results.json``.
        dataset_id_to_contiguous: maps the results' category ids to the dicts' (the dataset
            metadata's ``thing_dataset_id_to_contiguous_id``); None: they are the same.
        iou_threshold: the IoU a true positive needs.

    Returns:
        the threshold (the lowest score kept) and the precision, recall and F1 there.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    gt: Dict[Tuple[int, int], List] = {}
    for record in dataset_dicts:
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0):
                continue
            key = (record["image_id"], annotation["category_id"])
            gt.setdefault(key, []).append((annotation["bbox"], annotation["bbox_mode"]))
    num_gt = sum(len(v) for v in gt.values())
    if num_gt == 0:
        raise ValueError("No ground-truth boxes: the F1-optimal threshold needs labelled images.")
    known_images = {record["image_id"] for record in dataset_dicts}
    by_key: Dict[Tuple[int, int], List[Dict]] = {}
    for detection in detections:
        if detection["image_id"] not in known_images:
            continue
        category = detection["category_id"]
        if dataset_id_to_contiguous is not None:
            category = dataset_id_to_contiguous[category]
        by_key.setdefault((detection["image_id"], category), []).append(detection)

    scored: List[Tuple[float, bool]] = []
    for key, dets in by_key.items():
        dets = sorted(dets, key=lambda d: -d["score"])
        boxes = gt.get(key, [])
        gt_xyxy = torch.cat([_xyxy([b], m) for b, m in boxes]) if boxes else torch.zeros(0, 4)
        det_xyxy = _xyxy([d["bbox"] for d in dets], BoxMode.XYWH_ABS)
        flags = _match(gt_xyxy, det_xyxy, iou_threshold)
        scored += [(d["score"], flag) for d, flag in zip(dets, flags)]
    if not scored:
        return ThresholdChoice(1.0, math.nan, 0.0, 0.0, iou_threshold, num_gt, 0)
    scored.sort(key=lambda s: -s[0])
    scores = np.array([s for s, _ in scored])
    true_positives = np.cumsum([flag for _, flag in scored])
    kept = np.arange(1, len(scored) + 1)
    precision = true_positives / kept
    recall = true_positives / num_gt
    f1 = np.where(true_positives > 0, 2 * precision * recall / (precision + recall + 1e-12), 0.0)
    # Only where the next detection scores lower: a threshold keeps all detections of equal score.
    boundary = np.append(scores[1:] < scores[:-1], True)
    best = int(np.argmax(np.where(boundary, f1, -1.0)))
    return ThresholdChoice(
        threshold=float(scores[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        f1=float(f1[best]),
        iou_threshold=iou_threshold,
        num_gt=num_gt,
        num_detections=best + 1,
    )


def side_by_side(
    image_rgb: np.ndarray,
    record: Dict,
    predictions: Instances,
    metadata,
    scale: float = 3.0,
    gap: int = 12,
    titles: Optional[Tuple[str, str]] = ("ground truth", "detections"),
) -> np.ndarray:
    """
    Ground truth (left) beside the detections (right), both drawn by Detectron2's ``Visualizer``
    at ``scale`` times the image's size, with labels sized for it.

    Args:
        image_rgb: (H, W, 3) uint8 image.
        record: the image's dataset dict (with ``annotations``).
        predictions: the detections to draw (``pred_boxes``, ``scores``, ``pred_classes``).
        metadata: the dataset's metadata (class names).
        scale: upscaling of the drawing (≥ 1).
        gap: white columns between the two panels.
        titles: written above the left and the right panel, or None for no title band.

    Returns:
        the (≈ scale·H [+ TITLE_HEIGHT], 2·scale·W + gap, 3) uint8 RGB picture.
    """
    from detectron2.utils.visualizer import Visualizer

    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}.")
    # Detectron2 sizes text from the unscaled image; small images need larger labels.
    font_scale = max(1.0, 480.0 / (scale * max(image_rgb.shape[:2])))
    gt = Visualizer(image_rgb, metadata, scale=scale, font_size_scale=font_scale)
    left = gt.draw_dataset_dict(record).get_image()
    pred = Visualizer(image_rgb, metadata, scale=scale, font_size_scale=font_scale)
    right = pred.draw_instance_predictions(predictions).get_image()
    height = max(left.shape[0], right.shape[0])

    def pad(panel: np.ndarray) -> np.ndarray:
        return np.pad(panel, ((0, height - panel.shape[0]), (0, 0), (0, 0)), constant_values=255)

    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    panels = np.concatenate([pad(left), spacer, pad(right)], axis=1)
    if not titles:
        return panels
    band = np.full((TITLE_HEIGHT, panels.shape[1], 3), 255, dtype=np.uint8)
    for x, title in ((0, titles[0]), (left.shape[1] + gap, titles[1])):
        cv2.putText(
            band,
            title,
            (x + 4, TITLE_HEIGHT - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([band, panels], axis=0)
