"""
Per-class α, ``MODEL.RETINANET_FL.ALPHA_PER_CLASS``, for the losses "focal", "focal_star", "ce"
and "softmax_focal":

* empty (``None``, ``""``, ``[]``; the default): the scalar ``MODEL.RETINANET.FOCAL_LOSS_ALPHA``;
* a list of K values α_c in [0, 1], one per class;
* ``"inverse_frequency"`` (w_c = 1 / n_c) or ``"effective_number"`` (w_c = (1 − β) / (1 − β^n_c),
  β = 0.999, Cui et al., CVPR 2019), with n_c the annotations of class c in the training set
  (crowd boxes excluded; a class without annotations counts as 1), computed when the Trainer
  starts. The weights are scaled so that their mean over the classes is ``FOCAL_LOSS_ALPHA``,
  α_c = K ᾱ w_c / Σ w, then clipped to [0, 1] (a clipped class leaves the mean below ᾱ).

For the sigmoid losses, element (anchor, class c) is weighted by α_c when the anchor is of class
c and by 1 − α_c otherwise (background anchors included); for the softmax loss, see
:mod:`retinanet_fl.layers.softmax_focal_loss`.
"""

import logging
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from tabulate import tabulate
from torch import Tensor, nn

from ..layers.closed_form import Alpha
from ..layers.focal_loss import check_alpha

__all__ = [
    "ALPHA_RULES",
    "EFFECTIVE_NUMBER_BETA",
    "ClassAlphaLoss",
    "alpha_from_counts",
    "count_annotations",
    "parse_alpha_per_class",
    "set_alpha_per_class_from_dataset",
]

logger = logging.getLogger(__name__)

ALPHA_PER_CLASS_KEY = "MODEL.RETINANET_FL.ALPHA_PER_CLASS"
ALPHA_RULES = ("inverse_frequency", "effective_number")
EFFECTIVE_NUMBER_BETA = 0.999


def _is_off(value) -> bool:
    return value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0)


def parse_alpha_per_class(value, num_classes: int) -> Union[None, str, Tensor]:
    """
    Validate a value of ``ALPHA_PER_CLASS``.

    Args:
        value: None, "" or an empty list (off), a rule name of ``ALPHA_RULES``, or K numbers.
        num_classes: K.

    Returns:
        None (off), the rule name, or the (K,) float64 tensor of the α_c.
    """
    if _is_off(value):
        return None
    allowed = (
        f"empty (off), a list of MODEL.RETINANET.NUM_CLASSES = {num_classes} values in [0, 1], "
        f"or one of {ALPHA_RULES}"
    )
    if isinstance(value, str):
        if value not in ALPHA_RULES:
            raise ValueError(f"{ALPHA_PER_CLASS_KEY} must be {allowed}; got {value!r}.")
        return value
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{ALPHA_PER_CLASS_KEY} must be {allowed}; got {value!r}.") from None
    if len(values) != num_classes or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(
            f"{ALPHA_PER_CLASS_KEY} must be {allowed}; got {len(values)} values {values}."
        )
    return torch.tensor(values, dtype=torch.float64)


def _check_rule(rule: str, mean_alpha: float) -> None:
    if rule not in ALPHA_RULES:
        raise ValueError(f"rule must be one of {ALPHA_RULES}, got {rule!r}.")
    if not 0.0 <= mean_alpha <= 1.0:
        raise ValueError(
            f"{ALPHA_PER_CLASS_KEY} = {rule!r} scales the weights to a mean of "
            f"MODEL.RETINANET.FOCAL_LOSS_ALPHA, which must then be in [0, 1]; got {mean_alpha}."
        )


def alpha_from_counts(counts: Sequence[int], rule: str, mean_alpha: float) -> Tensor:
    """
    Per-class α from the training set's annotation counts.

    Args:
        counts: n_c, the annotations of each of the K classes (0 is counted as 1).
        rule: "inverse_frequency" (w_c = 1 / n_c) or "effective_number"
            (w_c = (1 − β) / (1 − β^n_c), β = ``EFFECTIVE_NUMBER_BETA``).
        mean_alpha: ᾱ in [0, 1], the mean of the α_c before clipping.

    Returns:
        (K,) float64 tensor: α_c = K ᾱ w_c / Σ w, clipped to [0, 1].
    """
    _check_rule(rule, mean_alpha)
    n = torch.tensor([max(int(c), 1) for c in counts], dtype=torch.float64)
    if rule == "inverse_frequency":
        weights = 1.0 / n
    else:
        beta = EFFECTIVE_NUMBER_BETA
        weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (weights * (len(n) * mean_alpha / weights.sum())).clamp(0.0, 1.0)


def count_annotations(dataset_dicts: Iterable[Dict], num_classes: int) -> List[int]:
    """
    Args:
        dataset_dicts: Detectron2 dataset dicts, ``category_id`` in [0, K).
        num_classes: K.

    Returns:
        the number of non-crowd annotations of each class.
    """
    counts = [0] * num_classes
    for record in dataset_dicts:
        for annotation in record.get("annotations", ()):
            if annotation.get("iscrowd", 0) == 0 and 0 <= annotation["category_id"] < num_classes:
                counts[annotation["category_id"]] += 1
    return counts


class ClassAlphaLoss(nn.Module):
    """
    Base of the classification losses that take α: the scalar ``FOCAL_LOSS_ALPHA``, or per-class
    α_c (``ALPHA_PER_CLASS``). A rule's α_c are set by :meth:`set_alpha_from_counts` (the Trainer
    calls it); they are not part of the checkpoint, the Trainer recomputes them on resume.
    """

    def _init_alpha(self, alpha: float, alpha_per_class, num_classes: Optional[int]) -> None:
        """
        Args:
            alpha: α in [0, 1], or negative for none (``MODEL.RETINANET.FOCAL_LOSS_ALPHA``).
            alpha_per_class: a value of ``ALPHA_PER_CLASS``, see :func:`parse_alpha_per_class`.
            num_classes: K; needed with ``alpha_per_class``.
        """
        self.alpha = check_alpha(alpha, name="alpha (MODEL.RETINANET.FOCAL_LOSS_ALPHA)")
        setting = None
        if not _is_off(alpha_per_class):
            if num_classes is None or num_classes < 1:
                raise ValueError(
                    "num_classes (MODEL.RETINANET.NUM_CLASSES) must be >= 1 with "
                    f"alpha_per_class ({ALPHA_PER_CLASS_KEY}), got {num_classes!r}."
                )
            setting = parse_alpha_per_class(alpha_per_class, num_classes)
        self.num_classes = num_classes
        self.alpha_rule = setting if isinstance(setting, str) else None
        if self.alpha_rule is not None:
            _check_rule(self.alpha_rule, self.alpha)
        # Not persistent: checkpoints keep Detectron2's keys; a rule is recomputed on resume.
        per_class = setting if isinstance(setting, Tensor) else None
        self.register_buffer("alpha_per_class", per_class, persistent=False)

    def set_alpha_from_counts(self, counts: Sequence[int]) -> Tensor:
        """
        Compute the α_c of the rule from the training set's annotation counts.

        Args:
            counts: the K annotation counts.

        Returns:
            the (K,) α_c now in use.
        """
        if self.alpha_rule is None:
            raise RuntimeError(f"{ALPHA_PER_CLASS_KEY} is not a rule; nothing to compute.")
        if len(counts) != self.num_classes:
            raise ValueError(f"Expected {self.num_classes} class counts, got {len(counts)}.")
        self.alpha_per_class = alpha_from_counts(counts, self.alpha_rule, self.alpha)
        return self.alpha_per_class

    @property
    def loss_alpha(self) -> Alpha:
        """The α to pass to the functional loss: α_c as a (K,) tensor, or the scalar α."""
        if self.alpha_per_class is not None:
            return self.alpha_per_class
        if self.alpha_rule is not None:
            raise RuntimeError(
                f"{ALPHA_PER_CLASS_KEY} = {self.alpha_rule!r} is computed from the training "
                "set's annotation counts when retinanet_fl.engine.Trainer starts; outside it, "
                "call model.cls_loss.set_alpha_from_counts(counts) before training."
            )
        return self.alpha

    def _alpha_repr(self) -> str:
        if self.alpha_per_class is not None:
            return f"alpha_per_class={[round(a, 4) for a in self.alpha_per_class.tolist()]}"
        if self.alpha_rule is not None:
            return f"alpha_per_class={self.alpha_rule!r} (not computed yet)"
        return f"alpha={self.alpha}"


def set_alpha_per_class_from_dataset(
    cls_loss: nn.Module, dataset_dicts: Sequence[Dict], class_names: Optional[Sequence[str]]
) -> None:
    """
    At the start of training: compute a rule's α_c from the training set, and log the α of each
    class as a table (for a list too). Losses without per-class α are left alone.

    Args:
        cls_loss: the model's classification loss.
        dataset_dicts: the training set, as the data loader reads it.
        class_names: the K class names (``thing_classes``), or None.
    """
    if not isinstance(cls_loss, ClassAlphaLoss):
        return
    if cls_loss.alpha_rule is None and cls_loss.alpha_per_class is None:
        return
    num_classes = cls_loss.num_classes
    counts = count_annotations(dataset_dicts, num_classes)
    if cls_loss.alpha_rule is not None:
        cls_loss.set_alpha_from_counts(counts)
        source = f"{cls_loss.alpha_rule!r}, mean FOCAL_LOSS_ALPHA = {cls_loss.alpha}"
    else:
        source = "the configured list"
    names = list(class_names) if class_names and len(class_names) == num_classes else None
    rows = [
        (c, names[c] if names else "", counts[c], f"{alpha:.4f}")
        for c, alpha in enumerate(cls_loss.alpha_per_class.tolist())
    ]
    table = tabulate(rows, headers=["class", "name", "annotations", "alpha"], tablefmt="pipe")
    logger.info(f"{ALPHA_PER_CLASS_KEY} ({source}):\n{table}")
    if not getattr(cls_loss, "BACKGROUND_LOGIT", False):
        _warn_if_negatives_unweighted(cls_loss.alpha_per_class, names, cls_loss.alpha_rule)


def _warn_if_negatives_unweighted(
    alpha_per_class: Tensor, names: Optional[Sequence[str]], rule: Optional[str]
) -> None:
    """
    A sigmoid loss weights class c's negatives by 1 − α_c: at α_c = 1 nothing teaches the model
    that background is not class c, and it learns to predict c everywhere (measured: AP 0 with
    CE on a 1:50 long-tailed set, docs/REPRODUCTION.md).
    """
    unweighted = [c for c, alpha in enumerate(alpha_per_class.tolist()) if alpha >= 1.0]
    if not unweighted:
        return
    classes = ", ".join(names[c] if names else str(c) for c in unweighted)
    fix = (
        "lower MODEL.RETINANET.FOCAL_LOSS_ALPHA (the rule's mean) until no class reaches 1"
        if rule is not None
        else "give those classes values below 1"
    )
    logger.warning(
        f"{ALPHA_PER_CLASS_KEY} gives α_c = 1 to {classes}: with a sigmoid loss their negatives "
        f"get weight 1 − α_c = 0, so the model learns to predict them everywhere; {fix}."
    )
