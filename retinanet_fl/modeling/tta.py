"""
Test-time augmentation (``TEST.AUG``) for dense detectors: the model runs on each augmented copy
of an image (Detectron2's ``DatasetMapperTTA``: each of ``TEST.AUG.MIN_SIZES`` up to
``TEST.AUG.MAX_SIZE``, each also flipped when ``TEST.AUG.FLIP``), the detections are mapped back
to the image by inverting the augmentation's transforms, merged by class-wise NMS
(``MODEL.RETINANET.NMS_THRESH_TEST``), and the best ``TEST.DETECTIONS_PER_IMAGE`` kept.
"""

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from detectron2.layers import batched_nms
from detectron2.modeling import DatasetMapperTTA
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DenseDetectorWithTTA"]


class DenseDetectorWithTTA(nn.Module):
    """
    A dense detector (our ``FocalLossRetinaNet``) with test-time augmentation; called like the
    model in inference: ``list[dict]`` in (each with "image", and "height"/"width" of the original
    image when "image" was resized), ``[{"instances": Instances}]`` out, in original pixels.
    """

    def __init__(
        self,
        cfg,
        model: nn.Module,
        tta_mapper: Optional[Callable[[Dict], List[Dict]]] = None,
    ):
        """
        Args:
            cfg: the model's config (TEST.AUG, NMS threshold, detections per image).
            model: the detector, possibly inside DistributedDataParallel.
            tta_mapper: dataset dict → its augmented copies, each with "image" and "transforms"
                (original image → augmented image); default ``DatasetMapperTTA(cfg)``.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        if not isinstance(model, DenseDetector):
            raise TypeError(
                f"TEST.AUG works with dense detectors (MODEL.META_ARCHITECTURE "
                f"'FocalLossRetinaNet'), got {type(model).__name__}."
            )
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.nms_thresh = cfg.MODEL.RETINANET.NMS_THRESH_TEST
        self.max_detections_per_image = cfg.TEST.DETECTIONS_PER_IMAGE

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """
        Args:
            batched_inputs: images as the model takes them in inference.

        Returns:
            per image, {"instances": at most ``TEST.DETECTIONS_PER_IMAGE`` merged detections}.
        """
        return [{"instances": self._inference_one_image(inputs)} for inputs in batched_inputs]

    @torch.no_grad()
    def _inference_one_image(self, inputs: Dict) -> Instances:
        height = inputs.get("height", inputs["image"].shape[1])
        width = inputs.get("width", inputs["image"].shape[2])
        augmented = self.tta_mapper(dict(inputs, height=height, width=width))
        # Each copy's detections in its own pixels, so that its transforms map them back.
        outputs = self.model(
            [
                {
                    "image": copy["image"],
                    "height": copy["image"].shape[1],
                    "width": copy["image"].shape[2],
                }
                for copy in augmented
            ]
        )
        boxes, scores, classes = [], [], []
        for copy, output in zip(augmented, outputs):
            instances = output["instances"]
            pred_boxes = instances.pred_boxes.tensor
            original = copy["transforms"].inverse().apply_box(pred_boxes.cpu().numpy())
            boxes.append(torch.as_tensor(np.asarray(original), dtype=torch.float32))
            scores.append(instances.scores.cpu())
            classes.append(instances.pred_classes.cpu())
        merged = Instances(
            (height, width),
            pred_boxes=Boxes(torch.cat(boxes)),
            scores=torch.cat(scores),
            pred_classes=torch.cat(classes),
        )
        merged.pred_boxes.clip(merged.image_size)
        keep = batched_nms(
            merged.pred_boxes.tensor, merged.scores, merged.pred_classes, self.nms_thresh
        )
        return merged[keep[: self.max_detections_per_image]].to(self.model.device)
