"""Detectron2's RetinaNet end-to-end cases (non-finite predictions, autocast), on
FocalLossRetinaNet."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

import retinanet_fl  # noqa: F401  registers the model and the datasets
from tests.conftest import IMAGE_SIZE

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def eval_model(small_cfg):
    torch.manual_seed(0)
    return build_model(small_cfg()).eval()


def _predictions(model, images):
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, deltas = model.head(features)
    return features, logits, deltas


@pytest.mark.parametrize(
    "logit, delta",
    [
        (NAN, 0.0),
        (-INF, 0.0),
        (INF, 0.0),
        (2.0, NAN),
        (2.0, INF),
        (2.0, -INF),
        (INF, INF),
        (NAN, NAN),
    ],
)
@torch.no_grad()
def test_non_finite_predictions_do_not_crash_inference(eval_model, logit, delta):
    images = ImageList.from_tensors([torch.rand(3, IMAGE_SIZE, IMAGE_SIZE)], 32)
    features, logits, deltas = _predictions(eval_model, images)
    logits = [torch.full_like(x, logit) for x in logits]
    deltas = [torch.full_like(x, delta) for x in deltas]
    (detections,) = eval_model.forward_inference(images, features, [logits, deltas])
    assert set(detections.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert len(detections) <= eval_model.max_detections_per_image
    if logit > eval_model.test_score_thresh and np.isfinite(delta):
        assert len(detections) == eval_model.max_detections_per_image
        assert torch.isfinite(detections.pred_boxes.tensor).all()
    else:
        # NaN and -inf logits: no score passes the threshold; non-finite deltas decode to
        # non-finite boxes, which are dropped rather than passed on as detections.
        assert len(detections) == 0


@torch.no_grad()
def test_full_inference_returns_only_finite_boxes_inside_the_image(eval_model):
    """Non-finite deltas for half the anchors, NaN and inf pixels: detections stay usable."""

    def corrupt_head(module, inputs, outputs):
        logits, deltas = outputs
        for level in deltas:
            level[:, :, ::2] = NAN
            level[:, :, 1::4] = INF
        return logits, deltas

    image = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE) * 255
    handle = eval_model.head.register_forward_hook(corrupt_head)
    try:
        (output,) = eval_model(
            [{"image": image, "height": 2 * IMAGE_SIZE, "width": 2 * IMAGE_SIZE}]
        )
    finally:
        handle.remove()
    boxes = output["instances"].pred_boxes.tensor
    assert len(boxes) > 0 and torch.isfinite(boxes).all()
    assert (boxes >= 0).all() and (boxes <= 2 * IMAGE_SIZE).all()

    for value in (NAN, INF):
        corrupted = image.clone()
        corrupted[:, 10:30, 10:30] = value
        (output,) = eval_model([{"image": corrupted}])
        assert torch.isfinite(output["instances"].pred_boxes.tensor).all()


def _record_dtypes(module, dtypes):
    def hook(_, inputs, outputs):
        dtypes.append((inputs[0][0].dtype, outputs[0][0].dtype))

    return module.register_forward_hook(hook)


def test_bf16_autocast_training_and_inference_on_cpu(small_cfg):
    # At 64 px P6 is 1x1, and PyTorch 2.14's CPU bf16 weight gradient of a 3x3 stride-2 conv on a
    # 1x1 input (P7's) is NaN in about a third of calls; at 128 px P6 is 2x2 and the gradient is
    # finite.
    image_size = 2 * IMAGE_SIZE
    cfg = small_cfg("MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg)
    head_dtypes = []
    handle = _record_dtypes(model.head, head_dtypes)
    instances = Instances((image_size, image_size))
    instances.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 5.0, 110.0, 90.0]]))
    instances.gt_classes = torch.tensor([0, 2])
    batch = [{"image": torch.rand(3, image_size, image_size) * 255, "instances": instances}]
    try:
        with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(batch)
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            (output,) = model([{"image": batch[0]["image"]}])
    finally:
        handle.remove()
    # The head ran in bf16 both times; the losses and the boxes are fp32 all the same.
    assert head_dtypes == [(torch.bfloat16, torch.bfloat16)] * 2
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.head.cls_score.weight.grad.abs().sum() > 0
    detections = output["instances"]
    assert len(detections) > 0 and detections.pred_boxes.tensor.dtype == torch.float32
    assert torch.isfinite(detections.pred_boxes.tensor).all()
    assert torch.isfinite(detections.scores.float()).all()


def test_tiny_p6_p7_maps_run_in_fp32_under_cpu_autocast(small_cfg):
    # PyTorch's CPU bf16 weight gradient of a 3x3 stride-2 conv on a 1x1 input is NaN in a few
    # percent of calls: P6/P7 compute in fp32 when C5 is at most 2x2 (64 px images), in bf16 else.
    model = build_model(small_cfg())
    top_block = model.backbone.top_block
    input_dtypes = []
    handles = [
        conv.register_forward_pre_hook(lambda module, args: input_dtypes.append(args[0].dtype))
        for conv in (top_block.p6, top_block.p7)
    ]
    try:
        for size, expected in ((2, torch.float32), (4, torch.bfloat16)):
            input_dtypes.clear()
            c5 = torch.randn(2, top_block.p6.in_channels, size, size, requires_grad=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                p6, p7 = top_block(c5)
            assert p6.dtype == p7.dtype == expected, size
            (p6.float().sum() + p7.float().sum()).backward()
            assert input_dtypes == [expected, expected] or expected == torch.bfloat16, size
    finally:
        for handle in handles:
            handle.remove()
    # The parameters keep Detectron2's names, so checkpoints load as before.
    assert {"backbone.top_block.p6.weight", "backbone.top_block.p7.bias"} <= set(model.state_dict())
