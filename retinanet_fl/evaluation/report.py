"""
The evaluation report: ``<report_dir>/index.html`` (opens in a browser without a server), its
PNG/JPG files and ``report.json``, written after every COCO-style evaluation. It shows per-class
figures, precision-recall curves at IoU .5 and .75, a confusion matrix, TIDE's error breakdown,
the worst and best validation images with ground truth and detections drawn, and the training
curves of the run (Detectron2's ``metrics.json``).
"""

import dataclasses
import html
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..label_fonts import find_label_fonts
from .analysis import (
    DEFAULT_SCORE_THRESHOLD,
    TIDE_ERRORS,
    TIDE_INSTALL,
    ClassSummary,
    ImageErrors,
    class_summaries,
    match_detections,
    tide_errors,
)
from .figures import (
    draw_gallery_image,
    plot_confusion_matrix,
    plot_precision_recall,
    plot_tide,
    plot_training_curves,
)

__all__ = ["REPORT_JSON", "write_report", "score_thresholds_from_report"]

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
GALLERY_SIZE = 8


def write_report(
    report_dir: str,
    coco_gt: COCO,
    coco_eval: Optional[COCOeval],
    detections: Sequence[Dict],
    class_names: Sequence[str],
    image_files: Dict[int, str],
    metrics_file: Optional[str] = None,
    title: str = "",
) -> str:
    """
    Write the report of one evaluation.

    Args:
        report_dir: the folder it goes to (created; its earlier report is replaced).
        coco_gt: the ground truth that was scored.
        coco_eval: its evaluated and accumulated COCOeval (bbox), None without detections.
        detections: the COCO-format results that were scored (dataset category ids).
        class_names: the names of the classes, in sorted category-id order.
        image_files: image id -> its file, for the gallery.
        metrics_file: Detectron2's ``metrics.json`` of the run, for the training curves.
        title: what was evaluated, e.g. the dataset's name.

    Returns:
        the path of ``index.html``.
    """
    os.makedirs(os.path.join(report_dir, "gallery"), exist_ok=True)
    summaries = class_summaries(coco_eval, coco_gt, class_names)
    thresholds = {
        s.category_id: DEFAULT_SCORE_THRESHOLD if s.f1_threshold is None else s.f1_threshold
        for s in summaries
    }
    matrix, image_errors = match_detections(coco_gt, detections, thresholds)
    tide = tide_errors(coco_gt, detections) if detections else None
    worst, best = _rank_images(image_errors)
    figures = {
        "pr": plot_precision_recall(report_dir, coco_eval, class_names),
        "confusion": plot_confusion_matrix(report_dir, matrix, class_names),
        "tide": plot_tide(report_dir, tide) if tide else None,
        "curves": plot_training_curves(report_dir, metrics_file),
    }
    fonts = find_label_fonts(class_names)
    gallery = {}
    for kind, images in (("worst", worst), ("best", best)):
        gallery[kind] = [
            draw_gallery_image(
                report_dir,
                kind,
                errors,
                coco_gt,
                detections,
                thresholds,
                image_files.get(errors.image_id),
                fonts,
            )
            for errors in images
        ]
    content = {
        "title": title,
        "classes": [dataclasses.asdict(s) for s in summaries],
        "confusion_matrix": {
            "iou": 0.5,
            "rows": "ground truth class, then background (false positives)",
            "columns": "predicted class, then background (missed objects)",
            "labels": [*class_names, "background"],
            "counts": matrix.tolist(),
        },
        "tide": tide,
        "worst_images": [dataclasses.asdict(e) for e in worst],
        "best_images": [dataclasses.asdict(e) for e in best],
    }
    with open(os.path.join(report_dir, REPORT_JSON), "w") as f:
        json.dump(_json_safe(content), f, indent=1)
    index = os.path.join(report_dir, "index.html")
    with open(index, "w") as f:
        f.write(_html(title, summaries, tide, figures, gallery, worst, best))
    logger.info(f"Evaluation report: {index}")
    return index


def score_thresholds_from_report(report_dir: str) -> Dict[str, float]:
    """
    Args:
        report_dir: a report's folder (or its ``report.json``).

    Returns:
        class name -> the F1-optimal score threshold of the report (classes without one left out).
    """
    path = report_dir if report_dir.endswith(".json") else os.path.join(report_dir, REPORT_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No evaluation report at {path}: evaluate the model first (train_net.py --eval-only "
            "writes OUTPUT_DIR/report/report.json), or give a fixed --score-threshold."
        )
    with open(path) as f:
        classes = json.load(f)["classes"]
    return {c["name"]: c["f1_threshold"] for c in classes if c["f1_threshold"] is not None}


def _rank_images(images: List[ImageErrors]):
    """The images with the most errors (ties: more objects first) and those with the most
    objects found without error."""
    with_errors = [e for e in images if e.num_errors]
    worst = sorted(with_errors, key=lambda e: (-e.num_errors, -e.num_gt, e.image_id))
    clean = [e for e in images if not e.num_errors and e.num_gt]
    best = sorted(clean, key=lambda e: (-e.correct, e.image_id))
    return worst[:GALLERY_SIZE], best[:GALLERY_SIZE]


def _json_safe(value):
    """NaN as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _number(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _class_rows(summaries: Sequence[ClassSummary]) -> str:
    rows = []
    for s in summaries:
        cells = [
            html.escape(s.name),
            str(s.category_id),
            str(s.num_gt),
            *(_number(getattr(s, key)) for key in ("AP", "AP50", "AP75", "APs", "APm", "APl")),
            _number(s.recall),
            _number(s.f1_threshold, 3),
            _number(100 * s.f1_precision),
            _number(100 * s.f1_recall),
        ]
        note = "" if s.num_gt else ' title="no ground truth of this class: AP undefined"'
        rows.append(f"<tr{note}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return "\n".join(rows)


def _image(path: Optional[str], alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}</em></p>"
    return f'<img src="{html.escape(path)}" alt="{html.escape(alt)}">'


def _gallery(paths: List[Optional[str]], images: List[ImageErrors], empty: str) -> str:
    if not images:
        return f"<p><em>{html.escape(empty)}</em></p>"
    cells = []
    for path, errors in zip(paths, images):
        caption = (
            f"image {errors.image_id}: {errors.num_gt} objects, {errors.correct} found, "
            f"{errors.wrong_class} wrong class, {errors.missed} missed, "
            f"{errors.background} on background"
        )
        cells.append(
            f"<figure>{_image(path, 'image file not found')}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return '<div class="gallery">' + "".join(cells) + "</div>"


def _tide_section(tide: Optional[Dict[str, float]], figure: Optional[str]) -> str:
    if tide is None:
        return (
            "<p><em>Not computed: no detections, or the tidecv library is not installed "
            f"({html.escape(TIDE_INSTALL)}).</em></p>"
        )
    rows = "".join(
        f"<tr><td>{html.escape(TIDE_ERRORS[key])}</td><td>{_number(value, 2)}</td></tr>"
        for key, value in tide.items()
    )
    return (
        "<p>The AP50 gained by fixing each kind of error (TIDE, Bolya et al. 2020, computed by "
        "tidecv).</p><table><tr><th>error</th><th>ΔAP50</th></tr>"
        + rows
        + "</table>"
        + _image(figure, "TIDE")
    )


_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
    "img{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:8px}"
    ".gallery figure{width:280px;margin:0}.gallery img{width:280px}"
)


def _html(title, summaries, tide, figures, gallery, worst, best) -> str:
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            "class",
            "id",
            "objects",
            "AP",
            "AP50",
            "AP75",
            "APs",
            "APm",
            "APl",
            "recall",
            "F1 threshold",
            "precision at it",
            "recall at it",
        )
    )
    missing = [s.name for s in summaries if not s.num_gt]
    missing_note = (
        f"<p>No ground truth in this set for: {html.escape(', '.join(missing))} (AP undefined).</p>"
        if missing
        else ""
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Evaluation report {html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>Evaluation report {html.escape(title)}</h1>
<h2>Per class</h2>
<p>COCO AP (percent) from COCOeval; recall averaged over IoU .5:.95 at 100 detections; the score
threshold maximising F1 at IoU .5 (used by the confusion matrix, the gallery and
<code>predict --score-threshold auto</code>).</p>
<table><tr>{header}</tr>
{_class_rows(summaries)}
</table>{missing_note}
<h2>Precision and recall</h2>{_image(figures["pr"], "no detections: no curves")}
<h2>Confusion matrix</h2>
<p>At IoU .5 and each class's F1 threshold: rows are the ground truth, columns the
predictions; the background row counts detections on no object, the background column missed
objects.</p>{_image(figures["confusion"], "confusion matrix")}
<h2>Errors (TIDE)</h2>{_tide_section(tide, figures["tide"])}
<h2>Worst images</h2>{_gallery(gallery["worst"], worst, "No image has an error.")}
<h2>Best images</h2>{_gallery(gallery["best"], best, "No image is free of errors.")}
<h2>Training</h2>{_image(figures["curves"], "no training metrics (metrics.json) for this run")}
</body></html>
"""
