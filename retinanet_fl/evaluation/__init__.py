"""The evaluation report written with every COCO-style evaluation (see :mod:`.report`)."""

from .evaluator import ReportingCOCOEvaluator  # noqa: F401
from .report import score_thresholds_from_report, write_report  # noqa: F401
