"""FocalLossRetinaNet: RetinaNet (paper §4) as a Detectron2 meta-architecture.

Training: backbone (ResNet-FPN, P3–P7) → head → anchors → anchor labelling (Detectron2's
``Matcher`` on IoU computed in chunks of anchors, or ATSS: :mod:`.matching`) → classification loss
from ``CLS_LOSS_REGISTRY`` (in fp32; given the IoU of the predicted boxes when it asks for it) +
box loss (Detectron2's dense box-regression helper), both divided by the loss normalizer.
Inference: per level, score threshold then top-k (Detectron2's selection, done with 1-D indices:
:func:`.postprocess.top_candidates`), decoding; boxes decoded to NaN or infinity dropped;
class-wise NMS over all levels; the best ``max_detections_per_image``; rescaling to the requested
output size.

With ``LOSS_NORMALIZER "ema"``, ``ALLOW_LOW_QUALITY_MATCHES True`` and the focal loss, this model
computes what Detectron2's ``RetinaNet`` computes (tests/modeling/test_meta_arch.py proves it), and
its parameter names are Detectron2's, so ``DetectionCheckpointer`` loads Detectron2 RetinaNet
checkpoints; Detectron (Caffe2) RetinaNet ``.pkl`` files load too (see :mod:`.caffe2_names`).
"""

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from ..data.classes import with_num_classes
from .autocast import keep_tiny_top_block_in_fp32
from .caffe2_names import rename_caffe2_retinanet_keys
from .cls_losses import build_cls_loss, cls_loss_has_background_logit, iou_targets
from .frozen_bn import fold_frozen_batchnorm
from .head import RetinaNetFocalHead
from .loss_normalizer import (
    EMA_NORMALIZER_START,
    LOSS_NORMALIZERS,
    ema_normalizer,
    num_pos_normalizer,
    put_scalar,
)
from .matching import AnchorMatcher, build_anchor_matcher_from_config, label_anchors
from .postprocess import class_scores, drop_non_finite_boxes, top_candidates

__all__ = ["FocalLossRetinaNet"]

logger = logging.getLogger(__name__)

BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


@META_ARCH_REGISTRY.register()
class FocalLossRetinaNet(DenseDetector):
    """
    RetinaNet trained with a classification loss from ``CLS_LOSS_REGISTRY`` (focal loss by default).

    Inference is scriptable (``detectron2.export.scripting_with_instances``) and traceable
    (``TracingAdapter``); see ``retinanet_fl/export``.
    """

    # The loss is used in training only, which TorchScript never compiles; skipping it keeps the
    # losses free to use Python that TorchScript rejects.
    __jit_ignored_attributes__ = ["cls_loss"]

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: AnchorMatcher,
        num_classes: int,
        cls_loss: nn.Module,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        loss_normalizer: str = "ema",
        loss_normalizer_momentum: float = 0.9,
        iou_chunk_size: int = 100000,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        background_logit: bool = False,
        channels_last: bool = True,
        fold_frozen_bn: bool = True,
        compile_dense: bool = False,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        """
        Args:
            backbone: a Detectron2 backbone giving the ``head_in_features`` maps.
            head: maps per-level features to logits ``(N, A×K, Hi, Wi)`` and deltas
                ``(N, A×4, Hi, Wi)``, e.g. :class:`RetinaNetFocalHead`.
            head_in_features: backbone outputs used by the head, finest first (P3 … P7).
            anchor_generator: gives per-level anchors (list[Boxes]) from the feature maps.
            box2box_transform: box ↔ delta encoding.
            anchor_matcher: labels anchors: Detectron2's ``Matcher`` from their IoU with GT boxes
                (thresholds, labels and whether to allow low-quality matches), or an
                :class:`.matching.ATSSMatcher`.
            num_classes: K.
            cls_loss: ``cls_loss(pred_logits (N, R, K), gt_labels (N, R), anchors (R, 4))`` → the
                summed classification loss; ``gt_labels`` holds K for background, -1 for ignored.
                A loss whose ``NEEDS_IOU_TARGETS`` is True also gets ``iou_targets (N, R)``, see
                :func:`.cls_losses.iou_targets`.
            box_reg_loss_type: "smooth_l1" (the paper), "giou", "diou" or "ciou".
            smooth_l1_beta: β of the smooth L1 loss; 0 is the L1 loss.
            loss_normalizer: "num_pos" (the paper: foreground anchors in the batch, averaged over
                workers, at least 1) or "ema" (Detectron2: moving average of the per-worker count,
                starting at 100).
            loss_normalizer_momentum: momentum of the "ema" normalizer.
            iou_chunk_size: anchors per IoU chunk in labelling.
            test_score_thresh: per-level score threshold before top-k (0.05).
            test_topk_candidates: per-level candidates kept after the threshold (1000).
            test_nms_thresh: IoU threshold of the class-wise NMS (0.5).
            max_detections_per_image: detections kept per image after NMS (100).
            background_logit: the head predicts K + 1 logits per anchor, the last for background
                (the softmax loss): scores are the softmax's K class probabilities, background
                dropped; False: K logits, scores are their sigmoids.
            channels_last: keep the backbone's and head's weights (hence their activations) in the
                channels-last memory format.
            fold_frozen_bn: run each convolution followed by a ``FrozenBatchNorm2d`` as one
                convolution (:mod:`.frozen_bn`): the same function with fewer passes over memory.
            compile_dense: compile the backbone and the head with ``torch.compile`` (labelling,
                losses and post-processing stay eager). Channels-last: two compiles (the first
                size, then one graph for every size); contiguous: one per image size in training.
            pixel_mean, pixel_std: image normalisation, see :class:`DenseDetector`.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        _validate_meta_arch_params(
            num_classes=num_classes,
            box_reg_loss_type=box_reg_loss_type,
            smooth_l1_beta=smooth_l1_beta,
            loss_normalizer=loss_normalizer,
            loss_normalizer_momentum=loss_normalizer_momentum,
            iou_chunk_size=iou_chunk_size,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
        )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.cls_loss = cls_loss
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_normalizer_type = loss_normalizer
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.iou_chunk_size = iou_chunk_size
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.background_logit = background_logit
        if fold_frozen_bn:
            fold_frozen_batchnorm(self.backbone)
        if channels_last:
            # The images need no conversion: a convolution with channels-last weights gives
            # channels-last outputs, so every layer after the stem runs in that format.
            self.backbone.to(memory_format=torch.channels_last)
            self.head.to(memory_format=torch.channels_last)
        if compile_dense:
            _compile_dense_part(self.backbone, self.head, channels_last)
        # A buffer, so that the moving average is saved in checkpoints and restored on resume.
        self.register_buffer("loss_normalizer_ema", torch.tensor(EMA_NORMALIZER_START))

    @classmethod
    def from_config(cls, cfg):
        # NUM_CLASSES 0 ("the data's") resolved here too, for configs merged by hand and built
        # with Detectron2's build_model or DefaultPredictor.
        cfg = with_num_classes(cfg)
        backbone = build_backbone(cfg)
        keep_tiny_top_block_in_fp32(backbone)
        backbone_shape = backbone.output_shape()
        in_features = list(cfg.MODEL.RETINANET.IN_FEATURES)
        missing = [f for f in in_features if f not in backbone_shape]
        if missing or not in_features:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES = {in_features} must be a non-empty subset of the "
                f"backbone's outputs {sorted(backbone_shape)}, e.g. ['p3', 'p4', 'p5', 'p6', 'p7']."
            )
        feature_shapes = [backbone_shape[f] for f in in_features]
        anchor_generator = build_anchor_generator(cfg, feature_shapes)
        return {
            "backbone": backbone,
            "head": RetinaNetFocalHead(cfg, feature_shapes),
            "head_in_features": in_features,
            "anchor_generator": anchor_generator,
            "box2box_transform": build_box2box_transform(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "anchor_matcher": build_anchor_matcher_from_config(
                cfg, anchor_generator.num_cell_anchors[0]
            ),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "cls_loss": build_cls_loss(cfg),
            "box_reg_loss_type": cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
            "loss_normalizer": cfg.MODEL.RETINANET_FL.LOSS_NORMALIZER,
            "loss_normalizer_momentum": cfg.MODEL.RETINANET_FL.LOSS_NORMALIZER_MOMENTUM,
            "iou_chunk_size": cfg.MODEL.RETINANET_FL.IOU_CHUNK_SIZE,
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "background_logit": cls_loss_has_background_logit(cfg),
            "channels_last": cfg.MODEL.RETINANET_FL.CHANNELS_LAST,
            "fold_frozen_bn": cfg.MODEL.RETINANET_FL.FOLD_FROZEN_BN,
            "compile_dense": cfg.MODEL.RETINANET_FL.COMPILE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + int(self.background_logit), 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            anchors: per-level anchors, each ``(Hi×Wi×A, 4)``.
            gt_instances: N images' ground truth, with ``gt_boxes`` and ``gt_classes``.

        Returns:
            Tensor: ``(N, R)`` int64 labels over all levels' anchors: a class in [0, K) for
                foreground, K for background, -1 for ignored.
            list[Tensor]: N tensors ``(R, 4)``, the matched GT box of each anchor (meaningful for
                foreground anchors only).
        """
        return label_anchors(
            anchors,
            gt_instances,
            self.anchor_matcher,
            self.num_classes,
            self.iou_chunk_size,
        )

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: Tensor,
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: per-level anchors, each ``(Hi×Wi×A, 4)``.
            pred_logits: per-level logits, each ``(N, Hi×Wi×A, K)``.
            gt_labels: ``(N, R)``, see :meth:`label_anchors`.
            pred_anchor_deltas: per-level deltas, each ``(N, Hi×Wi×A, 4)``.
            gt_boxes: N tensors ``(R, 4)``, see :meth:`label_anchors`.

        Returns:
            dict with "loss_cls" and "loss_box_reg", each summed over anchors and divided by the
            loss normalizer.
        """
        num_images = gt_labels.shape[0]
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        normalizer = self._loss_normalizer(num_pos_anchors)
        put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        put_scalar("loss_normalizer", normalizer)

        # The loss sums ~100k terms per image, most of them tiny: fp16 would lose them.
        with torch.autocast(device_type=gt_labels.device.type, enabled=False):
            all_anchors = Boxes.cat(anchors).tensor
            if getattr(self.cls_loss, "NEEDS_IOU_TARGETS", False):
                targets = iou_targets(
                    all_anchors, pred_anchor_deltas, gt_boxes, pos_mask, self.box2box_transform
                )
                loss_cls = self.cls_loss(
                    cat(pred_logits, dim=1).float(), gt_labels, all_anchors, targets
                )
            else:
                loss_cls = self.cls_loss(cat(pred_logits, dim=1).float(), gt_labels, all_anchors)
            loss_box_reg = _dense_box_regression_loss(
                anchors,
                self.box2box_transform,
                [deltas.float() for deltas in pred_anchor_deltas],
                gt_boxes,
                pos_mask,
                box_reg_loss_type=self.box_reg_loss_type,
                smooth_l1_beta=self.smooth_l1_beta,
            )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    def _loss_normalizer(self, num_pos_anchors: int) -> float:
        """The summed losses' divisor, see :mod:`.loss_normalizer`; updates the "ema" buffer."""
        if self.loss_normalizer_type == "num_pos":
            return num_pos_normalizer(num_pos_anchors, self.device)
        value = ema_normalizer(
            self.loss_normalizer_ema.item(), num_pos_anchors, self.loss_normalizer_momentum
        )
        self.loss_normalizer_ema.fill_(value)
        return value

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes + int(self.background_logit), 4]
        )
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors,
                [
                    class_scores(logits[img_idx], self.num_classes, self.background_logit)
                    for logits in pred_logits
                ],
                [deltas[img_idx] for deltas in pred_anchor_deltas],
                image_size,
            )
            for img_idx, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self,
        anchors: List[Boxes],
        pred_scores: List[Tensor],
        pred_deltas: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Args:
            anchors: per-level anchors, each ``(Hi×Wi×A, 4)``.
            pred_scores: per-level class probabilities, each ``(Hi×Wi×A, K)``.
            pred_deltas: per-level box deltas, each ``(Hi×Wi×A, 4)``.
            image_size: (height, width) of the image as fed to the network.

        Returns:
            at most ``max_detections_per_image`` detections, best first, with "pred_boxes",
            "scores" and "pred_classes"; boxes decoded to NaN or infinity are dropped.
        """
        # Per level: keep (anchor, class) pairs above the threshold, then the top-k of them.
        candidates = self._decode_multi_level_predictions(
            anchors,
            pred_scores,
            pred_deltas,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        candidates = drop_non_finite_boxes(candidates)
        keep = batched_nms(
            candidates.pred_boxes.tensor,
            candidates.scores,
            candidates.pred_classes,
            self.test_nms_thresh,
        )
        return candidates[keep[: self.max_detections_per_image]]

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Detectron2's per-level decoding with a faster candidate selection (see
        :func:`.postprocess.top_candidates`); its outputs are Detectron2's, bit for bit.

        Args:
            anchors: the level's anchors, ``(R, 4)``.
            pred_scores: ``(R, K)`` class probabilities.
            pred_deltas: ``(R, 4)`` box deltas.
            score_thresh: pairs scoring ``<=`` it are dropped.
            topk_candidates: candidates kept at most.
            image_size: (height, width) of the image as fed to the network.

        Returns:
            at most ``topk_candidates`` candidates, best first, with "pred_boxes", "scores" and
            "pred_classes".
        """
        scores, anchor_idxs, class_idxs = top_candidates(pred_scores, score_thresh, topk_candidates)
        pred_boxes = self.box2box_transform.apply_deltas(
            pred_deltas.index_select(0, anchor_idxs), anchors.tensor.index_select(0, anchor_idxs)
        )
        return Instances(
            image_size, pred_boxes=Boxes(pred_boxes), scores=scores, pred_classes=class_idxs
        )

    # ------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_caffe2_retinanet_keys(state_dict, prefix, self.head)
        # Detectron2 RetinaNet checkpoints have no normalizer buffer: start the average afresh,
        # as Detectron2 does, instead of reporting a missing key.
        state_dict.setdefault(
            prefix + "loss_normalizer_ema", self.loss_normalizer_ema.detach().clone()
        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def build_box2box_transform(weights: Sequence[float]) -> Box2BoxTransform:
    """
    Detectron2's ``Box2BoxTransform``, after checking the weights: decoding divides by them.

    Args:
        weights: (wx, wy, ww, wh), finite and > 0, e.g. [1.0, 1.0, 1.0, 1.0].
    """
    values = [float(w) for w in weights]
    if len(values) != 4 or any(not (math.isfinite(w) and w > 0) for w in values):
        raise ValueError(
            f"MODEL.RETINANET.BBOX_REG_WEIGHTS must be 4 finite numbers > 0 (wx, wy, ww, wh; "
            f"Detectron2's default: [1.0, 1.0, 1.0, 1.0]), got {list(weights)}."
        )
    return Box2BoxTransform(weights=tuple(values))


def _compile_dense_part(backbone: nn.Module, head: nn.Module, channels_last: bool) -> None:
    """
    Compile ``backbone`` and ``head`` in place (their parameter names, hence checkpoints, stay the
    eager model's).

    Inductor lays convolutions out channels-last only in graphs that hold a forward convolution,
    so on its own it gives the backward graphs fixed strides and recompiles them for every padded
    image size; forcing its layout optimisation keeps them channels-last, and a training run
    compiles twice (the first size, then one dynamic-shape graph for all sizes).
    """
    if not channels_last:
        logger.warning(
            "MODEL.RETINANET_FL.COMPILE with CHANNELS_LAST False compiles the backbone and head "
            "again for every new image size in training; set MODEL.RETINANET_FL.CHANNELS_LAST "
            "True (the default) to compile them once for all sizes."
        )
    options = {"force_layout_optimization": True}
    backbone.compile(options=options)
    head.compile(options=options)


def _validate_meta_arch_params(
    *,
    num_classes: int,
    box_reg_loss_type: str,
    smooth_l1_beta: float,
    loss_normalizer: str,
    loss_normalizer_momentum: float,
    iou_chunk_size: int,
    test_score_thresh: float,
    test_topk_candidates: int,
    test_nms_thresh: float,
    max_detections_per_image: int,
) -> None:
    rf, r = "MODEL.RETINANET_FL.", "MODEL.RETINANET."
    # fmt: off
    checks = [
        (num_classes >= 1, r + "NUM_CLASSES", num_classes, ">= 1"),
        (box_reg_loss_type in BOX_REG_LOSS_TYPES, r + "BBOX_REG_LOSS_TYPE", box_reg_loss_type,
         f"one of {BOX_REG_LOSS_TYPES}"),
        (math.isfinite(smooth_l1_beta) and smooth_l1_beta >= 0, r + "SMOOTH_L1_LOSS_BETA",
         smooth_l1_beta, ">= 0 (0 is the L1 loss)"),
        (loss_normalizer in LOSS_NORMALIZERS, rf + "LOSS_NORMALIZER", loss_normalizer,
         f"one of {LOSS_NORMALIZERS}"),
        (0.0 <= loss_normalizer_momentum < 1.0, rf + "LOSS_NORMALIZER_MOMENTUM",
         loss_normalizer_momentum, "in [0, 1)"),
        (iou_chunk_size >= 1, rf + "IOU_CHUNK_SIZE", iou_chunk_size, ">= 1"),
        (0.0 <= test_score_thresh < 1.0, r + "SCORE_THRESH_TEST", test_score_thresh, "in [0, 1)"),
        (test_topk_candidates >= 1, r + "TOPK_CANDIDATES_TEST", test_topk_candidates, ">= 1"),
        (0.0 < test_nms_thresh <= 1.0, r + "NMS_THRESH_TEST", test_nms_thresh, "in (0, 1]"),
        (max_detections_per_image >= 1, "TEST.DETECTIONS_PER_IMAGE", max_detections_per_image,
         ">= 1"),
    ]
    # fmt: on
    for ok, key, value, allowed in checks:
        if not ok:
            raise ValueError(f"{key} must be {allowed}, got {value!r}.")
