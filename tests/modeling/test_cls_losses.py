"""CLS_LOSS_REGISTRY: building from the config, validation, and OHEM's selection."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from retinanet_fl import get_cfg
from retinanet_fl.layers.focal_loss import (
    sigmoid_focal_loss,
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star_from_labels,
)
from retinanet_fl.modeling.cls_losses import (
    CLS_LOSS_REGISTRY,
    CrossEntropyClsLoss,
    FocalClsLoss,
    FocalStarClsLoss,
    build_cls_loss,
)
from retinanet_fl.modeling.ohem import OHEMClsLoss, ohem_select

NUM_CLASSES = 3


def config(name: str, **overrides):
    cfg = get_cfg()
    cfg.MODEL.RETINANET_FL.CLS_LOSS = name
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def batch(num_images: int = 2, num_anchors: int = 30, seed: int = 0):
    """Logits (N, R, K), labels (N, R) with classes, background and ignored, anchors (R, 4)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_images, num_anchors, NUM_CLASSES, generator=generator) * 2
    labels = torch.randint(-1, NUM_CLASSES + 1, (num_images, num_anchors), generator=generator)
    corners = torch.rand(num_anchors, 2, generator=generator) * 100
    anchors = torch.cat(
        [corners, corners + 8 + torch.rand(num_anchors, 2, generator=generator) * 20], 1
    )
    return logits, labels, anchors


def test_registry_holds_the_seven_losses():
    assert sorted(name for name, _ in CLS_LOSS_REGISTRY) == [
        "ce",
        "focal",
        "focal_star",
        "ohem",
        "quality_focal",
        "softmax_focal",
        "varifocal",
    ]


def test_unknown_name_lists_registered_names():
    with pytest.raises(
        KeyError,
        match=r"CLS_LOSS = 'focall'.*\['ce', 'focal', 'focal_star', 'ohem', 'quality_focal', "
        r"'softmax_focal', 'varifocal'\]",
    ):
        build_cls_loss(config("focall"))


def test_focal_from_config_equals_functional():
    cfg = config(
        "focal",
        **{"MODEL.RETINANET.FOCAL_LOSS_GAMMA": 1.5, "MODEL.RETINANET.FOCAL_LOSS_ALPHA": 0.5},
    )
    loss = build_cls_loss(cfg)
    assert type(loss) is FocalClsLoss and (loss.gamma, loss.alpha) == (1.5, 0.5)
    logits, labels, anchors = batch()
    expected = sigmoid_focal_loss_from_labels(logits.flatten(0, 1), labels.flatten(), 0.5, 1.5)
    assert loss(logits, labels, anchors) == expected
    assert loss(logits, labels, anchors).dtype == torch.float32


def test_focal_star_from_config_equals_functional():
    cfg = config(
        "focal_star",
        **{"MODEL.RETINANET_FL.FOCAL_STAR_GAMMA": 4.0, "MODEL.RETINANET_FL.FOCAL_STAR_BETA": 0.0},
    )
    loss = build_cls_loss(cfg)
    assert type(loss) is FocalStarClsLoss and (loss.gamma, loss.beta, loss.alpha) == (
        4.0,
        0.0,
        0.25,
    )
    logits, labels, anchors = batch()
    expected = sigmoid_focal_loss_star_from_labels(
        logits.flatten(0, 1), labels.flatten(), 4.0, 0.0, 0.25
    )
    assert loss(logits, labels, anchors) == expected


@pytest.mark.parametrize("alpha", (-1.0, 0.75))
def test_ce_is_alpha_balanced_binary_cross_entropy(alpha):
    loss = build_cls_loss(config("ce", **{"MODEL.RETINANET.FOCAL_LOSS_ALPHA": alpha}))
    assert type(loss) is CrossEntropyClsLoss and loss.gamma == 0
    logits, labels, anchors = batch()
    logits, labels = logits.double(), labels
    valid = labels >= 0
    targets = F.one_hot(labels[valid], NUM_CLASSES + 1)[:, :NUM_CLASSES].double()
    weights = alpha * targets + (1 - alpha) * (1 - targets) if alpha >= 0 else None
    expected = F.binary_cross_entropy_with_logits(logits[valid], targets, weights, reduction="sum")
    torch.testing.assert_close(loss(logits, labels, anchors), expected, rtol=1e-12, atol=0)


def test_losses_accept_half_precision_logits():
    logits, labels, anchors = batch()
    for name in ("focal", "focal_star", "ce", "ohem"):
        half = logits.half().requires_grad_()
        value = build_cls_loss(config(name))(half, labels, anchors)
        (grad,) = torch.autograd.grad(value, half)
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        assert grad.dtype == torch.float16 and torch.isfinite(grad).all(), name


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        (
            "focal",
            "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
            -0.5,
            r"gamma \(MODEL.RETINANET.FOCAL_LOSS_GAMMA\) must be a finite number >= 0.*-0.5",
        ),
        (
            "focal",
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
            1.5,
            r"alpha \(MODEL.RETINANET.FOCAL_LOSS_ALPHA\) must be in \[0, 1\].*1.5",
        ),
        (
            "ce",
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
            float("nan"),
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
        ),
        (
            "focal_star",
            "MODEL.RETINANET_FL.FOCAL_STAR_GAMMA",
            0.0,
            "MODEL.RETINANET_FL.FOCAL_STAR_GAMMA.*> 0.*0.0",
        ),
        (
            "focal_star",
            "MODEL.RETINANET_FL.FOCAL_STAR_BETA",
            float("inf"),
            "MODEL.RETINANET_FL.FOCAL_STAR_BETA.*finite.*inf",
        ),
        (
            "ohem",
            "MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE",
            0,
            r"batch_size_per_image \(MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE\) "
            r"must be an integer > 0, got 0",
        ),
        (
            "ohem",
            "MODEL.RETINANET_FL.OHEM_NMS_THRESH",
            0.0,
            r"nms_thresh \(MODEL.RETINANET_FL.OHEM_NMS_THRESH\) must be in \(0, 1\], got 0.0",
        ),
        (
            "ohem",
            "MODEL.RETINANET_FL.OHEM_NMS_THRESH",
            1.5,
            r"OHEM_NMS_THRESH\) must be in \(0, 1\], got 1.5",
        ),
        (
            "ohem",
            "MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO",
            -3.0,
            r"neg_pos_ratio \(MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO\) "
            r"must be a finite number >= 0.*-3.0",
        ),
        (
            "focal",
            "MODEL.RETINANET_FL.LOSS_KERNEL",
            "fast",
            "MODEL.RETINANET_FL.LOSS_KERNEL must be one of.*'fast'",
        ),
    ],
)
def test_bad_config_values_name_the_key(name, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_cls_loss(config(name, **{key: value}))


def test_kernel_comes_from_the_config_key():
    assert get_cfg().MODEL.RETINANET_FL.LOSS_KERNEL == "compiled"
    for kernel in ("compiled", "eager"):
        cfg = config("focal", **{"MODEL.RETINANET_FL.LOSS_KERNEL": kernel})
        assert build_cls_loss(cfg).kernel == kernel


def test_shape_errors_are_clear():
    logits, labels, anchors = batch()
    loss = FocalClsLoss(kernel="eager")
    with pytest.raises(ValueError, match=r"pred_logits must be \(N, R, K\) and gt_labels \(N, R\)"):
        loss(logits, labels[:, :-1], anchors)
    with pytest.raises(ValueError, match=r"anchors must be \(R, 4\)"):
        OHEMClsLoss(kernel="eager")(logits, labels, anchors[:-1])


# ---------------------------------------------------------------------------------------------
# OHEM
# ---------------------------------------------------------------------------------------------
def row_of_boxes(count: int, start: int = 0) -> torch.Tensor:
    """Disjoint 10 × 10 boxes in a row."""
    x0 = torch.arange(start, start + count, dtype=torch.float32) * 20
    return torch.stack([x0, torch.zeros(count), x0 + 10, torch.full((count,), 10.0)], dim=1)


def test_ohem_nms_suppresses_a_duplicate_hard_negative():
    anchors = row_of_boxes(6)
    anchors[1] = anchors[0]  # anchor 1 duplicates anchor 0
    labels = torch.tensor([2, 2, 2, 0, 2, -1])  # K = 2: background is 2; anchor 5 is ignored
    example_losses = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 10.0])
    kept = ohem_select(example_losses, labels, anchors, num_classes=2, batch_size=3, nms_thresh=0.7)
    assert kept.tolist() == [0, 2, 3]
    # An IoU of 1 does not exceed a threshold of 1: without suppression the duplicate is kept.
    kept = ohem_select(example_losses, labels, anchors, num_classes=2, batch_size=3, nms_thresh=1.0)
    assert kept.tolist() == [0, 1, 2]


def test_ohem_ratio_one_to_three_is_enforced():
    # 2 low-loss positives, 10 high-loss negatives: both positives and 3 × 2 negatives.
    labels = torch.tensor([0, 1] + [2] * 10)
    example_losses = torch.tensor([0.5, 0.4] + [float(10 - i) for i in range(10)])
    kept = ohem_select(
        example_losses,
        labels,
        row_of_boxes(12),
        num_classes=2,
        batch_size=100,
        nms_thresh=0.7,
        neg_pos_ratio=3.0,
    )
    assert sorted(kept.tolist()) == [0, 1, 2, 3, 4, 5, 6, 7]
    # Many positives: at most B / 4 of them (the hardest), then 3 negatives per positive.
    labels = torch.tensor([1] * 10 + [2] * 30)
    example_losses = torch.arange(40, 0, -1, dtype=torch.float32)
    example_losses[:10] = torch.arange(10, dtype=torch.float32)  # positive 9 is the hardest
    kept = ohem_select(
        example_losses,
        labels,
        row_of_boxes(40),
        num_classes=2,
        batch_size=16,
        nms_thresh=0.7,
        neg_pos_ratio=3.0,
    )
    assert sorted(kept.tolist()) == [6, 7, 8, 9] + list(range(10, 22))
    # No positive survivor: no negatives either.
    kept = ohem_select(
        example_losses[10:],
        labels[10:],
        row_of_boxes(30),
        num_classes=2,
        batch_size=16,
        nms_thresh=0.7,
        neg_pos_ratio=3.0,
    )
    assert kept.numel() == 0


def test_ohem_batch_larger_than_candidates_keeps_every_non_ignored_example():
    labels = torch.tensor([0, -1, 3, 3, -1, 1, 3])
    example_losses = torch.tensor([1.0, 9.0, 3.0, 2.0, 8.0, 5.0, 4.0])
    kept = ohem_select(
        example_losses, labels, row_of_boxes(7), num_classes=3, batch_size=128, nms_thresh=0.5
    )
    assert kept.tolist() == [5, 6, 2, 3, 0]


def reference_ohem(example_losses, labels, anchors, num_classes, batch_size, nms_thresh, ratio):
    """NMS over every candidate at once, then the budget."""
    candidates = torch.nonzero(labels >= 0).squeeze(1)
    candidates = candidates[torch.argsort(example_losses[candidates], descending=True, stable=True)]
    rank_scores = torch.arange(len(candidates), 0, -1, dtype=torch.float32)
    survivors = candidates[nms(anchors[candidates], rank_scores, nms_thresh)]
    if ratio == 0:
        return set(survivors[:batch_size].tolist())
    is_pos = labels[survivors] < num_classes
    positives = survivors[is_pos][: max(1, math.floor(batch_size / (1 + ratio)))]
    num_neg = min(math.floor(ratio * len(positives)), batch_size - len(positives))
    return set(positives.tolist()) | set(survivors[~is_pos][:num_neg].tolist())


@pytest.mark.parametrize("ratio", (0.0, 3.0))
def test_ohem_prefix_nms_equals_nms_over_all_examples(ratio):
    # Crowded boxes, so the first prefix of 2B examples holds too few survivors and has to grow.
    generator = torch.Generator().manual_seed(3)
    num_anchors = 600
    corners = torch.rand(num_anchors, 2, generator=generator) * 60
    anchors = torch.cat(
        [corners, corners + 20 + torch.rand(num_anchors, 2, generator=generator) * 10], 1
    )
    labels = torch.where(torch.rand(num_anchors, generator=generator) < 0.1, 0, NUM_CLASSES)
    labels[torch.rand(num_anchors, generator=generator) < 0.1] = -1
    example_losses = torch.rand(num_anchors, generator=generator)
    for batch_size, nms_thresh in ((16, 0.3), (32, 0.5), (64, 0.3)):
        kept = ohem_select(
            example_losses,
            labels,
            anchors,
            num_classes=NUM_CLASSES,
            batch_size=batch_size,
            nms_thresh=nms_thresh,
            neg_pos_ratio=ratio,
        )
        expected = reference_ohem(
            example_losses, labels, anchors, NUM_CLASSES, batch_size, nms_thresh, ratio
        )
        assert set(kept.tolist()) == expected and len(kept) == len(expected)
        assert (labels[kept] >= 0).all()
        assert (example_losses[kept].diff() <= 0).all()


def test_ohem_loss_is_cross_entropy_over_kept_examples_per_image():
    # K = 1 (background = 1). Image 0 is the duplicate case above, with losses made by the logits;
    # image 1 has all examples hard but ignored except anchor 4.
    anchors = row_of_boxes(6)
    anchors[1] = anchors[0]
    logits = torch.tensor([[5.0, 4.0, 3.0, -2.0, 1.0, 9.0], [9.0, 9.0, 9.0, 9.0, 0.5, 9.0]])[
        ..., None
    ]
    labels = torch.tensor([[1, 1, 1, 0, 1, -1], [-1, -1, -1, -1, 0, -1]])
    logits.requires_grad_()
    loss = OHEMClsLoss(batch_size_per_image=3, nms_thresh=0.7, alpha=-1.0, kernel="eager")
    value = loss(logits, labels, anchors)
    # Kept: image 0 anchors 0, 2 (negatives), 3 (positive); image 1 anchor 4 (positive).
    expected = F.softplus(torch.tensor([5.0, 3.0, 2.0, -0.5])).sum()
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, logits)
    kept = torch.zeros(2, 6, dtype=torch.bool)
    kept[0, [0, 2, 3]] = True
    kept[1, 4] = True
    assert (grad[kept] != 0).all() and (grad[~kept] == 0).all()


def test_ohem_from_config():
    cfg = config(
        "ohem",
        **{
            "MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE": 256,
            "MODEL.RETINANET_FL.OHEM_NMS_THRESH": 0.5,
            "MODEL.RETINANET_FL.OHEM_NEG_POS_RATIO": 3.0,
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA": -1.0,
        },
    )
    loss = build_cls_loss(cfg)
    assert type(loss) is OHEMClsLoss
    assert (loss.batch_size_per_image, loss.nms_thresh, loss.neg_pos_ratio, loss.alpha) == (
        256,
        0.5,
        3.0,
        -1.0,
    )
    # B at least the number of anchors and no suppression: every non-ignored example, plain CE.
    logits, labels, anchors = batch(num_anchors=20)
    loss = OHEMClsLoss(batch_size_per_image=20, nms_thresh=1.0, alpha=-1.0, kernel="eager")
    valid = labels >= 0
    targets = F.one_hot(labels[valid], NUM_CLASSES + 1)[:, :NUM_CLASSES].float()
    expected = sigmoid_focal_loss(logits[valid], targets, alpha=-1, gamma=0, reduction="sum")
    torch.testing.assert_close(loss(logits, labels, anchors), expected)


def float64_reference(name: str, logits, labels, gamma: float, alpha: float, beta: float):
    """The registry entry's summed loss from the paper's formulas in float64 (OHEM: None)."""
    valid = labels >= 0
    x = logits.double()[valid]
    t = F.one_hot(labels[valid], NUM_CLASSES + 1)[:, :NUM_CLASSES].double()
    alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else torch.ones_like(t)
    p_t = torch.sigmoid(x) * t + torch.sigmoid(-x) * (1 - t)
    if name == "focal":
        return -(alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).sum()
    if name == "ce":
        return -(alpha_t * torch.log(p_t)).sum()
    if name == "focal_star":
        x_t = x * (2 * t - 1)
        return -(alpha_t * F.logsigmoid(gamma * x_t + beta) / gamma).sum()
    return None


@pytest.mark.parametrize("kernel", ("compiled", "eager"))
def test_registry_losses_do_not_depend_on_earlier_calls(kernel):
    # Every registry entry, several settings, in two shuffled orders within one process.
    settings = [
        (name, gamma, alpha)
        for name in ("focal", "ce", "focal_star", "ohem")
        for gamma, alpha in ((2.0, 0.25), (1.0, 0.75), (0.5, -1.0), (5.0, 0.25))
    ]
    order = random.Random(0).sample(settings, len(settings))
    order += random.Random(1).sample(settings, len(settings))
    logits, labels, anchors = batch(num_anchors=64)
    first_results = {}
    for name, gamma, alpha in order:
        overrides = {
            "MODEL.RETINANET.FOCAL_LOSS_GAMMA": gamma,
            "MODEL.RETINANET.FOCAL_LOSS_ALPHA": alpha,
            "MODEL.RETINANET_FL.FOCAL_STAR_GAMMA": gamma,
            "MODEL.RETINANET_FL.FOCAL_STAR_BETA": 1.0,
            "MODEL.RETINANET_FL.LOSS_KERNEL": kernel,
        }
        x = logits.clone().requires_grad_()
        value = build_cls_loss(config(name, **overrides))(x, labels, anchors)
        (grad,) = torch.autograd.grad(value, x)
        expected = float64_reference(name, logits, labels, gamma, alpha, 1.0)
        setting = (name, gamma, alpha)
        if expected is not None:
            torch.testing.assert_close(
                value.double(), expected, rtol=1e-5, atol=0, msg=str(setting)
            )
        # The second pass returns exactly what the first did.
        if setting in first_results:
            assert torch.equal(first_results[setting][0], value), setting
            assert torch.equal(first_results[setting][1], grad), setting
        first_results[setting] = (value.detach(), grad)
