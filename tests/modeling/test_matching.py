"""
Anchor matchers: ATSS against a brute-force reference of its algorithm written here, the matcher
registry and its errors. (The IoU matcher, the default, is tested against Detectron2's in
test_meta_arch.py.)
"""

import math

import pytest
import torch
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, Instances

from retinanet_fl import get_cfg
from retinanet_fl.modeling.anchors import OctaveAnchorGenerator
from retinanet_fl.modeling.matching import (
    ATSSMatcher,
    build_anchor_matcher_from_config,
    label_anchors,
)

# The reference decides in float64 what the matcher decides in float32: every candidate's IoU must
# be this far from its threshold for the comparison to test the algorithm rather than rounding.
THRESHOLD_MARGIN = 1e-5


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def atss_reference(gt_boxes, levels, topk, anchors_per_location):
    """
    ATSS (Zhang et al. 2020, Algorithm 1) with loops over Python floats (float64).

    Args:
        gt_boxes: list of [x1, y1, x2, y2].
        levels: per pyramid level, the list of its anchors [x1, y1, x2, y2].
        topk: k; each level gives its k × anchors_per_location anchors nearest to the box's
            centre (ties: the lower index).

    Returns:
        per anchor, the index of its GT box or -1 (background); the smallest distance of a
        candidate's IoU to its box's threshold.
    """
    anchors = [anchor for level in levels for anchor in level]
    positives = {}  # anchor -> list of (iou, gt)
    margin = math.inf
    for g, box in enumerate(gt_boxes):
        gx, gy = _centre(box)
        candidates, offset = [], 0
        for level in levels:

            def squared_distance(i, level=level):
                ax, ay = _centre(level[i])
                return (ax - gx) ** 2 + (ay - gy) ** 2

            order = sorted(range(len(level)), key=lambda i: (squared_distance(i), i))
            candidates += [offset + i for i in order[: topk * anchors_per_location]]
            offset += len(level)
        ious = [_iou(box, anchors[c]) for c in candidates]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        threshold = mean + std
        for c, value in zip(candidates, ious):
            margin = min(margin, abs(value - threshold))
            ax, ay = _centre(anchors[c])
            inside = box[0] < ax < box[2] and box[1] < ay < box[3]
            if value >= threshold and inside:
                positives.setdefault(c, []).append((value, g))
    assignment = [-1] * len(anchors)
    for c, pairs in positives.items():
        best = max(value for value, _ in pairs)
        assignment[c] = min(g for value, g in pairs if value == best)
    return assignment, margin


def grid_level(size: int, stride: int, anchor_sizes):
    """Square anchors of ``anchor_sizes`` centred at ((i + .5) stride, (j + .5) stride), row-major,
    the anchors of a position consecutive (as Detectron2's generators order them)."""
    anchors = []
    for j in range(size // stride):
        for i in range(size // stride):
            cx, cy = (i + 0.5) * stride, (j + 0.5) * stride
            anchors += [[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2] for s in anchor_sizes]
    return anchors


def run_matcher(gt_boxes, levels, topk, anchors_per_location):
    matcher = ATSSMatcher(topk, anchors_per_location)
    matched, labels = matcher(
        Boxes(torch.tensor(gt_boxes, dtype=torch.float32)),
        [Boxes(torch.tensor(level, dtype=torch.float32)) for level in levels],
    )
    assert set(labels.unique().tolist()) <= {0, 1}  # no ignored anchors
    return torch.where(labels == 1, matched, -1).tolist()


# Hand-built scene, 64 px: two overlapping boxes (0, 1), a duplicate of one (2: ties between GT
# boxes), two boxes smaller than every anchor around an anchor centre, one alone (3) and one
# inside box 0 (4: its anchor overlaps box 0 more), a box with no anchor centre inside (5), a wide
# box (6) and a box sticking out of the image (7).
HAND_BUILT_BOXES = [
    [8.0, 8.0, 40.0, 36.0],
    [16.0, 12.0, 49.0, 45.0],
    [16.0, 12.0, 49.0, 45.0],
    [50.0, 2.0, 55.0, 7.5],
    [26.0, 25.0, 31.0, 30.5],
    [5.0, 5.0, 7.0, 11.0],
    [2.0, 50.0, 62.0, 63.0],
    [44.0, 40.0, 70.0, 71.0],
]


@pytest.mark.parametrize(
    "anchor_sizes, topk", [((32.0,), 9), ((16.0, 24.0), 3), ((32.0,), 2), ((20.0, 28.0), 1)]
)
def test_atss_equals_the_brute_force_reference(anchor_sizes, topk):
    # Three levels (strides 8, 16, 32); anchor_sizes are those at stride 8, scaled with the
    # stride (32 px is 4 × stride).
    levels = [
        grid_level(64, stride, [size * stride / 8 for size in anchor_sizes])
        for stride in (8, 16, 32)
    ]
    expected, margin = atss_reference(HAND_BUILT_BOXES, levels, topk, len(anchor_sizes))
    assert margin > THRESHOLD_MARGIN
    assert run_matcher(HAND_BUILT_BOXES, levels, topk, len(anchor_sizes)) == expected
    assigned = set(expected)
    # The duplicate box loses every tie to box 1; the small box alone gets a positive; the box
    # without an anchor centre inside gets none.
    assert 1 in assigned and 2 not in assigned
    assert 3 in assigned and 5 not in assigned


def test_every_box_the_algorithm_gives_a_positive_gets_one():
    levels = [grid_level(64, stride, [4.0 * stride]) for stride in (8, 16, 32)]
    expected, _ = atss_reference(HAND_BUILT_BOXES, levels, 9, 1)
    ours = run_matcher(HAND_BUILT_BOXES, levels, 9, 1)
    for g in range(len(HAND_BUILT_BOXES)):
        assert (g in ours) == (g in expected), g
    # With 4 × stride anchors the small box inside box 0 loses its one positive to box 0.
    assert {g for g in expected if g >= 0} == {0, 1, 3, 6, 7}


def test_atss_on_octave_anchors_equals_the_reference():
    # The real generator: 3 aspect ratios per position, P3-P5 of a 96 × 128 image, random boxes.
    generator = OctaveAnchorGenerator(strides=[8, 16, 32], anchor_scale=4.0, scales_per_octave=1)
    levels = generator([torch.zeros(1, 1, 96 // s, 128 // s) for s in (8, 16, 32)])
    rng = torch.Generator().manual_seed(0)
    corners = torch.rand(12, 2, generator=rng) * torch.tensor([110.0, 80.0])
    sizes = torch.rand(12, 2, generator=rng) * 50 + 2
    boxes = torch.cat([corners, corners + sizes], dim=1)
    reference_levels = [level.tensor.double().tolist() for level in levels]
    expected, margin = atss_reference(boxes.double().tolist(), reference_levels, 9, 3)
    assert margin > THRESHOLD_MARGIN
    matched, labels = ATSSMatcher(9, 3)(Boxes(boxes), levels)
    assert torch.where(labels == 1, matched, -1).tolist() == expected
    assert sum(g >= 0 for g in expected) > len(boxes)


def test_label_anchors_gives_classes_background_and_no_ignored():
    levels = [Boxes(torch.tensor(grid_level(64, s, [4.0 * s]))) for s in (8, 16, 32)]
    with_boxes = Instances((64, 64))
    with_boxes.gt_boxes = Boxes(torch.tensor(HAND_BUILT_BOXES))
    with_boxes.gt_classes = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    empty = Instances((64, 64))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    num_classes = 3
    labels, boxes = label_anchors(levels, [with_boxes, empty], ATSSMatcher(9, 1), num_classes, 10)
    expected, _ = atss_reference(
        HAND_BUILT_BOXES, [level.tensor.tolist() for level in levels], 9, 1
    )
    expected_labels = [with_boxes.gt_classes[g].item() if g >= 0 else num_classes for g in expected]
    assert labels[0].tolist() == expected_labels
    assert (labels[1] == num_classes).all()
    foreground = labels[0] < num_classes
    matched = torch.tensor([g for g in expected if g >= 0])
    assert torch.equal(boxes[0][foreground], with_boxes.gt_boxes.tensor[matched])


def test_registry_builds_each_matcher_and_names_bad_settings():
    cfg = get_cfg()
    assert cfg.MODEL.RETINANET_FL.ANCHOR_MATCHER == "iou"
    assert isinstance(build_anchor_matcher_from_config(cfg, 9), Matcher)
    cfg.MODEL.RETINANET_FL.ANCHOR_MATCHER = "atss"
    cfg.MODEL.RETINANET_FL.ATSS_TOPK = 5
    matcher = build_anchor_matcher_from_config(cfg, 3)
    assert (matcher.topk, matcher.anchors_per_location) == (5, 3)
    cfg.MODEL.RETINANET_FL.ATSS_TOPK = 0
    with pytest.raises(ValueError, match=r"MODEL.RETINANET_FL.ATSS_TOPK must be an integer >= 1"):
        build_anchor_matcher_from_config(cfg, 1)
    cfg.MODEL.RETINANET_FL.ANCHOR_MATCHER = "ssd"
    with pytest.raises(
        ValueError, match=r"ANCHOR_MATCHER = 'ssd' is not an anchor matcher; .*\['atss', 'iou'\]"
    ):
        build_anchor_matcher_from_config(cfg, 1)
