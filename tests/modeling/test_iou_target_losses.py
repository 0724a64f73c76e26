"""
The classification losses on IoU targets ("quality_focal", "varifocal"): from the config, against
their formulas, their IoU targets, and the detector calling them with those targets.
"""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from retinanet_fl import get_cfg
from retinanet_fl.layers.closed_form import KERNELS
from retinanet_fl.modeling.cls_losses import (
    QualityFocalClsLoss,
    VarifocalClsLoss,
    build_cls_loss,
    iou_targets,
)

NUM_CLASSES = 3


def config(name: str, **overrides):
    """The default config with CLS_LOSS ``name`` and ``{"MODEL.X.KEY": value}`` overrides."""
    cfg = get_cfg()
    cfg.MODEL.RETINANET_FL.CLS_LOSS = name
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def batch(num_images: int = 2, num_anchors: int = 40, seed: int = 0):
    """Float64 logits (N, R, K), labels (N, R) with classes, background and ignored, IoU targets
    (N, R) (0 and 1 included) and anchors (R, 4)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_images, num_anchors, NUM_CLASSES, generator=generator).double() * 3
    labels = torch.randint(-1, NUM_CLASSES + 1, (num_images, num_anchors), generator=generator)
    iou = torch.rand(num_images, num_anchors, generator=generator).double()
    iou[0, :3] = torch.tensor([0.0, 1.0, 0.5])
    labels[0, :4] = torch.tensor([0, 1, 2, -1])
    anchors = torch.rand(num_anchors, 4, generator=generator).cumsum(dim=1) * 10
    return logits, labels, iou, anchors


def reference(name: str, logits, labels, iou, params) -> torch.Tensor:
    """The summed loss over the non-ignored anchors, from the papers' formulas (float64)."""
    valid = labels >= 0
    x = logits[valid]
    classes = torch.arange(NUM_CLASSES)
    y = (labels[valid][:, None] == classes) * iou[valid][:, None]
    p = torch.sigmoid(x)
    cross_entropy = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    if name == "quality_focal":
        (beta,) = params
        return ((y - p).abs() ** beta * cross_entropy).sum()
    alpha, gamma = params
    return torch.where(y > 0, y * cross_entropy, alpha * p**gamma * cross_entropy).sum()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "name, keys, params",
    [
        ("quality_focal", ["MODEL.RETINANET_FL.QUALITY_FOCAL_BETA"], (1.5,)),
        (
            "varifocal",
            ["MODEL.RETINANET_FL.VARIFOCAL_ALPHA", "MODEL.RETINANET_FL.VARIFOCAL_GAMMA"],
            (0.5, 1.0),
        ),
    ],
)
def test_from_config_equals_the_formula_over_non_ignored_anchors(name, keys, params, kernel):
    overrides = dict(zip(keys, params), **{"MODEL.RETINANET_FL.LOSS_KERNEL": kernel})
    loss = build_cls_loss(config(name, **overrides))
    assert loss.NEEDS_IOU_TARGETS and not loss.BACKGROUND_LOGIT
    logits, labels, iou, anchors = batch()
    x = logits.clone().requires_grad_()
    value = loss(x, labels, anchors, iou)
    (grad,) = torch.autograd.grad(value, x)
    x_reference = logits.clone().requires_grad_()
    expected = reference(name, x_reference, labels, iou, params)
    (expected_grad,) = torch.autograd.grad(expected, x_reference)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-14)
    assert (grad[labels == -1] == 0).all()  # ignored anchors


def test_defaults_are_the_papers():
    quality, vari = build_cls_loss(config("quality_focal")), build_cls_loss(config("varifocal"))
    assert type(quality) is QualityFocalClsLoss and quality.beta == 2.0
    assert type(vari) is VarifocalClsLoss and (vari.alpha, vari.gamma) == (0.75, 2.0)


def test_half_precision_logits_give_an_fp32_loss():
    logits, labels, iou, anchors = batch()
    for name in ("quality_focal", "varifocal"):
        half = logits.half().requires_grad_()
        value = build_cls_loss(config(name))(half, labels, anchors, iou.float())
        (grad,) = torch.autograd.grad(value, half)
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        assert grad.dtype == torch.float16 and torch.isfinite(grad).all(), name


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        (
            "quality_focal",
            "MODEL.RETINANET_FL.QUALITY_FOCAL_BETA",
            -1.0,
            r"beta \(MODEL.RETINANET_FL.QUALITY_FOCAL_BETA\) must be a finite number >= 0.*-1.0",
        ),
        (
            "varifocal",
            "MODEL.RETINANET_FL.VARIFOCAL_ALPHA",
            -0.5,
            r"alpha \(MODEL.RETINANET_FL.VARIFOCAL_ALPHA\) must be a finite number >= 0.*-0.5",
        ),
        (
            "varifocal",
            "MODEL.RETINANET_FL.VARIFOCAL_GAMMA",
            float("nan"),
            r"gamma \(MODEL.RETINANET_FL.VARIFOCAL_GAMMA\) must be a finite number >= 0.*nan",
        ),
    ],
)
def test_bad_config_values_name_the_key(name, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_cls_loss(config(name, **{key: value}))


def test_iou_targets_of_the_wrong_shape_are_reported():
    logits, labels, iou, anchors = batch()
    with pytest.raises(ValueError, match=r"iou_targets must be \(N, R\) = \(2, 40\).*\(2, 39\)"):
        build_cls_loss(config("varifocal"))(logits, labels, anchors, iou[:, :-1])


def _decode(delta, anchor):
    """(dx, dy, dw, dh) applied to an XYXY anchor, weights 1, dw and dh clipped at log(1000 / 16)
    (Detectron2's scale clamp)."""
    width, height = anchor[2] - anchor[0], anchor[3] - anchor[1]
    cx, cy = anchor[0] + width / 2 + delta[0] * width, anchor[1] + height / 2 + delta[1] * height
    dw, dh = (min(float(d), math.log(1000.0 / 16)) for d in delta[2:])
    w, h = width * math.exp(dw), height * math.exp(dh)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _box_iou(a, b) -> float:
    width = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    height = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = width * height
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_iou_targets_are_the_iou_of_the_decoded_predicted_boxes():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.tensor(
        [[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 40.0, 24.0], [20.0, 4.0, 36.0, 36.0], [0, 30, 16, 46]]
    )
    deltas = (torch.randn(2, 4, 4, generator=generator) * 0.3).requires_grad_()
    per_level = [deltas[:, :3], deltas[:, 3:]]  # two levels
    gt_boxes = [anchors + torch.randn(4, 4, generator=generator) * 2 for _ in range(2)]
    foreground = torch.tensor([[True, False, True, True], [False, True, False, False]])
    targets = iou_targets(anchors, per_level, gt_boxes, foreground, Box2BoxTransform((1.0,) * 4))
    assert targets.dtype == torch.float32 and not targets.requires_grad
    for i in range(2):
        for r in range(4):
            if not foreground[i, r]:
                assert targets[i, r] == 0
                continue
            predicted = _decode(deltas[i, r].detach(), anchors[r])
            expected = _box_iou(predicted, gt_boxes[i][r])
            assert 0 < expected < 1
            assert targets[i, r].item() == pytest.approx(expected, rel=1e-5)


ONE_ANCHOR = [
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]",
    "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE", "1",
    "MODEL.RETINANET_FL.ANCHOR_SCALE", "8.0",
]  # fmt: skip


@pytest.mark.parametrize("name, anchors_per_position", [("quality_focal", 9), ("varifocal", 1)])
def test_detector_passes_the_iou_of_foreground_predictions(
    name, anchors_per_position, small_cfg, monkeypatch
):
    cfg = small_cfg(
        "MODEL.RETINANET_FL.CLS_LOSS", name,
        "MODEL.RETINANET_FL.ANCHOR_MATCHER", "atss",
        "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou",
        "MODEL.RETINANET_FL.LOSS_KERNEL", "eager",
        *(ONE_ANCHOR if anchors_per_position == 1 else []),
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.head.cls_score.out_channels == NUM_CLASSES * anchors_per_position
    assert model.anchor_matcher.anchors_per_location == anchors_per_position
    with torch.no_grad():  # random features are large: deltas of a trained model's size instead
        model.head.bbox_pred.weight.mul_(1e-4)
    calls = {}
    real_losses, real_cls_loss = model.losses, model.cls_loss.forward

    def record_losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        calls["losses"] = (anchors, pred_anchor_deltas, gt_labels, gt_boxes)
        return real_losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def record_cls_loss(pred_logits, gt_labels, anchors, iou):
        calls["iou"] = iou
        return real_cls_loss(pred_logits, gt_labels, anchors, iou)

    monkeypatch.setattr(model, "losses", record_losses)
    monkeypatch.setattr(model.cls_loss, "forward", record_cls_loss)
    instances = Instances((64, 64))
    instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [28.0, 20.0, 60.0, 56.0]]))
    instances.gt_classes = torch.tensor([0, 2])
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with EventStorage():
        losses = model([{"image": image, "instances": instances}])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.head.cls_score.weight.grad.abs().sum() > 0

    anchors, deltas, labels, gt_boxes = calls["losses"]
    anchors = Boxes.cat(anchors).tensor
    deltas = torch.cat(deltas, dim=1)
    foreground = (labels >= 0) & (labels < NUM_CLASSES)
    assert (labels >= 0).all()  # ATSS ignores no anchor
    assert set(labels[foreground].tolist()) == {0, 2}  # both boxes have positives
    iou = calls["iou"]
    assert iou.shape == labels.shape and (iou[~foreground] == 0).all()
    assert iou[foreground].max() > 0.2
    for r in foreground[0].nonzero().flatten().tolist():
        predicted = _decode(deltas[0, r].detach(), anchors[r])
        assert iou[0, r].item() == pytest.approx(_box_iou(predicted, gt_boxes[0][r]), abs=1e-6)


def test_images_without_boxes_train_with_atss_and_iou_targets(small_cfg):
    cfg = small_cfg(
        "MODEL.RETINANET_FL.CLS_LOSS", "varifocal",
        "MODEL.RETINANET_FL.ANCHOR_MATCHER", "atss",
        "MODEL.RETINANET_FL.LOSS_KERNEL", "eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    instances = Instances((64, 64))
    instances.gt_boxes = Boxes(torch.zeros(0, 4))
    instances.gt_classes = torch.zeros(0, dtype=torch.int64)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    with EventStorage():
        losses = model([{"image": image, "instances": instances}])
    assert losses["loss_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
