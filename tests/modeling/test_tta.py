"""Test-time augmentation: detections mapped back through the flip and resizes, merged, capped."""

import pytest
import torch
from detectron2.modeling import DatasetMapperTTA, build_model

from retinanet_fl.modeling.tta import DenseDetectorWithTTA

from ..export.conftest import unsaturate_head


def _symmetric_image(height=96, width=128):
    """A (3, H, W) image equal to its horizontal mirror."""
    generator = torch.Generator().manual_seed(0)
    half = torch.randint(0, 256, (3, height, width // 2), generator=generator).float()
    return torch.cat([half, half.flip(2)], dim=2)


def _model(small_cfg, *opts):
    cfg = small_cfg("MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", *opts)
    torch.manual_seed(0)
    return cfg, unsaturate_head(build_model(cfg).eval(), _symmetric_image())


def _mirror(boxes, width):
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def _assert_each_is_one_of(merged, boxes, scores, classes):
    """Every merged detection is one of the given (box, score, class), best first; the merge's
    NMS (on the clipped boxes) may only drop some. Tolerances: a batch of copies runs other
    kernels than a single image."""
    assert len(merged) > 0
    assert (merged.scores[:-1] >= merged.scores[1:]).all()
    for box, score, label in zip(merged.pred_boxes.tensor, merged.scores, merged.pred_classes):
        same = ((boxes - box).abs().max(dim=1).values < 1e-3) & ((scores - score).abs() < 1e-5)
        assert (same & (classes == label)).any(), (box, score, label)


def test_flipped_copy_maps_back_to_mirrored_boxes(small_cfg):
    """On a symmetric image, the flipped copy is the image itself: its detections, mapped back
    through the flip, must be the model's detections mirrored about the image's centre line."""
    cfg, model = _model(small_cfg)
    image = _symmetric_image()
    assert torch.equal(image, image.flip(2))
    flip_only = DatasetMapperTTA(min_sizes=[96], max_size=1000, flip=True)
    tta = DenseDetectorWithTTA(cfg, model, tta_mapper=lambda d: flip_only(d)[1:])
    with torch.no_grad():
        plain = model([{"image": image}])[0]["instances"]
        merged = tta([{"image": image}])[0]["instances"]
    mirrored = _mirror(plain.pred_boxes.tensor, image.shape[2])
    _assert_each_is_one_of(merged, mirrored, plain.scores, plain.pred_classes)
    # The best detection always survives, mirrored.
    torch.testing.assert_close(merged.pred_boxes.tensor[0], mirrored[0], atol=1e-3, rtol=0)
    # Not the unmirrored boxes (the detections are not all symmetric themselves).
    assert not torch.allclose(merged.pred_boxes.tensor, plain.pred_boxes.tensor[: len(merged)])


def test_symmetric_image_gives_both_copies_boxes(small_cfg):
    """With the image and its flip, every merged detection is one of the model's boxes or its
    mirror, with its score."""
    cfg, model = _model(small_cfg)
    image = _symmetric_image()
    tta = DenseDetectorWithTTA(
        cfg, model, tta_mapper=DatasetMapperTTA(min_sizes=[96], max_size=1000, flip=True)
    )
    with torch.no_grad():
        plain = model([{"image": image}])[0]["instances"]
        merged = tta([{"image": image}])[0]["instances"]
    boxes = torch.cat([plain.pred_boxes.tensor, _mirror(plain.pred_boxes.tensor, 128)])
    scores = torch.cat([plain.scores, plain.scores])
    classes = torch.cat([plain.pred_classes, plain.pred_classes])
    _assert_each_is_one_of(merged, boxes, scores, classes)
    assert len(merged) <= cfg.TEST.DETECTIONS_PER_IMAGE


@pytest.mark.parametrize("max_detections", [3, 20])
def test_merged_detections_never_exceed_detections_per_image(small_cfg, max_detections):
    cfg, model = _model(small_cfg, "TEST.DETECTIONS_PER_IMAGE", str(max_detections))
    cfg.TEST.AUG.MIN_SIZES = (64, 96, 112)
    cfg.TEST.AUG.MAX_SIZE = 200
    tta = DenseDetectorWithTTA(cfg, model)
    image = torch.randint(0, 256, (3, 80, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        instances = tta([{"image": image.float(), "height": 160, "width": 200}])[0]["instances"]
        per_copy = model([{"image": image.float()}])[0]["instances"]
    assert len(per_copy) == max_detections  # each copy alone fills the quota
    assert len(instances) == max_detections
    assert instances.image_size == (160, 200)
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 160).all()
    assert (instances.scores[:-1] >= instances.scores[1:]).all()


def test_resized_copy_maps_back_to_original_pixels(small_cfg):
    """One copy at the size of the resized input: the detections come back in the original
    image's pixels, as the model's own rescaling to "height" × "width" gives them."""
    cfg, model = _model(small_cfg)
    image = torch.randint(0, 256, (3, 80, 100), generator=torch.Generator().manual_seed(2)).float()
    inputs = [{"image": image, "height": 160, "width": 200}]
    tta = DenseDetectorWithTTA(
        cfg, model, tta_mapper=DatasetMapperTTA(min_sizes=[80], max_size=1000, flip=False)
    )
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
        merged = tta(inputs)[0]["instances"]
    assert merged.image_size == (160, 200)
    boxes = expected.pred_boxes.tensor
    _assert_each_is_one_of(merged, boxes, expected.scores, expected.pred_classes)
    torch.testing.assert_close(merged.pred_boxes.tensor[0], boxes[0], atol=1e-3, rtol=0)
