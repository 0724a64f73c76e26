"""The report's pictures, drawn with matplotlib (plots) and Detectron2's Visualizer (images)."""

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from ..data.mapper import read_image  # noqa: E402
from ..label_fonts import LabelFonts, set_label_families  # noqa: E402
from .analysis import TIDE_ERRORS, ImageErrors, precision_recall_curves  # noqa: E402

__all__ = [
    "draw_gallery_image",
    "plot_confusion_matrix",
    "plot_precision_recall",
    "plot_tide",
    "plot_training_curves",
]

GT_COLOR, DETECTION_COLOR = (0.1, 0.75, 0.1), (0.9, 0.1, 0.1)
# Series of metrics.json the training curves show, by panel.
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg")
VALIDATION_PREFIX = "validation/"


def _save(figure, report_dir: str, name: str) -> str:
    figure.savefig(os.path.join(report_dir, name), dpi=90, bbox_inches="tight")
    plt.close(figure)
    return name


def plot_precision_recall(
    report_dir: str, coco_eval: Optional[COCOeval], class_names: Sequence[str]
) -> Optional[str]:
    """One panel per class: COCOeval's precision against recall at IoU .5 and .75."""
    if coco_eval is None:
        return None
    columns = min(4, len(class_names))
    rows = math.ceil(len(class_names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for iou, style in ((0.5, "-"), (0.75, "--")):
        recall, precision = precision_recall_curves(coco_eval, iou)
        for k, axis in enumerate(axes.flat[: len(class_names)]):
            if (precision[k] > -1).any():
                axis.plot(recall, np.clip(precision[k], 0, 1), style, label=f"IoU {iou}")
    for k, axis in enumerate(axes.flat):
        if k >= len(class_names):
            axis.axis("off")
            continue
        axis.set(title=class_names[k], xlim=(0, 1), ylim=(0, 1.02), xlabel="recall")
        axis.set_ylabel("precision")
    axes.flat[0].legend(loc="lower left")
    figure.tight_layout()
    return _save(figure, report_dir, "precision_recall.png")


def plot_confusion_matrix(report_dir: str, matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The counts, rows ground truth and columns predictions, background last."""
    labels = [*class_names, "background"]
    size = max(4.0, 0.6 * len(labels) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(np.log1p(matrix), cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axis.text(column, row, str(count), ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set(xlabel="predicted", ylabel="ground truth")
    return _save(figure, report_dir, "confusion_matrix.png")


def plot_tide(report_dir: str, tide: Dict[str, float]) -> str:
    """A bar per TIDE error type: the AP50 gained by fixing it."""
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.bar([TIDE_ERRORS[key] for key in tide], list(tide.values()), color="tab:orange")
    axis.set_ylabel("ΔAP50 if fixed")
    axis.tick_params(axis="x", rotation=30)
    return _save(figure, report_dir, "tide.png")


def _read_metrics(metrics_file: Optional[str]) -> List[Dict]:
    """The records of a metrics.json; a line cut by a killed run is skipped."""
    if not metrics_file or not os.path.isfile(metrics_file):
        return []
    records = []
    with open(metrics_file) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _series(records: List[Dict], key: str):
    points = [(r["iteration"], r[key]) for r in records if key in r and "iteration" in r]
    return tuple(zip(*points)) if points else ((), ())


def plot_training_curves(report_dir: str, metrics_file: Optional[str]) -> Optional[str]:
    """Losses (training and validation), learning rate and AP at each evaluation."""
    records = _read_metrics(metrics_file)
    if not any("total_loss" in r for r in records):
        return None
    figure, (losses, lr, ap) = plt.subplots(1, 3, figsize=(14, 3.5))
    for key in LOSS_KEYS:
        losses.plot(*_series(records, key), label=key)
        validation = _series(records, VALIDATION_PREFIX + key)
        if validation[0]:
            losses.plot(*validation, "o--", label=VALIDATION_PREFIX + key)
    losses.set(title="losses", xlabel="iteration", yscale="log")
    losses.legend(fontsize=7)
    lr.plot(*_series(records, "lr"))
    lr.set(title="learning rate", xlabel="iteration")
    ap_keys = sorted({k for r in records for k in r if k.endswith("/AP")})
    for key in ap_keys:
        ap.plot(*_series(records, key), "o-", label=key)
    ap.set(title="AP at each evaluation", xlabel="iteration")
    if ap_keys:
        ap.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, report_dir, "training_curves.png")


def draw_gallery_image(
    report_dir: str,
    kind: str,
    errors: ImageErrors,
    coco_gt: COCO,
    detections: Sequence[Dict],
    score_thresholds: Dict[int, float],
    image_file: Optional[str],
    fonts: LabelFonts,
) -> Optional[str]:
    """
    Draw an image's ground truth (green, named) and its detections above their class's threshold
    (red, named with the score) into ``gallery/<kind>_<image id>.jpg``; ``fonts`` (of the class
    names, :func:`~retinanet_fl.label_fonts.find_label_fonts`) labels them in any script.

    Returns:
        the picture's path relative to the report, or None when the image cannot be read.
    """
    if image_file is None:
        return None
    try:
        image = read_image(image_file, "RGB")
    except OSError:
        return None
    index = {category_id: k for k, category_id in enumerate(sorted(coco_gt.getCatIds()))}
    gt = [a for a in coco_gt.imgToAnns[errors.image_id] if not a.get("iscrowd", 0)]
    kept = [
        d
        for d in detections
        if d["image_id"] == errors.image_id and d["score"] >= score_thresholds[d["category_id"]]
    ]
    # Small images are upscaled so that the names stay legible.
    visualizer = Visualizer(image, scale=max(1.0, 320 / max(image.shape[:2])))
    for annotations, color, label in (
        (gt, GT_COLOR, lambda a: fonts.labels[index[a["category_id"]]]),
        (
            kept,
            DETECTION_COLOR,
            lambda d: f"{fonts.labels[index[d['category_id']]]} {d['score']:.2f}",
        ),
    ):
        if annotations:
            boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64)
            boxes[:, 2:] += boxes[:, :2]
            visualizer.overlay_instances(
                boxes=boxes,
                labels=[label(a) for a in annotations],
                assigned_colors=[color] * len(annotations),
            )
    set_label_families(visualizer.output, fonts)
    name = os.path.join("gallery", f"{kind}_{errors.image_id}.jpg")
    visualizer.output.save(os.path.join(report_dir, name))
    return name
