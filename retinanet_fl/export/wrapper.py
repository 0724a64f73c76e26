"""
The detector as one function of one image, the form every export takes: a uint8 image
``(3, H, W)`` in → boxes, scores, classes out, with everything in between inside the graph.

``torch.export`` (hence the ONNX and ``.pt2`` files) rejects Python branches on sizes that depend
on the data, which Detectron2's ``Boxes``/``Instances`` post-processing takes (``numel() == 0``
checks, torchvision's choice of NMS by candidate count). :class:`ExportableDetector` runs the
model's own backbone, head, anchor generator and box decoding, and the same post-processing
written with plain tensor operations; tests/export checks its detections against the eager
model's.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import Tensor, nn
from torchvision.ops import nms

__all__ = ["ExportableDetector", "TracedDetector", "OUTPUT_NAMES"]

# The graph's outputs, in order.
OUTPUT_NAMES = ("boxes", "scores", "classes")


class ExportableDetector(nn.Module):
    """
    Wraps a detector in inference mode: ``forward(image)`` runs its whole inference path —
    normalisation, padding to the backbone's size divisibility, backbone, head, anchors, per-level
    top-k and score threshold, box decoding, removal of non-finite boxes, class-wise NMS, the best
    ``TEST.DETECTIONS_PER_IMAGE``, clipping to the image and removal of empty boxes — with the
    settings of the wrapped model (``MODEL.RETINANET.SCORE_THRESH_TEST`` …).

    The image is taken at the resolution the network sees: resizing to the test size
    (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``) is the caller's, as with Detectron2's
    ``DefaultPredictor``; ``retinanet_fl.predict`` does it.
    """

    def __init__(self, model: DenseDetector, precision: str = "fp32"):
        """
        Args:
            model: a Detectron2 dense detector (our ``FocalLossRetinaNet``), put in eval mode.
            precision: "fp32", or "bf16" to run the backbone and the head under bfloat16
                autocast (the post-processing stays fp32).
        """
        super().__init__()
        if not isinstance(model, DenseDetector) or not hasattr(model, "box2box_transform"):
            raise TypeError(
                f"Export takes a RetinaNet (MODEL.META_ARCHITECTURE 'FocalLossRetinaNet'), got "
                f"{type(model).__name__}."
            )
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"Unknown precision {precision!r}; choose 'fp32' or 'bf16'.")
        self.model = model
        self.precision = precision
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
        height, width = image.shape[1], image.shape[2]
        bf16 = self.precision == "bf16"
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=bf16):
            features = self.model.backbone(self._normalize_and_pad(image))
            features = [features[name] for name in self.model.head_in_features]
            logits, deltas = self.model.head(features)
        scores, deltas = self.dense_predictions(logits, deltas)
        anchors = self.grid_anchors(features)
        boxes, scores, classes = self.top_candidates(anchors, scores, deltas)
        boxes, scores, classes = self.class_wise_nms(boxes, scores, classes)
        return clip_and_drop_empty(boxes, scores, classes, height, width)

    def _normalize_and_pad(self, image: Tensor) -> Tensor:
        """What ``preprocess_image`` does to one image: ``(1, 3, H', W')`` float32."""
        model = self.model
        normalized = (image.to(torch.float32) - model.pixel_mean) / model.pixel_std
        constraints = getattr(model.backbone, "padding_constraints", None) or {}
        divisor = constraints.get("size_divisibility", model.backbone.size_divisibility)
        square = constraints.get("square_size", 0)
        height, width = image.shape[1], image.shape[2]
        if square > 0:
            padded_height, padded_width = square, square
        elif divisor > 1:
            # Written as a multiple of the divisor, so that torch.export sees each stride-2 level
            # at exactly half the size of the one before (as the FPN's top-down sums need).
            padded_height = (height + divisor - 1) // divisor * divisor
            padded_width = (width + divisor - 1) // divisor * divisor
        else:
            padded_height, padded_width = height, width
        padding = (0, padded_width - width, 0, padded_height - height)
        return F.pad(normalized, padding)[None]

    def grid_anchors(self, features: List[Tensor]) -> List[Tensor]:
        """
        The anchor generator's anchors of each level, ``(Hi×Wi×A, 4)``, computed from integer
        grids: Detectron2's float ``arange`` would give them a length that ``torch.export`` cannot
        tell from the feature sizes. The values are the same (tests/export checks it).
        """
        generator = self.model.anchor_generator
        cell_anchors = [buffer for _, buffer in generator.cell_anchors.named_buffers()]
        anchors = []
        for feature, stride, cells in zip(features, generator.strides, cell_anchors):
            start = generator.offset * stride
            xs, ys = (
                torch.arange(size, device=cells.device).to(cells.dtype) * stride + start
                for size in (feature.shape[3], feature.shape[2])
            )
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cells.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def dense_predictions(
        self, logits: List[Tensor], deltas: List[Tensor]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            logits, deltas: the head's outputs per level, ``(1, A×K, Hi, Wi)`` and
                ``(1, A×4, Hi, Wi)``.

        Returns:
            per level, the class probabilities ``(Hi×Wi×A, K)`` and the box deltas
            ``(Hi×Wi×A, 4)`` of the image, in fp32.
        """
        model = self.model
        num_logits = model.num_classes + int(getattr(model, "background_logit", False))
        scores = []
        for level_logits in logits:
            level_logits = per_anchor(level_logits, num_logits).float()
            if num_logits > model.num_classes:  # the softmax head: background last, dropped
                scores.append(level_logits.softmax(dim=1)[:, : model.num_classes])
            else:
                scores.append(level_logits.sigmoid())
        return scores, [per_anchor(level_deltas, 4).float() for level_deltas in deltas]

    def top_candidates(
        self, anchors: List[Tensor], scores: List[Tensor], deltas: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Per level, the ``test_topk_candidates`` best (anchor, class) pairs scoring above
        ``test_score_thresh``, decoded; all levels concatenated, non-finite boxes dropped.

        The eager model thresholds, then takes the top-k of what is left; taking the top-k first
        (its size known from the shapes alone) and thresholding it keeps the same pairs in the
        same order, and the only size that depends on the data is the final mask's.
        """
        model = self.model
        all_boxes, all_scores, all_classes = [], [], []
        for level_anchors, level_scores, level_deltas in zip(anchors, scores, deltas):
            flat_scores = level_scores.reshape(-1)
            num_topk = torch.sym_min(model.test_topk_candidates, flat_scores.shape[0])
            top_scores, flat_idxs = flat_scores.topk(num_topk)
            anchor_idxs = torch.div(flat_idxs, model.num_classes, rounding_mode="floor")
            all_boxes.append(
                model.box2box_transform.apply_deltas(
                    level_deltas.index_select(0, anchor_idxs),
                    level_anchors.index_select(0, anchor_idxs),
                )
            )
            all_scores.append(top_scores)
            all_classes.append(flat_idxs % model.num_classes)
        boxes, scores, classes = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_classes)
        keep = (scores > model.test_score_thresh) & torch.isfinite(boxes).all(dim=1)
        return boxes[keep], scores[keep], classes[keep]

    def class_wise_nms(
        self, boxes: Tensor, scores: Tensor, classes: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        NMS within each class at ``test_nms_thresh``, the best ``max_detections_per_image`` kept,
        best first. The boxes of each class are shifted by a multiple of the span of all boxes, so
        that boxes of different classes never overlap and one NMS serves all classes.

        Two sentinel boxes, in classes of their own and scoring below every candidate, join the
        NMS and are dropped from the end of its result: ``torch.export`` takes torchvision's NMS
        to keep at least two boxes (its fake kernel's size has that lower bound), which an
        exported graph would otherwise assert at run time.
        """
        model = self.model
        num_classes = model.num_classes
        sentinels = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2, device=boxes.device)
        sentinel_classes = torch.tensor([num_classes, num_classes + 1], device=boxes.device)
        all_boxes = torch.cat([boxes, sentinels])
        all_classes = torch.cat([classes, sentinel_classes])
        all_scores = torch.cat([scores, scores.new_full((2,), -1.0)])
        # The sentinels' corners join the coordinates: with no candidate there is still a span.
        coordinates = all_boxes.reshape(-1)
        span = coordinates.max() - coordinates.min() + 1
        shifted = all_boxes + (all_classes.to(boxes.dtype) * span)[:, None]
        keep = nms(shifted, all_scores, model.test_nms_thresh)
        keep = keep[: keep.shape[0] - 2][: model.max_detections_per_image]
        return boxes[keep], scores[keep], classes[keep]


class TracedDetector(nn.Module):
    """
    Legacy (TorchScript): the eager model's own inference on one image, the form
    ``torch.jit.trace`` records. Detectron2's decoding has a tracing branch for the per-level
    top-k and torchvision scripts its class-wise NMS while tracing, so the trace serves any image
    size and any number of candidates.
    """

    def __init__(self, model: DenseDetector):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The same contract as :meth:`ExportableDetector.forward`."""
        instances = self.model([{"image": image.to(torch.float32)}])[0]["instances"]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def per_anchor(predictions: Tensor, values_per_anchor: int) -> Tensor:
    """
    Detectron2's ``permute_to_N_HWA_K`` for the first image, written so that ``torch.export``
    needs no guard on the level's size (its ``view`` after ``permute`` asks whether H or W is 1).

    Args:
        predictions: ``(1, A×V, H, W)``.
        values_per_anchor: V.

    Returns:
        ``(H×W×A, V)``, anchors in Detectron2's order (position-major, then anchor).
    """
    return (
        predictions[0]
        .permute(1, 2, 0)
        .clone(memory_format=torch.contiguous_format)
        .view(-1, values_per_anchor)
    )


def clip_and_drop_empty(
    boxes: Tensor, scores: Tensor, classes: Tensor, height: int, width: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Detectron2's ``detector_postprocess`` at the network's resolution: boxes clipped to the image,
    those left with no width or height dropped.
    """
    x = boxes[:, 0::2].clamp(min=0, max=width)
    y = boxes[:, 1::2].clamp(min=0, max=height)
    boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], scores[keep], classes[keep]
