import math

import pytest
import torch
from detectron2.layers import CycleBatchNormList, ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

import retinanet_fl  # noqa: F401  registers the head and anchor generator
from retinanet_fl import get_cfg
from retinanet_fl.modeling.head import RetinaNetFocalHead, prior_bias

SHAPES = [ShapeSpec(channels=32, stride=s) for s in (8, 16, 32, 64, 128)]


def small_head(**kwargs):
    params = dict(input_shape=SHAPES, num_classes=5, num_anchors=9, num_convs=2)
    params.update(kwargs)
    return RetinaNetFocalHead(**params)


def test_built_from_config():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "OctaveAnchorGenerator"
    cfg.MODEL.RETINANET.NUM_CLASSES = 7
    cfg.MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE = 2
    head = RetinaNetFocalHead(cfg, SHAPES)
    # 4 towers convs + ReLU each; A = 2 scales x 3 ratios.
    assert len(head.cls_subnet) == len(head.bbox_subnet) == 8
    assert head.cls_score.out_channels == 6 * 7
    assert head.bbox_pred.out_channels == 6 * 4


def test_output_shapes_per_level():
    head = small_head()
    features = [torch.randn(2, 32, size, size + 1) for size in (16, 8, 4, 2, 1)]
    logits, deltas = head(features)
    for feature, level_logits, level_deltas in zip(features, logits, deltas):
        assert level_logits.shape == (2, 9 * 5, *feature.shape[-2:])
        assert level_deltas.shape == (2, 9 * 4, *feature.shape[-2:])
    with pytest.raises(AssertionError):  # Detectron2's head's check (its forward is scripted)
        head(features[:4])


def test_prior_bias_and_gaussian_init():
    torch.manual_seed(0)
    head = small_head(prior_prob=0.01)
    expected_bias = -math.log((1 - 0.01) / 0.01)
    assert prior_bias(0.01) == pytest.approx(expected_bias)
    assert torch.allclose(head.cls_score.bias, torch.full_like(head.cls_score.bias, expected_bias))
    # The initial foreground probability of every anchor and class is π.
    assert torch.sigmoid(head.cls_score.bias).mean().item() == pytest.approx(0.01, rel=1e-5)
    assert torch.count_nonzero(head.bbox_pred.bias) == 0
    for conv in [m for m in head.modules() if isinstance(m, nn.Conv2d)]:
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert abs(conv.weight.mean().item()) < 2e-3
    for conv in list(head.cls_subnet) + list(head.bbox_subnet):
        if isinstance(conv, nn.Conv2d):
            assert torch.count_nonzero(conv.bias) == 0


def test_no_prior_option_sets_zero_bias():
    head = small_head(prior_prob=0.01, use_prior_init=False)
    assert torch.count_nonzero(head.cls_score.bias) == 0
    # π is unused without the prior, so an out-of-range value is accepted.
    small_head(prior_prob=0.0, use_prior_init=False)


@pytest.mark.parametrize("prior_prob", [0.0, 1.0, -0.5, 1.5])
def test_prior_prob_outside_open_unit_interval_is_rejected(prior_prob):
    with pytest.raises(
        ValueError, match=r"MODEL.RETINANET.PRIOR_PROB must be in the open interval \(0, 1\)"
    ):
        small_head(prior_prob=prior_prob)


def test_parameter_names_and_shapes_match_detectron2_head():
    ours = small_head(num_convs=4)
    reference = RetinaNetHead(
        input_shape=SHAPES, num_classes=5, num_anchors=9, conv_dims=[32] * 4, prior_prob=0.01
    )
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    reference_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert ours_shapes == reference_shapes
    ours.load_state_dict(reference.state_dict(), strict=True)
    features = [torch.randn(1, 32, size, size) for size in (8, 4, 2, 1, 1)]
    for a, b in zip(ours(features), reference(features)):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("norm", ["GN", "BN"])
def test_normalized_towers(norm):
    head = small_head(norm=norm)
    norms = [m for m in head.cls_subnet if not isinstance(m, (nn.Conv2d, nn.ReLU))]
    assert len(norms) == 2
    if norm == "BN":
        # One set of batch statistics per pyramid level, as in Detectron2's head.
        assert all(isinstance(m, CycleBatchNormList) and len(m) == len(SHAPES) for m in norms)
    else:
        assert all(isinstance(m, nn.GroupNorm) for m in norms)
    logits, _ = head([torch.randn(2, 32, 4, 4) for _ in SHAPES])
    assert all(torch.isfinite(x).all() for x in logits)


def test_channel_mismatch_between_levels_is_rejected():
    shapes = [ShapeSpec(channels=32, stride=8), ShapeSpec(channels=64, stride=16)]
    with pytest.raises(ValueError, match="same channels"):
        RetinaNetFocalHead(input_shape=shapes, num_classes=2, num_anchors=9)
