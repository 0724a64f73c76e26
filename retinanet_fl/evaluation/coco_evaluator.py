"""
Box AP on the ground truth that training reads: Detectron2's COCOEvaluator, given the sanitised
dataset dicts as ground truth whenever the dataset's JSON would score something else.

A dataset whose JSON the sanitiser leaves unchanged and that COCOeval can score as it is (every
annotation has "iscrowd" and "area"), e.g. COCO val2017, is scored on its JSON exactly as
Detectron2 scores it. Any other (boxes dropped or clipped, fields missing, a Pascal VOC folder, a
dataset without a JSON) is scored on the sanitised dicts: what the sanitiser's warning describes.
One log line says which and why.
"""

import logging
import os
from typing import Dict, List, Optional

import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import COCOeval, COCOeval_opt

from ..data.sanitize import DatasetReport, load_dataset_dicts, sanitize_dataset_dicts
from .ground_truth import coco_from_dict, coco_ground_truth, incomplete_annotations
from .report import write_report

__all__ = ["ReportingCOCOEvaluator", "SanitizedCOCOEvaluator", "build_coco_evaluator"]

logger = logging.getLogger(__name__)


class ReportingCOCOEvaluator(COCOEvaluator):
    """
    Detectron2's COCOEvaluator for boxes which, after scoring, writes the report of
    :func:`~retinanet_fl.evaluation.report.write_report` into ``report_dir``, from the ground
    truth, the detections and the COCOeval it scored.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        report_dir: Optional[str] = None,
        metrics_file: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            dataset_name, kwargs: as COCOEvaluator's.
            report_dir: where the report goes; None writes none.
            metrics_file: the run's metrics.json, for the training curves.
        """
        super().__init__(dataset_name, **kwargs)
        self._set_report(dataset_name, report_dir, metrics_file)

    def _set_report(
        self, dataset_name: str, report_dir: Optional[str], metrics_file: Optional[str]
    ) -> None:
        self._dataset_name = dataset_name
        self._report_dir = report_dir
        self._metrics_file = metrics_file

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if iou_type == "bbox" and self._report_dir and class_names:
            detections = list(coco_eval.cocoDt.anns.values()) if coco_eval is not None else []
            image_root = self._metadata.get("image_root", "")
            image_files = {
                image_id: os.path.join(image_root, image["file_name"])
                for image_id, image in self._coco_api.imgs.items()
                if "file_name" in image
            }
            write_report(
                self._report_dir,
                self._coco_api,
                coco_eval,
                detections,
                class_names,
                image_files,
                metrics_file=self._metrics_file,
                title=self._dataset_name,
            )
        return results


class SanitizedCOCOEvaluator(ReportingCOCOEvaluator):
    """
    :class:`ReportingCOCOEvaluator` scoring a given COCO-format ground truth instead of the
    dataset's JSON; predictions, category ids, scoring and results are COCOEvaluator's.
    """

    def __init__(
        self,
        dataset_name: str,
        ground_truth: Dict,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        report_dir: Optional[str] = None,
        metrics_file: Optional[str] = None,
    ):
        """
        Args:
            dataset_name: the registered dataset (its metadata maps the category ids).
            ground_truth: the COCO-format dict to score, e.g. from :func:`coco_ground_truth`.
            output_dir, distributed: as COCOEvaluator's.
            report_dir, metrics_file: as :class:`ReportingCOCOEvaluator`'s.
        """
        self._set_report(dataset_name, report_dir, metrics_file)
        # Not COCOEvaluator.__init__: it reads the JSON its metadata names, or converts the
        # dataset's raw dicts into one. These are the attributes it sets for box AP.
        self._logger = logging.getLogger(COCOEvaluator.__module__)
        self._distributed = distributed
        self._output_dir = output_dir
        self._use_fast_impl = COCOeval_opt is not COCOeval
        self._max_dets_per_image = [1, 10, 100]  # COCO's
        self._tasks = ("bbox",)
        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        self._coco_api = coco_from_dict(ground_truth)
        self._do_evaluation = True
        self._kpt_oks_sigmas = ()


def _changes(report: DatasetReport) -> List[str]:
    """Returns: what the sanitiser changed in a dataset, e.g. ["2 boxes dropped"]."""
    changes = []
    if report.num_dropped:
        changes.append(f"{report.num_dropped} boxes dropped")
    if report.num_clipped:
        changes.append(f"{report.num_clipped} boxes clipped to the image")
    return changes


def build_coco_evaluator(
    dataset_name: str,
    output_dir: Optional[str],
    report_dir: Optional[str] = None,
    metrics_file: Optional[str] = None,
) -> ReportingCOCOEvaluator:
    """
    Args:
        dataset_name: a registered dataset of evaluator type "coco", or a ``coco:`` / ``voc:``
            dataset by path.
        output_dir: where COCOEvaluator writes the predictions.
        report_dir, metrics_file: the evaluation report's (see :class:`ReportingCOCOEvaluator`).

    Returns:
        a :class:`ReportingCOCOEvaluator` on the dataset's JSON (Detectron2's scoring) when
        that is what training reads and COCOeval can score it as it is; else a
        :class:`SanitizedCOCOEvaluator` on the sanitised dataset dicts (the same
        :func:`load_dataset_dicts` and sanitiser as training).
    """
    dataset_dicts, report = load_dataset_dicts(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    sanitized = sanitize_dataset_dicts(dataset_dicts, report, len(metadata.thing_classes))
    json_file = metadata.get("json_file")
    reasons = _changes(report) if json_file else ["the dataset has no COCO JSON"]
    if not reasons:
        evaluator = ReportingCOCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            output_dir=output_dir,
            report_dir=report_dir,
            metrics_file=metrics_file,
        )
        reasons = incomplete_annotations(evaluator._coco_api.dataset.get("annotations", []))
        if not reasons:
            logger.info(
                f"Evaluating {dataset_name} on {json_file} as it is: the sanitiser changes "
                "nothing in it and every annotation has 'iscrowd' and 'area'."
            )
            return evaluator
    scored = "" if not json_file else f", not on {os.path.basename(json_file)} as it is"
    logger.info(
        f"Evaluating {dataset_name} on the ground truth that training reads (the sanitised "
        f"dataset){scored}: {'; '.join(reasons)}."
    )
    return SanitizedCOCOEvaluator(
        dataset_name,
        coco_ground_truth(sanitized, metadata),
        output_dir=output_dir,
        report_dir=report_dir,
        metrics_file=metrics_file,
    )
