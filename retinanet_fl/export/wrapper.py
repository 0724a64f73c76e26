"""
The detector as one function of one image, the form TorchScript and ONNX export: a uint8 image
``(3, H, W)`` in → boxes, scores, classes out, with everything in between inside the graph.
"""

from typing import Tuple

import torch
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import Tensor, nn

__all__ = ["ExportableDetector", "OUTPUT_NAMES"]

# The graph's outputs, in order.
OUTPUT_NAMES = ("boxes", "scores", "classes")


class ExportableDetector(nn.Module):
    """
    Wraps a detector in inference mode: ``forward(image)`` runs its whole eager inference path —
    normalisation, padding to the backbone's size divisibility, backbone, head, anchors, per-level
    score threshold and top-k, box decoding, class-wise NMS, the best
    ``TEST.DETECTIONS_PER_IMAGE``, clipping to the image and removal of empty boxes.

    The image is taken at the resolution the network sees: resizing to the test size
    (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``) is the caller's, as with Detectron2's
    ``DefaultPredictor``; ``retinanet_fl.predict`` does it.
    """

    def __init__(self, model: DenseDetector):
        """
        Args:
            model: a Detectron2 dense detector (our ``FocalLossRetinaNet``), put in eval mode.
        """
        super().__init__()
        if not isinstance(model, DenseDetector):
            raise TypeError(
                f"Export takes a Detectron2 DenseDetector (MODEL.META_ARCHITECTURE "
                f"'FocalLossRetinaNet'), got {type(model).__name__}."
            )
        self.model = model
        self.eval()

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            image: ``(3, H, W)`` uint8, channels in the model's ``INPUT.FORMAT`` (BGR or RGB),
                any H and W (padded inside to the backbone's size divisibility).

        Returns:
            boxes: ``(D, 4)`` float32 XYXY in the image's pixels.
            scores: ``(D,)`` float32, best first.
            classes: ``(D,)`` int64 class ids.
        """
        instances = self.model([{"image": image.to(torch.float32)}])[0]["instances"]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes
