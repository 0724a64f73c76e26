"""The RetinaNet head (paper §4, Figure 3 (c)(d)).

Two towers of ``NUM_CONVS`` 3×3 convs with ReLU, one for classification and one for boxes, shared
across pyramid levels and sharing no weights with each other; the classification tower ends in a
3×3 conv with ``A × K`` outputs (``A × (K + 1)``, the last logit of each anchor for background,
for the softmax loss), the box tower in one with ``A × 4``. Module names are those of
Detectron2's ``RetinaNetHead`` (``cls_subnet``, ``bbox_subnet``, ``cls_score``, ``bbox_pred``) so
its checkpoints load unchanged.
"""

import math
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import CycleBatchNormList, ShapeSpec, get_norm
from detectron2.modeling.anchor_generator import build_anchor_generator
from torch import Tensor, nn

from .cls_losses import cls_loss_has_background_logit

__all__ = ["RetinaNetFocalHead", "check_cls_score_checkpoint", "prior_bias", "softmax_prior_bias"]

# Detectron2's per-level batch norm: one set of statistics per pyramid level, shared convs.
_PER_LEVEL_BN = {"BN": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm}
# Values of MODEL.RETINANET.NORM: "" (none), per-level batch norm, or one of Detectron2's get_norm.
NORMS = ("", *_PER_LEVEL_BN, "FrozenBN", "GN", "LN")
# The state-dict key (a buffer) that marks a softmax head's checkpoint: K + 1 logits per anchor.
BACKGROUND_LOGIT_KEY = "cls_background_logit"
# Detectron2's get_norm("GN") uses 32 groups.
_GN_GROUPS = 32


def prior_bias(prior_prob: float) -> float:
    """
    The classification bias that makes every anchor start as foreground with confidence π
    (paper §4.1, "Initialization"): ``b = −log((1 − π) / π)``.

    Args:
        prior_prob: π, in the open interval (0, 1).

    Returns:
        the bias value.
    """
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(
            f"MODEL.RETINANET.PRIOR_PROB must be in the open interval (0, 1) (0.01 in the paper), "
            f"got {prior_prob}; set MODEL.RETINANET_FL.USE_PRIOR_INIT False for a zero bias."
        )
    return -math.log((1.0 - prior_prob) / prior_prob)


def softmax_prior_bias(prior_prob: float, num_classes: int) -> float:
    """
    The background bias of a (K + 1)-way softmax head whose foreground biases are 0, so that
    every anchor starts as background with probability 1 − π (each class π / K), as in Detectron:
    ``b = log(K (1 − π) / π)``.

    Args:
        prior_prob: π, in the open interval (0, 1).
        num_classes: K ≥ 1.

    Returns:
        the background bias.
    """
    return math.log(num_classes) - prior_bias(prior_prob)


class RetinaNetFocalHead(nn.Module):
    """
    Classification and box subnets of RetinaNet, applied to every pyramid level.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        num_convs: int = 4,
        norm: str = "",
        prior_prob: float = 0.01,
        use_prior_init: bool = True,
        background_logit: bool = False,
    ):
        """
        Args:
            input_shape: shape of each input feature map; all must have the same channels.
            num_classes: K, the number of object classes (no background class).
            num_anchors: A, anchors per location.
            num_convs: 3×3 conv + ReLU layers in each tower (4 in the paper).
            norm: normalization after each tower conv: "" (the paper), "GN", or "BN"/"SyncBN"
                (separate statistics per level, as in Detectron2).
            prior_prob: π of the classification bias initialisation.
            use_prior_init: False initialises the classification bias to 0 (the "no prior"
                ablation); π is then unused.
            background_logit: predict K + 1 logits per anchor, the last for background (the
                softmax loss, ``MODEL.RETINANET_FL.CLS_LOSS "softmax_focal"``); the prior then
                sets the background bias to ``log(K (1 − π) / π)`` and the class biases to 0.
        """
        super().__init__()
        _validate_head_params(input_shape, num_classes, num_anchors, num_convs, norm)
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.background_logit = background_logit
        self.num_logits = num_classes + int(background_logit)

        channels = input_shape[0].channels
        self._num_levels = len(input_shape)
        self.cls_subnet = self._make_tower(channels, num_convs, norm)
        self.bbox_subnet = self._make_tower(channels, num_convs, norm)
        self.cls_score = nn.Conv2d(channels, num_anchors * self.num_logits, 3, padding=1)
        if background_logit:
            # Marks softmax checkpoints, which check_cls_score_checkpoint tells from sigmoid ones.
            self.register_buffer(BACKGROUND_LOGIT_KEY, torch.tensor(True))
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        if use_prior_init:
            with torch.no_grad():
                bias = self.cls_score.bias.view(num_anchors, self.num_logits)
                if background_logit:
                    bias[:, num_classes] = softmax_prior_bias(prior_prob, num_classes)
                else:
                    bias.fill_(prior_bias(prior_prob))

    def _make_tower(self, channels: int, num_convs: int, norm: str) -> nn.Sequential:
        layers: List[nn.Module] = []
        for _ in range(num_convs):
            layers.append(nn.Conv2d(channels, channels, 3, padding=1))
            if norm in _PER_LEVEL_BN:
                layers.append(
                    CycleBatchNormList(
                        length=self._num_levels, bn_class=_PER_LEVEL_BN[norm], num_features=channels
                    )
                )
            elif norm:
                layers.append(get_norm(norm, channels))
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"The head shares its convs across levels, so every level needs the same number of "
                f"anchors per location; MODEL.ANCHOR_GENERATOR gives {num_anchors}."
            )
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors[0],
            "num_convs": cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
            "use_prior_init": cfg.MODEL.RETINANET_FL.USE_PRIOR_INIT,
            "background_logit": cls_loss_has_background_logit(cfg),
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: per-level feature maps, finest first, each ``(N, C, Hi, Wi)``.

        Returns:
            list[Tensor]: per-level classification logits, each ``(N, A×K, Hi, Wi)``
                (``(N, A×(K+1), Hi, Wi)`` with a background logit).
            list[Tensor]: per-level box deltas ``(dx, dy, dw, dh)``, each ``(N, A×4, Hi, Wi)``.
        """
        if len(features) != self._num_levels:
            raise ValueError(
                f"The head was built for {self._num_levels} feature levels, got {len(features)}."
            )
        logits = [self.cls_score(self.cls_subnet(x)) for x in features]
        box_deltas = [self.bbox_pred(self.bbox_subnet(x)) for x in features]
        return logits, box_deltas

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_cls_score_checkpoint(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_cls_score_checkpoint(
    head: RetinaNetFocalHead, state_dict: Dict[str, Tensor], prefix: str
) -> None:
    """
    Raise a ValueError when a checkpoint's ``cls_score`` was trained for the same K classes with
    the other kind of loss: K logits per anchor (a sigmoid loss) for a head with K + 1 (softmax),
    or the reverse. Softmax checkpoints are told apart by their ``BACKGROUND_LOGIT_KEY`` buffer;
    a checkpoint without it is a sigmoid one (Detectron2's and Detectron's included). Other class
    counts (fine-tuning on another dataset) are left to Detectron2's checkpointer, which skips
    the mismatched layer with a warning.

    Args:
        head: the head being loaded.
        state_dict: the checkpoint's parameters.
        prefix: the head's prefix in ``state_dict``, e.g. "head.".
    """
    weight = state_dict.get(prefix + "cls_score.weight")
    checkpoint_background = prefix + BACKGROUND_LOGIT_KEY in state_dict
    if weight is None or checkpoint_background == head.background_logit:
        return
    checkpoint_logits = weight.shape[0] / head.num_anchors
    if checkpoint_logits - int(checkpoint_background) != head.num_classes:
        return
    kinds = {
        True: "K + 1 logits per anchor (the softmax loss, CLS_LOSS 'softmax_focal')",
        False: "K logits per anchor (a sigmoid loss)",
    }
    raise ValueError(
        f"The checkpoint's {prefix}cls_score has {int(checkpoint_logits)} logits per anchor, but "
        f"this head has K = MODEL.RETINANET.NUM_CLASSES = {head.num_classes} classes with "
        f"{kinds[head.background_logit]}, i.e. {head.num_logits} logits per anchor: the "
        f"checkpoint was trained with {kinds[checkpoint_background]}. Set "
        "MODEL.RETINANET_FL.CLS_LOSS to the loss it was trained with, or load other weights."
    )


def _validate_head_params(input_shape, num_classes, num_anchors, num_convs, norm):
    if len(input_shape) == 0:
        raise ValueError("The head needs at least one input feature (MODEL.RETINANET.IN_FEATURES).")
    channels = {shape.channels for shape in input_shape}
    if len(channels) != 1:
        raise ValueError(
            f"All feature levels must have the same channels for the shared head, got {channels}."
        )
    if num_classes < 1:
        raise ValueError(f"MODEL.RETINANET.NUM_CLASSES must be >= 1, got {num_classes}.")
    if num_anchors < 1:
        raise ValueError(
            f"The anchor generator must give >= 1 anchor per location, got {num_anchors}."
        )
    if num_convs < 0:
        raise ValueError(
            f"MODEL.RETINANET.NUM_CONVS must be >= 0 (4 in the paper), got {num_convs}."
        )
    if norm not in NORMS:
        raise ValueError(
            f"MODEL.RETINANET.NORM must be one of {NORMS} ('' in the paper), got {norm!r}."
        )
    if norm == "GN" and num_convs > 0 and input_shape[0].channels % _GN_GROUPS:
        raise ValueError(
            f"MODEL.RETINANET.NORM 'GN' uses {_GN_GROUPS} groups, so the feature channels "
            f"(MODEL.FPN.OUT_CHANNELS) must be a multiple of {_GN_GROUPS}, got "
            f"{input_shape[0].channels}."
        )
