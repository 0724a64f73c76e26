import warnings

import pytest
import torch
from detectron2 import model_zoo
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import (
    DefaultAnchorGenerator,
    build_anchor_generator,
)

import retinanet_fl  # noqa: F401  registers OctaveAnchorGenerator
from retinanet_fl import get_cfg
from retinanet_fl.modeling.anchors import OctaveAnchorGenerator, octave_anchor_sizes

STRIDES = [8, 16, 32, 64, 128]
SHAPES = [ShapeSpec(channels=16, stride=s) for s in STRIDES]


def feature_maps(height=96, width=128):
    # P3-P7 of a (height, width) image, rounded up as Detectron2's FPN does after padding.
    return [torch.zeros(1, 16, -(-height // s), -(-width // s)) for s in STRIDES]


def test_default_config_gives_detectron2_base_retinanet_anchors():
    reference_cfg = get_cfg()
    reference_cfg.merge_from_file(model_zoo.get_config_file("Base-RetinaNet.yaml"))
    reference = build_anchor_generator(reference_cfg, SHAPES)
    assert isinstance(reference, DefaultAnchorGenerator)

    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "OctaveAnchorGenerator"
    ours = build_anchor_generator(cfg, SHAPES)
    assert isinstance(ours, OctaveAnchorGenerator)

    features = feature_maps(height=100, width=131)
    expected = reference(features)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Detectron2's grid makes torch.meshgrid warn; ours not
        actual = ours(features)
    assert len(actual) == len(expected) == 5
    for level, (a, e) in enumerate(zip(actual, expected)):
        # Bit-identical boxes in the same order: the head's A·K channels depend on the order.
        assert torch.equal(a.tensor, e.tensor), f"level {level}"
    assert ours.num_cell_anchors == [9] * 5


def test_base_size_is_anchor_scale_times_stride():
    sizes = octave_anchor_sizes(STRIDES, anchor_scale=4.0, scales_per_octave=3)
    assert [level[0] for level in sizes] == [32.0, 64.0, 128.0, 256.0, 512.0]
    assert sizes[0][1] == pytest.approx(32 * 2 ** (1 / 3))
    assert sizes[0][2] == pytest.approx(32 * 2 ** (2 / 3))

    generator = OctaveAnchorGenerator(
        strides=[8], anchor_scale=4.0, scales_per_octave=1, aspect_ratios=[1.0]
    )
    (anchors,) = generator([torch.zeros(1, 1, 2, 2)])
    # One square anchor of side 32 centred at (4, 4), (12, 4), (4, 12), (12, 12).
    expected = torch.tensor(
        [
            [-12.0, -12.0, 20.0, 20.0],
            [-4.0, -12.0, 28.0, 20.0],
            [-12.0, -4.0, 20.0, 28.0],
            [-4.0, -4.0, 28.0, 28.0],
        ]
    )
    assert torch.allclose(anchors.tensor, expected)


@pytest.mark.parametrize(
    "scales_per_octave, aspect_ratios",
    [
        (1, [1.0]),
        (2, [1.0]),
        (3, [1.0]),
        (1, [0.5, 1.0, 2.0]),
        (2, [0.5, 1.0, 2.0]),
        (3, [0.5, 1.0, 2.0]),
        (4, [0.5, 1.0, 2.0]),
    ],
    ids=["1x1", "2x1", "3x1", "1x3", "2x3", "3x3", "4x3"],
)
def test_table_1c_rows_are_config_changes(scales_per_octave, aspect_ratios):
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "OctaveAnchorGenerator"
    cfg.MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE = scales_per_octave
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [aspect_ratios]
    generator = build_anchor_generator(cfg, SHAPES)

    num_cell = scales_per_octave * len(aspect_ratios)
    assert generator.num_cell_anchors == [num_cell] * 5
    features = feature_maps(96, 128)
    anchors = generator(features)
    for level, (boxes, feature) in enumerate(zip(anchors, features)):
        height, width = feature.shape[-2:]
        assert len(boxes) == height * width * num_cell, f"level {level}"
    # Sizes (sqrt of area) on P3 are 32 · 2^(i/n), each repeated for every aspect ratio.
    p3 = anchors[0].tensor[:num_cell]
    side = ((p3[:, 2] - p3[:, 0]) * (p3[:, 3] - p3[:, 1])).sqrt()
    expected = torch.tensor([32 * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
    assert torch.allclose(side, expected.repeat_interleave(len(aspect_ratios)), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"anchor_scale": 0.0}, "MODEL.RETINANET_FL.ANCHOR_SCALE"),
        ({"scales_per_octave": 0}, "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE"),
        ({"scales_per_octave": 1.5}, "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE"),
        ({"aspect_ratios": [[0.5, -1.0]]}, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"),
        ({"offset": 1.0}, "MODEL.ANCHOR_GENERATOR.OFFSET"),
    ],
)
def test_bad_values_name_the_config_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OctaveAnchorGenerator(strides=STRIDES, **kwargs)
