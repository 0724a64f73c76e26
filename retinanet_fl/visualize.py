"""
Pictures and curves of a trained detector, for the demo: the score threshold to draw detections at
(the F1-optimal one on a validation set), ground truth beside the detections at a readable size,
and the training curves from Detectron2's ``metrics.json``.
"""

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou

logger = logging.getLogger(__name__)

TITLE_HEIGHT = 28  # pixels of the band with the panels' titles

__all__ = [
    "ThresholdChoice",
    "f1_optimal_threshold",
    "side_by_side",
    "plot_training_curves",
    "read_metrics",
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


def read_metrics(path: Path) -> List[Dict]:
    """
    Returns:
        the records of Detectron2's ``metrics.json`` (one JSON object per line), lines cut short
        by an interruption skipped.
    """
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def plot_training_curves(
    metrics_path: Path,
    output: Path,
    keys: Sequence[str] = ("total_loss", "loss_cls", "loss_box_reg"),
) -> Optional[Path]:
    """
    Plot the losses (and the learning rate, on a second axis) against the iteration.

    Args:
        metrics_path: Detectron2's ``metrics.json``.
        output: the PNG to write.
        keys: the loss entries to plot.

    Returns:
        ``output``, or None without matplotlib (the ``tools`` extra), which the detector does not
        need.
    """
    try:
        import matplotlib
    except ImportError:
        logger.warning("No training curves: matplotlib is not installed (pip install '.[tools]').")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if "iteration" in r and keys[0] in r]
    if not records:
        raise ValueError(f"{metrics_path} holds no training records with '{keys[0]}'.")
    iterations = [r["iteration"] for r in records]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for key in keys:
        values = [r.get(key, math.nan) for r in records]
        ax.plot(iterations, values, label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of the logging window)")
    ax.grid(alpha=0.3)
    if any("lr" in r for r in records):
        lr_axis = ax.twinx()
        lr_axis.plot(iterations, [r.get("lr", math.nan) for r in records], "k:", label="lr")
        lr_axis.set_ylabel("learning rate")
        handles = ax.get_legend_handles_labels()
        extra = lr_axis.get_legend_handles_labels()
        ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8)
    else:
        ax.legend(fontsize=8)
    evals = [r for r in read_metrics(metrics_path) if "bbox/AP" in r]
    title = "Training curves"
    if evals:
        title += f" (final AP {evals[-1]['bbox/AP']:.1f})"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
