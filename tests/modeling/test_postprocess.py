"""
Our per-level candidate selection and decoding against Detectron2's
``DenseDetector._decode_per_level_predictions``: the same boxes, scores and classes, bit for bit;
the traced top-k on fewer candidates; dropping non-finite boxes.
"""

from types import SimpleNamespace

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances

from retinanet_fl.modeling.meta_arch import FocalLossRetinaNet
from retinanet_fl.modeling.postprocess import drop_non_finite_boxes, top_candidates

NUM_ANCHORS, NUM_CLASSES = 60, 7
IMAGE_SIZE = (96, 128)


def _level(seed: int, scores: str):
    """One level's anchors ``(R, 4)``, deltas ``(R, 4)`` and ``(R, K)`` scores of a kind."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(NUM_ANCHORS, 2, generator=generator) * 64
    size = 8 + torch.rand(NUM_ANCHORS, 2, generator=generator) * 32
    anchors = torch.cat([top_left, top_left + size], dim=1)
    deltas = torch.randn(NUM_ANCHORS, 4, generator=generator) * 0.3
    if scores == "random":
        values = torch.rand(NUM_ANCHORS, NUM_CLASSES, generator=generator)
    elif scores == "ties":
        # Five distinct values: ties inside the top-k and across its boundary.
        values = torch.randint(0, 5, (NUM_ANCHORS, NUM_CLASSES), generator=generator) / 5.0
    elif scores == "low":
        # All below 0.05: no candidate at that threshold.
        values = torch.rand(NUM_ANCHORS, NUM_CLASSES, generator=generator) * 0.05
    else:
        # The softmax loss's scores: a column slice of a (R, K + 1) softmax, not contiguous.
        logits = torch.randn(NUM_ANCHORS, NUM_CLASSES + 1, generator=generator)
        values = logits.softmax(dim=1)[:, :NUM_CLASSES]
    return Boxes(anchors), values, deltas


def _decode(decode, anchors, scores, deltas, score_thresh, topk):
    # The method reads nothing of the detector but its box transform.
    detector = SimpleNamespace(box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)))
    return decode(detector, anchors, scores, deltas, score_thresh, topk, IMAGE_SIZE)


@pytest.mark.parametrize("scores", ["random", "ties", "low", "softmax"])
@pytest.mark.parametrize("score_thresh", [0.0, 0.05])
# 25: fewer than the candidates; 1000: more than every (anchor, class) pair.
@pytest.mark.parametrize("topk", [25, 1000])
def test_decode_equals_detectron2(scores, score_thresh, topk):
    anchors, values, deltas = _level(seed=len(scores) + topk, scores=scores)
    expected = _decode(
        DenseDetector._decode_per_level_predictions, anchors, values, deltas, score_thresh, topk
    )
    actual = _decode(
        FocalLossRetinaNet._decode_per_level_predictions,
        anchors,
        values,
        deltas,
        score_thresh,
        topk,
    )
    num_above = int((values > score_thresh).sum())
    assert len(expected) == min(num_above, topk)
    if scores == "low" and score_thresh == 0.05:
        assert len(expected) == 0
    assert actual.image_size == expected.image_size
    assert set(actual.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(actual.scores, expected.scores)
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    assert actual.pred_classes.dtype == expected.pred_classes.dtype == torch.int64


def test_top_candidates_indices():
    scores = torch.tensor([[0.1, 0.7, 0.0], [0.9, 0.3, 0.7], [0.0, 0.0, 0.2]])
    top_scores, anchor_idxs, class_idxs = top_candidates(scores, 0.15, 3)
    assert torch.equal(top_scores, torch.tensor([0.9, 0.7, 0.7]))
    assert torch.equal(scores[anchor_idxs, class_idxs], top_scores)
    assert set(zip(anchor_idxs.tolist(), class_idxs.tolist())) == {(1, 0), (0, 1), (1, 2)}


def test_traced_top_candidates_run_on_fewer_candidates_than_traced():
    """Traced with more candidates than the top-k, run with fewer: the top-k's size comes from
    the traced candidate count, clamped, not from the tracing input."""

    def select(scores):
        return top_candidates(scores, 0.05, 25)

    _, many, _ = _level(seed=0, scores="random")
    _, few, _ = _level(seed=1, scores="low")
    few[3, 2], few[10, 0] = 0.5, 0.6
    with torch.no_grad():
        traced = torch.jit.trace(select, (many,), check_trace=False)
    for scores in (many, few, torch.zeros(NUM_ANCHORS, NUM_CLASSES)):
        expected, actual = select(scores), traced(scores)
        for e, a in zip(expected, actual):
            assert torch.equal(a, e)
    assert len(traced(few)[0]) == 2


def test_drop_non_finite_boxes():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, float("nan"), 1.0, 1.0], [1.0, 1.0, 2, 2]])
    candidates = Instances(IMAGE_SIZE, pred_boxes=Boxes(boxes), scores=torch.tensor([3.0, 2, 1]))
    kept = drop_non_finite_boxes(candidates)
    assert torch.equal(kept.pred_boxes.tensor, boxes[[0, 2]])
    assert torch.equal(kept.scores, torch.tensor([3.0, 1.0]))
    # All finite: the same candidates, not a copy.
    assert drop_non_finite_boxes(kept) is kept
