"""
Online hard example mining (paper Table 1d), ``MODEL.RETINANET_FL.CLS_LOSS "ohem"``: cross
entropy over the examples that survive NMS among the anchors, scored by their loss.
"""

import math

import torch
from detectron2.config import configurable
from detectron2.layers import nms
from torch import Tensor, nn

from ..layers.closed_form import check_kernel
from ..layers.focal_loss import check_alpha, sigmoid_focal_loss_from_labels
from .cls_losses import ALPHA_KEY, CLS_LOSS_REGISTRY, KERNEL_KEY, flatten_logits, kernel_from_config

__all__ = ["OHEMClsLoss", "ohem_select"]


def ohem_select(
    example_losses: Tensor,
    gt_labels: Tensor,
    anchors: Tensor,
    *,
    num_classes: int,
    batch_size: int,
    nms_thresh: float,
    neg_pos_ratio: float = 0.0,
) -> Tensor:
    """
    Online hard example mining for one image: NMS among the non-ignored examples, scored by their
    loss, on their anchor boxes; then the highest-loss survivors.

    Greedy NMS visits boxes by decreasing score, so the survivors among the k highest-scoring boxes
    do not depend on the others. NMS therefore runs on a prefix of the sorted examples that doubles
    until it holds enough survivors: the result equals NMS over all examples, at a fraction of the
    cost when most of the ~100k examples are easy.

    Args:
        example_losses: (R,) loss of each anchor, summed over the classes.
        gt_labels: (R,) int64: class in [0, K), K for background, -1 for ignored (never kept).
        anchors: (R, 4) XYXY anchor boxes.
        num_classes: K.
        batch_size: B > 0, the most examples kept.
        nms_thresh: IoU above which a lower-loss example is suppressed.
        neg_pos_ratio: r > 0 keeps at most max(1, ⌊B / (1 + r)⌋) positives and at most
            ⌊r · (positives kept)⌋ negatives, B in total (the paper's "OHEM 1:3" is r = 3; as
            in SSD, an image without positive survivors keeps nothing); 0 keeps the top B
            survivors.

    Returns:
        (M,) int64 indices of the kept anchors, M ≤ B, by decreasing loss.
    """
    candidates = torch.nonzero(gt_labels >= 0).squeeze(1)
    order = torch.argsort(example_losses[candidates], descending=True, stable=True)
    candidates = candidates[order]
    is_pos = (gt_labels >= 0) & (gt_labels < num_classes)
    max_pos = max(1, math.floor(batch_size / (1 + neg_pos_ratio))) if neg_pos_ratio > 0 else 0

    prefix = min(len(candidates), 2 * batch_size)
    while True:
        head = candidates[:prefix]
        # Scores by rank, so NMS visits the boxes in exactly this order (ties included).
        rank_scores = torch.arange(prefix, 0, -1, device=head.device, dtype=torch.float32)
        survivors = head[nms(anchors[head].float(), rank_scores, nms_thresh)]
        exhausted = prefix == len(candidates)
        if neg_pos_ratio <= 0:
            if len(survivors) >= batch_size or exhausted:
                return survivors[:batch_size]
        else:
            pos, neg = survivors[is_pos[survivors]], survivors[~is_pos[survivors]]
            needed_neg = min(math.floor(neg_pos_ratio * max_pos), batch_size - max_pos)
            if (len(pos) >= max_pos and len(neg) >= needed_neg) or exhausted:
                pos = pos[:max_pos]
                num_neg = min(math.floor(neg_pos_ratio * len(pos)), batch_size - len(pos))
                kept = torch.cat([pos, neg[:num_neg]])
                return kept[torch.argsort(example_losses[kept], descending=True, stable=True)]
        prefix = min(2 * prefix, len(candidates))


@CLS_LOSS_REGISTRY.register_as("ohem")
class OHEMClsLoss(nn.Module):
    """
    Cross entropy over the examples kept by online hard example mining (paper Table 1d).

    Per image, every non-ignored anchor is an example scored by its cross entropy summed over the
    K classes (with the configured α: set ``MODEL.RETINANET.FOCAL_LOSS_ALPHA`` < 0 for plain CE).
    NMS runs over the examples on their **anchor boxes**: they are available before any decoding
    and do not move during training, and the paper does not say which boxes it used. The B
    highest-loss survivors (optionally at 1 positive : r negatives) are kept, and the loss is the
    cross entropy summed over the kept examples and their K classes only; easy examples get no
    gradient at all. The meta-architecture divides this sum by the same normalizer as for the
    focal loss (the number of foreground anchors), so the loss weights of FL and OHEM compare.
    """

    RETINANET_FL_KEYS = ("OHEM_BATCH_SIZE_PER_IMAGE", "OHEM_NMS_THRESH", "OHEM_NEG_POS_RATIO")
    BACKGROUND_LOGIT = False

    @configurable
    def __init__(
        self,
        *,
        batch_size_per_image: int = 128,
        nms_thresh: float = 0.7,
        neg_pos_ratio: float = 0.0,
        alpha: float = 0.25,
        kernel: str = "compiled",
    ):
        """
        Args:
            batch_size_per_image: B > 0, examples kept per image (the paper: 128, 256, 512).
            nms_thresh: IoU threshold in (0, 1] of the NMS among examples (the paper: 0.5, 0.7).
            neg_pos_ratio: negatives per positive among the kept examples (3 for "OHEM 1:3"),
                0 for no ratio.
            alpha: α in [0, 1] for α-balanced CE, or negative for plain CE.
            kernel: "compiled" or "eager".
        """
        super().__init__()
        if not (isinstance(batch_size_per_image, int) and batch_size_per_image > 0):
            raise ValueError(
                "batch_size_per_image (MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE) must be an "
                f"integer > 0, got {batch_size_per_image!r}."
            )
        if not (0 < nms_thresh <= 1):
            raise ValueError(
                "nms_thresh (MODEL.RETINANET_FL.OHEM_NMS_THRESH) must be in (0, 1], "
                f"got {nms_thresh}."
            )
        if not (math.isfinite(neg_pos_ratio) and neg_pos_ratio >= 0):
            raise ValueError(
                "neg_pos_ratio (MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO) must be a finite number "
                f">= 0 (0 for no ratio, 3 for OHEM 1:3), got {neg_pos_ratio}."
            )
        self.batch_size_per_image = batch_size_per_image
        self.nms_thresh = float(nms_thresh)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.alpha = check_alpha(alpha, name=f"alpha ({ALPHA_KEY})")
        self.kernel = check_kernel(kernel, name=f"kernel ({KERNEL_KEY})")

    @classmethod
    def from_config(cls, cfg):
        return {
            "batch_size_per_image": cfg.MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE,
            "nms_thresh": cfg.MODEL.RETINANET_FL.OHEM_NMS_THRESH,
            "neg_pos_ratio": cfg.MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO,
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "kernel": kernel_from_config(cfg),
        }

    def forward(self, pred_logits: Tensor, gt_labels: Tensor, anchors: Tensor) -> Tensor:
        """
        Args:
            pred_logits: (N, R, K) classification logits of all levels, any float dtype.
            gt_labels: (N, R) int64: class in [0, K), K for background, -1 for ignored.
            anchors: (R, 4) XYXY anchors of all levels, concatenated like the logits.

        Returns:
            fp32 scalar: cross entropy summed over the kept examples of the batch.
        """
        logits, labels = flatten_logits(pred_logits, gt_labels)
        num_images, num_anchors, num_classes = pred_logits.shape
        if anchors.shape != (num_anchors, 4):
            raise ValueError(
                f"anchors must be (R, 4) = ({num_anchors}, 4), got {tuple(anchors.shape)}."
            )
        kept = []
        for image_index in range(num_images):
            image_logits, image_labels = pred_logits[image_index], gt_labels[image_index]
            with torch.no_grad():
                example_losses = sigmoid_focal_loss_from_labels(
                    image_logits.detach(),
                    image_labels,
                    alpha=self.alpha,
                    gamma=0.0,
                    reduction="none",
                    kernel=self.kernel,
                ).sum(dim=1)
            kept_anchors = ohem_select(
                example_losses,
                image_labels,
                anchors,
                num_classes=num_classes,
                batch_size=self.batch_size_per_image,
                nms_thresh=self.nms_thresh,
                neg_pos_ratio=self.neg_pos_ratio,
            )
            kept.append(kept_anchors + image_index * num_anchors)
        kept = torch.cat(kept)
        return sigmoid_focal_loss_from_labels(
            logits[kept],
            labels[kept],
            alpha=self.alpha,
            gamma=0.0,
            reduction="sum",
            kernel=self.kernel,
        )

    def extra_repr(self) -> str:
        return (
            f"batch_size_per_image={self.batch_size_per_image}, nms_thresh={self.nms_thresh}, "
            f"neg_pos_ratio={self.neg_pos_ratio}, alpha={self.alpha}, kernel={self.kernel!r}"
        )
