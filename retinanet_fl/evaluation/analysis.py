"""
What the evaluation report shows, computed from what COCOeval already holds: per-class AP, recall
and the F1-optimal score threshold from its precision, recall and score arrays; a confusion matrix
and per-image errors from a one-to-one matching of detections to ground truth at IoU 0.5; and
TIDE's error breakdown (Bolya et al. 2020) from the ``tidecv`` library.
"""

import dataclasses
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pycocotools.mask import iou as box_iou

__all__ = [
    "ClassSummary",
    "ImageErrors",
    "class_summaries",
    "match_detections",
    "precision_recall_curves",
    "tide_errors",
]

logger = logging.getLogger(__name__)

# COCOeval's area ranges (all, small, medium, large) and the last maxDets (100).
_AREAS = {"": 0, "s": 1, "m": 2, "l": 3}
CONFUSION_IOU = 0.5
# The threshold of a class whose detections never reach a true positive at IoU 0.5.
DEFAULT_SCORE_THRESHOLD = 0.5


@dataclasses.dataclass
class ClassSummary:
    """One class's figures; AP values in percent (NaN where the class has no ground truth)."""

    name: str
    category_id: int
    num_gt: int
    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    recall: float
    # The score threshold that maximises F1 at IoU 0.5, with its precision and recall; None when
    # no detection of the class is a true positive.
    f1_threshold: Optional[float]
    f1_precision: float
    f1_recall: float


def _iou_index(coco_eval: COCOeval, iou: float) -> int:
    return int(np.flatnonzero(np.isclose(coco_eval.params.iouThrs, iou))[0])


def _mean_valid(values: np.ndarray) -> float:
    """The mean of COCOeval's entries that are not -1 (absent), in percent; NaN if none."""
    valid = values[values > -1]
    return float(np.mean(valid) * 100) if valid.size else float("nan")


def _f1_optimum(coco_eval: COCOeval, k: int) -> Tuple[Optional[float], float, float]:
    """(score threshold, precision, recall) at the best F1 of class ``k`` at IoU 0.5."""
    t = _iou_index(coco_eval, 0.5)
    precision = coco_eval.eval["precision"][t, :, k, 0, -1]
    scores = coco_eval.eval["scores"][t, :, k, 0, -1]
    recall = np.asarray(coco_eval.params.recThrs)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return None, 0.0, 0.0
    return float(scores[best]), float(precision[best]), float(recall[best])


def class_summaries(
    coco_eval: Optional[COCOeval], coco_gt: COCO, class_names: Sequence[str]
) -> List[ClassSummary]:
    """
    Args:
        coco_eval: evaluated and accumulated (bbox), or None when there were no detections.
        coco_gt: the ground truth it scored; its category ids sorted give the class order.
        class_names: K names, in that order.

    Returns:
        K summaries. With no detections every AP and recall is 0 where the class has ground truth.
    """
    category_ids = sorted(coco_gt.getCatIds())
    summaries = []
    for k, (category_id, name) in enumerate(zip(category_ids, class_names)):
        num_gt = sum(
            not annotation.get("iscrowd", 0)
            for annotation in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[category_id]))
        )
        if coco_eval is None:
            zero = 0.0 if num_gt else float("nan")
            values = dict(AP=zero, AP50=zero, AP75=zero, APs=zero, APm=zero, APl=zero)
            summaries.append(
                ClassSummary(
                    name,
                    category_id,
                    num_gt,
                    **values,
                    recall=zero,
                    f1_threshold=None,
                    f1_precision=0.0,
                    f1_recall=0.0,
                )
            )
            continue
        precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
        values = {
            f"AP{suffix}": _mean_valid(precision[:, :, k, area, -1])
            for suffix, area in _AREAS.items()
        }
        values["AP50"] = _mean_valid(precision[_iou_index(coco_eval, 0.5), :, k, 0, -1])
        values["AP75"] = _mean_valid(precision[_iou_index(coco_eval, 0.75), :, k, 0, -1])
        recall = _mean_valid(coco_eval.eval["recall"][:, k, 0, -1])
        threshold, f1_precision, f1_recall = _f1_optimum(coco_eval, k)
        summaries.append(
            ClassSummary(
                name,
                category_id,
                num_gt,
                **values,
                recall=recall,
                f1_threshold=threshold,
                f1_precision=f1_precision,
                f1_recall=f1_recall,
            )
        )
    return summaries


def precision_recall_curves(coco_eval: COCOeval, iou: float) -> Tuple[np.ndarray, np.ndarray]:
    """
    Returns:
        the recall thresholds ``(R,)`` and COCOeval's interpolated precision ``(K, R)`` at ``iou``
        (all areas, 100 detections); -1 where a class has no ground truth.
    """
    t = _iou_index(coco_eval, iou)
    return np.asarray(coco_eval.params.recThrs), coco_eval.eval["precision"][t, :, :, 0, -1].T


@dataclasses.dataclass
class ImageErrors:
    """An image's outcome at IoU 0.5 and the report's score thresholds."""

    image_id: int
    num_gt: int
    correct: int  # detections matched to a ground truth of their class
    wrong_class: int  # matched to a ground truth of another class
    missed: int  # ground truth matched by no detection
    background: int  # detections matched to no ground truth

    @property
    def num_errors(self) -> int:
        return self.wrong_class + self.missed + self.background


def _boxes(annotations: Sequence[Dict]) -> np.ndarray:
    return np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)


def _match_image(gt: Sequence[Dict], detections: Sequence[Dict]) -> List[Tuple[int, int]]:
    """One-to-one (gt index, detection index) pairs with IoU >= 0.5, highest IoU first."""
    if not gt or not detections:
        return []
    ious = box_iou(_boxes(detections).tolist(), _boxes(gt).tolist(), [0] * len(gt))
    ious = np.asarray(ious).reshape(len(detections), len(gt))
    pairs = sorted(
        ((ious[d, g], g, d) for d, g in zip(*np.nonzero(ious >= CONFUSION_IOU))), reverse=True
    )
    used_gt, used_detections, matches = set(), set(), []
    for _, g, d in pairs:
        if g not in used_gt and d not in used_detections:
            used_gt.add(g)
            used_detections.add(d)
            matches.append((g, d))
    return matches


def match_detections(
    coco_gt: COCO, detections: Sequence[Dict], score_thresholds: Dict[int, float]
) -> Tuple[np.ndarray, List[ImageErrors]]:
    """
    Match, in each image, the detections scoring at least their class's threshold to the
    non-crowd ground truth of any class: pairs with IoU >= 0.5, one-to-one, highest IoU first.

    Args:
        coco_gt: the ground truth.
        detections: COCO-format results (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``).
        score_thresholds: category id -> the score a detection of it needs.

    Returns:
        the ``(K + 1, K + 1)`` confusion matrix (rows: ground-truth class, then background;
        columns: predicted class, then background: a missed object), in sorted category-id
        order; and each image's errors.
    """
    category_ids = sorted(coco_gt.getCatIds())
    index = {category_id: k for k, category_id in enumerate(category_ids)}
    background = len(category_ids)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    kept_per_image: Dict[int, List[Dict]] = {}
    for detection in detections:
        if detection["score"] >= score_thresholds[detection["category_id"]]:
            kept_per_image.setdefault(detection["image_id"], []).append(detection)
    images = []
    for image_id in sorted(coco_gt.getImgIds()):
        gt = [a for a in coco_gt.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        kept = kept_per_image.get(image_id, [])
        matches = _match_image(gt, kept)
        errors = ImageErrors(image_id, len(gt), 0, 0, len(gt) - len(matches), 0)
        for g, d in matches:
            gt_class, predicted = index[gt[g]["category_id"]], index[kept[d]["category_id"]]
            matrix[gt_class, predicted] += 1
            if gt_class == predicted:
                errors.correct += 1
            else:
                errors.wrong_class += 1
        matched_gt = {g for g, _ in matches}
        matched_detections = {d for _, d in matches}
        for g, annotation in enumerate(gt):
            if g not in matched_gt:
                matrix[index[annotation["category_id"]], background] += 1
        for d, detection in enumerate(kept):
            if d not in matched_detections:
                matrix[background, index[detection["category_id"]]] += 1
                errors.background += 1
        images.append(errors)
    return matrix, images


# TIDE's error types, in its order, as the report names them.
TIDE_ERRORS = {
    "Cls": "classification",
    "Loc": "localisation",
    "Both": "both (class and box)",
    "Dupe": "duplicate",
    "Bkg": "background",
    "Miss": "missed",
}
TIDE_INSTALL = "pip install --no-deps tidecv==1.0.1 && pip install appdirs 'pandas<2.3' seaborn"


def tide_errors(coco_gt: COCO, detections: Sequence[Dict]) -> Optional[Dict[str, float]]:
    """
    TIDE's main errors at IoU 0.5, each as the AP50 (percent) gained by fixing it, from the
    ``tidecv`` library.

    Returns:
        error type (:data:`TIDE_ERRORS`' keys) -> dAP, or None when tidecv is not installed.
    """
    try:
        # tidecv sets seaborn's plot style when imported: keep it out of our figures.
        with matplotlib.rc_context():
            from tidecv import TIDE
            from tidecv.data import Data
    except ImportError:
        logger.warning(f"The report's TIDE error breakdown needs tidecv: {TIDE_INSTALL}")
        return None
    gt, predictions = Data("ground truth"), Data("detections")
    for image_id, image in coco_gt.imgs.items():
        gt.add_image(image_id, image.get("file_name", str(image_id)))
    for category in coco_gt.loadCats(coco_gt.getCatIds()):
        gt.add_class(category["id"], category["name"])
    for annotation in coco_gt.anns.values():
        if annotation.get("iscrowd", 0):
            gt.add_ignore_region(
                annotation["image_id"], annotation["category_id"], annotation["bbox"]
            )
        else:
            gt.add_ground_truth(
                annotation["image_id"], annotation["category_id"], annotation["bbox"]
            )
    for detection in detections:
        predictions.add_detection(
            detection["image_id"], detection["category_id"], detection["score"], detection["bbox"]
        )
    tide = TIDE()
    tide.evaluate(gt, predictions, mode=TIDE.BOX, name="detections")
    return {key: float(value) for key, value in tide.get_main_errors()["detections"].items()}
