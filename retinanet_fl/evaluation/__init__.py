"""
Evaluation: box AP on the same ground truth that training reads, and the report written with
every evaluation (:mod:`.report`).
"""

from .coco_evaluator import (  # noqa: F401
    ReportingCOCOEvaluator,
    SanitizedCOCOEvaluator,
    build_coco_evaluator,
)
from .ground_truth import coco_ground_truth  # noqa: F401
from .report import score_thresholds_from_report, write_report  # noqa: F401
