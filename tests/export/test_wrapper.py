"""ExportableDetector: the eager model's detections, bit for bit, from post-processing written
for torch.export."""

import pytest
import torch
from detectron2.modeling import build_model

from retinanet_fl.export import ExportableDetector

from .conftest import random_image, unsaturate_head

SIZES = [(64, 64), (80, 100), (128, 96), (40, 300)]


def _eager(model, image):
    with torch.no_grad():
        instances = model([{"image": image.float()}])[0]["instances"]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def _assert_equal(actual, expected):
    assert len(expected[1]) > 0
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.fixture(scope="module")
def softmax_model(small_cfg):
    """The small model with the softmax focal loss head (K + 1 logits, background last)."""
    torch.manual_seed(1)
    model = build_model(small_cfg("MODEL.RETINANET_FL.CLS_LOSS", "softmax_focal")).eval()
    return unsaturate_head(model, random_image(96, 128))


@pytest.mark.parametrize("size", SIZES)
def test_same_detections_as_eager_r50(r50_model, size):
    image = random_image(*size, seed=size[0] * size[1]).to(torch.uint8)
    with torch.no_grad():
        actual = ExportableDetector(r50_model)(image)
    _assert_equal(actual, _eager(r50_model, image))


@pytest.mark.parametrize("size", SIZES[:2])
def test_same_detections_as_eager_softmax_head(softmax_model, size):
    image = random_image(*size, seed=size[0] + 7).to(torch.uint8)
    with torch.no_grad():
        actual = ExportableDetector(softmax_model)(image)
    _assert_equal(actual, _eager(softmax_model, image))


def test_same_detections_with_a_low_threshold_and_few_candidates(small_cfg):
    """Every level's top-k full (threshold 0.0), and NMS over more than 1000 candidates, where
    the eager model switches torchvision's NMS to its per-class loop."""
    cfg = small_cfg(
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "300"
    )
    torch.manual_seed(2)
    model = unsaturate_head(build_model(cfg).eval(), random_image(96, 128))
    image = random_image(160, 192, seed=4).to(torch.uint8)
    with torch.no_grad():
        actual = ExportableDetector(model)(image)
    _assert_equal(actual, _eager(model, image))


def test_grid_anchors_are_the_anchor_generators(r50_model):
    detector = ExportableDetector(r50_model)
    features = [torch.zeros(1, 1, h, w) for h, w in [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]]
    expected = [boxes.tensor for boxes in r50_model.anchor_generator(features)]
    for actual, wanted in zip(detector.grid_anchors(features), expected):
        assert torch.equal(actual, wanted)


def test_nms_keeps_overlapping_boxes_of_other_classes(r50_model):
    detector = ExportableDetector(r50_model)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5], [1.0, 1.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.tensor([0, 1, 0])
    kept_boxes, kept_scores, kept_classes = detector.class_wise_nms(boxes, scores, classes)
    assert kept_scores.tolist() == pytest.approx([0.9, 0.8])
    assert kept_classes.tolist() == [0, 1]
    empty = detector.class_wise_nms(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    )
    assert [t.shape[0] for t in empty] == [0, 0, 0]


def test_rejects_other_models():
    with pytest.raises(TypeError, match="Export takes a RetinaNet"):
        ExportableDetector(torch.nn.Linear(2, 2))
