"""The RetinaNet head (paper §4, Figure 3 (c)(d)): Detectron2's ``RetinaNetHead`` with the paper's
"no prior" initialisation and an optional background logit for the softmax focal loss.

The modules are Detectron2's (``cls_subnet``, ``bbox_subnet``, ``cls_score``, ``bbox_pred``), so
its checkpoints load unchanged.
"""

import math
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import Tensor

from .cls_losses import cls_loss_has_background_logit

__all__ = ["RetinaNetFocalHead", "check_cls_score_checkpoint", "prior_bias", "softmax_prior_bias"]

# Values of MODEL.RETINANET.NORM: "" (none), per-level batch norm, or one of Detectron2's get_norm.
NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "LN")
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


class RetinaNetFocalHead(RetinaNetHead):
    """
    Detectron2's RetinaNet head, whose classification bias can start at 0 instead of the prior
    (the "no prior" ablation), and which can predict K + 1 logits per anchor, the last for
    background (the softmax loss, ``MODEL.RETINANET_FL.CLS_LOSS "softmax_focal"``).
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
            num_convs: 3×3 conv + ReLU layers in each tower (4 in the paper), ≥ 1.
            norm: normalization after each tower conv, one of ``NORMS``: "" (the paper), "GN", or
                "BN"/"SyncBN" (separate statistics per level, as in Detectron2).
            prior_prob: π of the classification bias initialisation.
            use_prior_init: False initialises the classification bias to 0 (the "no prior"
                ablation); π is then unused.
            background_logit: predict K + 1 logits per anchor, the last for background; the
                prior then sets the background bias to ``log(K (1 − π) / π)`` and the class
                biases to 0.
        """
        _check_head_params(input_shape, num_classes, num_convs, norm)
        if use_prior_init:
            prior_bias(prior_prob)  # validates π before Detectron2 takes its logarithm
        num_logits = num_classes + int(background_logit)
        # Detectron2 sets every class bias to −log((1 − π) / π), which π = 1/2 makes 0: the "no
        # prior" ablation, and the class logits of the softmax head.
        sigmoid_prior = use_prior_init and not background_logit
        super().__init__(
            input_shape=input_shape,
            num_classes=num_logits,
            num_anchors=num_anchors,
            conv_dims=[input_shape[0].channels] * num_convs,
            norm=norm,
            prior_prob=prior_prob if sigmoid_prior else 0.5,
        )
        self.num_classes, self.num_anchors, self.num_logits = num_classes, num_anchors, num_logits
        self.background_logit = background_logit
        if background_logit:
            # Marks softmax checkpoints, which check_cls_score_checkpoint tells from sigmoid ones.
            self.register_buffer(BACKGROUND_LOGIT_KEY, torch.tensor(True))
            if use_prior_init:
                with torch.no_grad():
                    bias = self.cls_score.bias.view(num_anchors, num_logits)
                    bias[:, num_classes] = softmax_prior_bias(prior_prob, num_classes)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        del ret["conv_dims"]
        return {
            **ret,
            "num_convs": cfg.MODEL.RETINANET.NUM_CONVS,
            "use_prior_init": cfg.MODEL.RETINANET_FL.USE_PRIOR_INIT,
            "background_logit": cls_loss_has_background_logit(cfg),
        }

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


def _check_head_params(
    input_shape: List[ShapeSpec], num_classes: int, num_convs: int, norm: str
) -> None:
    """Raise a ValueError naming the config key of a setting Detectron2's head cannot build."""
    if not input_shape:
        raise ValueError("The head needs at least one input feature (MODEL.RETINANET.IN_FEATURES).")
    channels = {shape.channels for shape in input_shape}
    if len(channels) != 1:
        raise ValueError(
            f"All feature levels must have the same channels for the shared head, got {channels}."
        )
    if num_classes < 1:
        raise ValueError(f"MODEL.RETINANET.NUM_CLASSES must be >= 1, got {num_classes}.")
    if num_convs < 1:
        raise ValueError(
            f"MODEL.RETINANET.NUM_CONVS must be >= 1 (4 in the paper), got {num_convs}."
        )
    if norm not in NORMS:
        raise ValueError(
            f"MODEL.RETINANET.NORM must be one of {NORMS} ('' in the paper), got {norm!r}."
        )
    if norm == "GN" and input_shape[0].channels % _GN_GROUPS:
        raise ValueError(
            f"MODEL.RETINANET.NORM 'GN' uses {_GN_GROUPS} groups, so the feature channels "
            f"(MODEL.FPN.OUT_CHANNELS) must be a multiple of {_GN_GROUPS}, got "
            f"{input_shape[0].channels}."
        )
