"""Detectron2's COCOEvaluator, which also writes the evaluation report of each evaluation."""

import os
from typing import Optional

from detectron2.evaluation import COCOEvaluator

from .report import write_report

__all__ = ["ReportingCOCOEvaluator"]


class ReportingCOCOEvaluator(COCOEvaluator):
    """
    ``COCOEvaluator`` for boxes that, after scoring, writes the report of
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
