"""
The class-imbalance regime of a dataset under a config: how many anchors an image has, how many of
them are positive, ignored and negative, and, for a trained model, how much of the negatives'
cross entropy the easy negatives carry (the paper's §3 and §5.1 argument: ~100k anchors an image,
nearly all easy background, whose summed CE swamps the positives).

A *negative sample* is, as in Figure 4 (:mod:`.figures`), one (anchor, class) pair of a non-ignored
anchor that is not the anchor's ground-truth class: the sigmoid loss scores every class of every
anchor. *Easy* means a probability of being foreground (of that class) below ``EASY_NEGATIVE_P``.

``python -m retinanet_fl.ablation stats --config-file CFG [MODEL.WEIGHTS model.pth]`` prints it.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .figures import dense_predictions_and_labels, load_inputs, split_samples

EASY_NEGATIVE_P = 0.1


@dataclasses.dataclass(frozen=True)
class RegimeStats:
    """
    Per-image averages over the images measured, and the loss shares of a trained model.

    Attributes:
        dataset: the dataset measured, or "" for a blank image of a given size.
        num_images: images measured.
        image_size: (height, width) of the first image as the model sees it (after resizing).
        objects_per_image: ground-truth boxes per image.
        anchors_per_image: anchors over all pyramid levels, per image.
        positive_per_image: anchors labelled foreground (IoU ≥ the foreground threshold, or a
            low-quality match when the config allows them).
        ignored_per_image: anchors between the thresholds, left out of the loss.
        negative_per_image: background anchors.
        negatives_per_positive: all images' negative anchors over their positive anchors (inf
            when there are none).
        weights: the checkpoint whose scores the loss shares use, or "" (no loss shares).
        easy_negative_fraction: share of the negative samples with p < ``EASY_NEGATIVE_P``.
        easy_negative_ce_share: share of the negatives' summed CE, -log(1 - p), that they carry.
        easy_negative_fl_share: the same share for the focal loss with γ = 2 (no α).
        negative_to_positive_ce: the negatives' summed CE over the positives' summed CE.
    """

    dataset: str
    num_images: int
    image_size: Tuple[int, int]
    objects_per_image: float
    anchors_per_image: float
    positive_per_image: float
    ignored_per_image: float
    negative_per_image: float
    negatives_per_positive: float
    weights: str = ""
    easy_negative_fraction: Optional[float] = None
    easy_negative_ce_share: Optional[float] = None
    easy_negative_fl_share: Optional[float] = None
    negative_to_positive_ce: Optional[float] = None

    def to_dict(self) -> Dict:
        """Returns: the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def format(self) -> str:
        """Returns: a readable multi-line summary."""
        source = self.dataset or "a blank image"
        lines = [
            f"{source}: {self.num_images} image(s) at {self.image_size[0]}x{self.image_size[1]} px",
            f"  objects per image:       {self.objects_per_image:,.2f}",
            f"  anchors per image:       {self.anchors_per_image:,.0f}",
            f"  positive anchors/image:  {self.positive_per_image:,.1f}",
            f"  ignored anchors/image:   {self.ignored_per_image:,.1f}",
            f"  negative anchors/image:  {self.negative_per_image:,.1f}",
            f"  negatives per positive:  {self.negatives_per_positive:,.1f}",
        ]
        if self.weights:
            lines += [
                f"  with {self.weights}:",
                f"  easy negatives (p < {EASY_NEGATIVE_P:g}): {self.easy_negative_fraction:.2%} "
                "of the negative samples",
                f"    carry {self.easy_negative_ce_share:.1%} of the negatives' CE loss "
                f"({self.easy_negative_fl_share:.1%} of their FL γ = 2 loss)",
                f"  negatives' CE / positives' CE: {self.negative_to_positive_ce:,.2f}",
            ]
        return "\n".join(lines)


def loss_shares(
    positive_logits: Tensor, negative_logits: Tensor, easy_p: float = EASY_NEGATIVE_P
) -> Dict[str, float]:
    """
    How the CE and FL (γ = 2) losses of the negatives split between easy and hard ones.

    Args:
        positive_logits: (P,) logits of the positive samples (target 1).
        negative_logits: (M,) logits of the negative samples (target 0).
        easy_p: a negative with sigmoid(logit) below it is easy.

    Returns:
        ``easy_negative_fraction``, ``easy_negative_ce_share``, ``easy_negative_fl_share`` and
        ``negative_to_positive_ce`` (see :class:`RegimeStats`); NaN where a total is zero.
    """
    negative_logits = negative_logits.double()
    probabilities = torch.sigmoid(negative_logits)
    easy = probabilities < easy_p
    negative_ce = F.softplus(negative_logits)  # -log(1 - p), stable
    negative_fl = probabilities**2 * negative_ce
    positive_ce = F.softplus(-positive_logits.double()).sum()

    def share(part: Tensor, whole: Tensor) -> float:
        return float(part / whole) if whole > 0 else math.nan

    return {
        "easy_negative_fraction": share(easy.sum(), torch.tensor(float(len(easy)))),
        "easy_negative_ce_share": share(negative_ce[easy].sum(), negative_ce.sum()),
        "easy_negative_fl_share": share(negative_fl[easy].sum(), negative_fl.sum()),
        "negative_to_positive_ce": share(negative_ce.sum(), positive_ce),
    }


def measure_regime(
    model: torch.nn.Module,
    inputs: Sequence[Dict],
    dataset: str = "",
    weights: str = "",
) -> RegimeStats:
    """
    Count anchors by label over images and, if ``weights`` names the model's checkpoint, split the
    negatives' loss between easy and hard ones.

    Args:
        model: a FocalLossRetinaNet in eval mode, with ``weights`` loaded.
        inputs: Detectron2 input dicts with "image" and "instances", one image each.
        dataset: the dataset's name, for the report.
        weights: the checkpoint loaded into ``model``, or "" for counts only.

    Returns:
        the regime.
    """
    if not inputs:
        raise ValueError("No images to measure the regime on.")
    counts = torch.zeros(4, dtype=torch.float64)  # objects, positive, ignored, negative
    num_anchors = 0
    positives: List[Tensor] = []
    negatives: List[Tensor] = []
    for batched_input in inputs:
        logits, labels = dense_predictions_and_labels(model, batched_input)
        num_anchors += len(labels)
        is_negative = labels == model.num_classes
        is_ignored = labels == -1
        counts += torch.tensor(
            [
                len(batched_input["instances"]),
                int((~is_negative & ~is_ignored).sum()),
                int(is_ignored.sum()),
                int(is_negative.sum()),
            ],
            dtype=torch.float64,
        )
        if weights:
            pos, neg = split_samples(logits, labels, model.num_classes)
            positives.append(pos)
            negatives.append(neg)
    n = len(inputs)
    shares = loss_shares(torch.cat(positives), torch.cat(negatives)) if weights else {}
    return RegimeStats(
        dataset=dataset,
        num_images=n,
        image_size=tuple(int(s) for s in inputs[0]["image"].shape[-2:]),
        objects_per_image=float(counts[0] / n),
        anchors_per_image=num_anchors / n,
        positive_per_image=float(counts[1] / n),
        ignored_per_image=float(counts[2] / n),
        negative_per_image=float(counts[3] / n),
        negatives_per_positive=float(counts[3] / counts[1]) if counts[1] > 0 else math.inf,
        weights=weights,
        **shares,
    )


def blank_input(height: int, width: int) -> Dict:
    """Returns: a Detectron2 input of a black image of that size without objects."""
    from detectron2.structures import Boxes, Instances

    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.zeros(0, 4))
    instances.gt_classes = torch.zeros(0, dtype=torch.int64)
    return {"image": torch.zeros(3, height, width), "instances": instances}


def regime_stats(
    cfg,
    dataset: Optional[str] = None,
    num_images: int = 100,
    image_size: Optional[Tuple[int, int]] = None,
) -> RegimeStats:
    """
    The regime of a config on a dataset (or the anchor count of a blank image of a given size, for
    a dataset that is not at hand, like COCO).

    Args:
        cfg: the model's config; with ``MODEL.WEIGHTS`` set, the loss shares are measured too.
        dataset: a registered dataset (default ``DATASETS.TRAIN[0]``), resized as at test time.
        num_images: its first images measured.
        image_size: (height, width): measure one blank image of that size instead of a dataset.

    Returns:
        the regime.
    """
    from detectron2.modeling import build_model

    import retinanet_fl  # noqa: F401  registers the meta-architecture and the datasets

    from ..engine import AtomicCheckpointer

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    model = build_model(cfg)
    if not hasattr(model, "label_anchors"):
        raise ValueError(
            "The regime is measured with MODEL.META_ARCHITECTURE FocalLossRetinaNet, "
            f"got {cfg.MODEL.META_ARCHITECTURE}."
        )
    weights = cfg.MODEL.WEIGHTS if image_size is None else ""
    if weights:
        AtomicCheckpointer(model).load(weights)
    model.eval()
    if image_size is not None:
        return measure_regime(model, [blank_input(*image_size)])
    if dataset is None:
        if not cfg.DATASETS.TRAIN:
            raise ValueError("DATASETS.TRAIN is empty: name a dataset (--dataset).")
        dataset = cfg.DATASETS.TRAIN[0]
    inputs = load_inputs(cfg, num_images, dataset)
    return measure_regime(model, inputs, dataset=dataset, weights=weights)


def write_regime(stats: RegimeStats, path: Path) -> Path:
    """Write the regime as JSON; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats.to_dict(), indent=2))
    return path


def read_regime(path: Path) -> RegimeStats:
    """Returns: the regime written by :func:`write_regime`."""
    data = json.loads(Path(path).read_text())
    data["image_size"] = tuple(data["image_size"])
    return RegimeStats(**data)
