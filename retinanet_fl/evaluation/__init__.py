"""Evaluation: box AP on the same ground truth that training reads."""

from .coco_evaluator import SanitizedCOCOEvaluator, build_coco_evaluator  # noqa: F401
from .ground_truth import coco_ground_truth  # noqa: F401
