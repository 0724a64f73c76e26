"""FocalLossRetinaNet against Detectron2's RetinaNet, plus labelling, normalizer and checkpoints."""

import os
import pickle

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import retinanet_fl  # noqa: F401  registers FocalLossRetinaNet
from retinanet_fl import get_cfg
from retinanet_fl.config import load_config
from retinanet_fl.modeling import loss_normalizer as loss_normalizer_module
from retinanet_fl.modeling import matching as matching_module
from retinanet_fl.modeling.anchors import OctaveAnchorGenerator
from retinanet_fl.modeling.matching import build_anchor_matcher, match_anchors
from retinanet_fl.modeling.meta_arch import FocalLossRetinaNet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3


def detectron2_cfg(depth: int = 18):
    """Detectron2's own RetinaNet R-50-FPN config (Base-RetinaNet.yaml), shrunk for the CPU."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    if depth == 18:
        cfg.MODEL.RESNETS.DEPTH = 18
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.FPN.OUT_CHANNELS = 64
        cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    return cfg


def our_cfg(depth: int = 18):
    """The same settings on our meta-architecture: the defaults define Detectron2's behaviour."""
    cfg = detectron2_cfg(depth)
    cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "OctaveAnchorGenerator"
    assert cfg.MODEL.RETINANET_FL.LOSS_NORMALIZER == "ema"
    assert cfg.MODEL.RETINANET_FL.ALLOW_LOW_QUALITY_MATCHES
    assert cfg.MODEL.RETINANET_FL.CLS_LOSS == "focal"
    assert cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA == 0.0
    assert (cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA, cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) == (
        2.0,
        0.25,
    )
    return cfg


def make_batch(seed: int, sizes=((96, 64, 3), (64, 96, 0), (80, 80, 2)), output_scale: float = 1.0):
    """Images of (height, width) with that many random GT boxes; "height"/"width" ask for
    detections rescaled by ``output_scale``."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for height, width, num_boxes in sizes:
        instances = Instances((height, width))
        top_left = torch.rand(num_boxes, 2, generator=generator) * torch.tensor(
            [width * 0.6, height * 0.6]
        )
        box_size = torch.rand(num_boxes, 2, generator=generator) * 32 + 8
        instances.gt_boxes = Boxes(torch.cat([top_left, top_left + box_size], dim=1))
        instances.gt_classes = torch.randint(0, NUM_CLASSES, (num_boxes,), generator=generator)
        batch.append(
            {
                "image": torch.rand(3, height, width, generator=generator) * 255,
                "instances": instances,
                "height": int(height * output_scale),
                "width": int(width * output_scale),
            }
        )
    return batch


def build_pair():
    torch.manual_seed(0)
    reference = build_model(detectron2_cfg())
    ours = build_model(our_cfg())
    assert type(reference) is RetinaNet and type(ours) is FocalLossRetinaNet
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def test_r50_fpn_coco_parameter_count_equals_detectron2():
    # Detectron2's own R-50-FPN COCO config with only the meta-architecture changed (so its
    # DefaultAnchorGenerator), and this project's paper config (octave anchors).
    detectron2_config = detectron2_cfg(depth=50)
    detectron2_config.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    # NUM_CLASSES 0 in the config: load_config takes COCO's 80 from DATASETS.TRAIN.
    project_config = load_config(
        os.path.join(REPO_ROOT, "configs/retinanet_R50_FPN.yaml"),
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"],
    )
    assert project_config.MODEL.RETINANET.NUM_CLASSES == 80
    for cfg in (detectron2_config, project_config):
        model = build_model(cfg)
        assert isinstance(model, FocalLossRetinaNet)
        assert sum(p.numel() for p in model.parameters()) == 37_915_572


def test_same_losses_gradients_and_detections_as_detectron2():
    reference, ours = build_pair()
    assert set(reference.state_dict()) == set(ours.state_dict()) - {"loss_normalizer_ema"}

    # Two steps, so the second uses the moving-average normalizer updated by the first.
    for seed in (1, 2):
        batch = make_batch(seed)
        with EventStorage():
            expected = reference(batch)
            actual = ours(batch)
        assert set(actual) == set(expected) == {"loss_cls", "loss_box_reg"}
        for name in expected:
            assert actual[name].dtype == torch.float32
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=0.0)
        sum(expected.values()).backward()
        sum(actual.values()).backward()
        reference_grads = dict(reference.named_parameters())
        for name, param in ours.named_parameters():
            expected_grad = reference_grads[name].grad
            if expected_grad is None:
                assert param.grad is None, name
                continue
            torch.testing.assert_close(
                param.grad,
                expected_grad,
                rtol=1e-4,
                atol=1e-4 * expected_grad.abs().max().item(),
                msg=name,
            )
        reference.zero_grad()
        ours.zero_grad()
    assert ours.loss_normalizer_ema.item() == pytest.approx(reference.loss_normalizer, rel=1e-6)

    # Inference, with scores spread around 0.5 so that thresholding, top-k and NMS all matter,
    # and detections rescaled to twice the input size.
    with torch.no_grad():
        torch.nn.init.normal_(reference.head.cls_score.weight, std=0.05)
        reference.head.cls_score.bias.zero_()
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval()
    ours.eval()
    batch = make_batch(3, output_scale=2.0)
    with torch.no_grad():
        expected, actual = reference(batch), ours(batch)
    for expected_image, actual_image in zip(expected, actual):
        expected_instances, actual_instances = (
            expected_image["instances"],
            actual_image["instances"],
        )
        assert len(actual_instances) == len(expected_instances) > 10
        assert actual_instances.image_size == expected_instances.image_size
        # Our convolutions run channels-last (the default), Detectron2's contiguous: fp32 sums in
        # another order, ~1e-6 relative.
        torch.testing.assert_close(
            actual_instances.pred_boxes.tensor,
            expected_instances.pred_boxes.tensor,
            rtol=1e-5,
            atol=1e-4,
        )
        torch.testing.assert_close(
            actual_instances.scores, expected_instances.scores, rtol=1e-5, atol=1e-6
        )
        assert torch.equal(actual_instances.pred_classes, expected_instances.pred_classes)


def test_detectron2_checkpoint_loads_with_detection_checkpointer(tmp_path):
    reference, ours = build_pair()
    torch.manual_seed(5)
    fresh = build_model(our_cfg())
    DetectionCheckpointer(reference, save_dir=str(tmp_path)).save("detectron2_retinanet")
    DetectionCheckpointer(fresh).load(str(tmp_path / "detectron2_retinanet.pth"))
    for name, tensor in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_detectron_caffe2_retinanet_pkl_loads(tmp_path):
    """A Detectron (Caffe2) RetinaNet file names the head and P6/P7 blobs after the finest
    level; Detectron2's name conversion leaves them to us."""
    _, source = build_pair()
    ours = build_model(our_cfg())
    source_state = source.state_dict()
    blobs = {
        "fpn_6_w": source_state["backbone.top_block.p6.weight"],
        "fpn_6_b": source_state["backbone.top_block.p6.bias"],
        "fpn_7_w": source_state["backbone.top_block.p7.weight"],
        "fpn_7_b": source_state["backbone.top_block.p7.bias"],
        "fpn_inner_res5_2_sum_w": source_state["backbone.fpn_lateral5.weight"],
        "fpn_res4_1_sum_w": source_state["backbone.fpn_output4.weight"],
        "retnet_cls_pred_fpn3_w": source_state["head.cls_score.weight"],
        "retnet_cls_pred_fpn3_b": source_state["head.cls_score.bias"],
        "retnet_bbox_pred_fpn3_w": source_state["head.bbox_pred.weight"],
        "retnet_bbox_pred_fpn3_b": source_state["head.bbox_pred.bias"],
    }
    for conv in range(4):
        for tower in ("cls", "bbox"):
            for param, suffix in (("weight", "w"), ("bias", "b")):
                blobs[f"retnet_{tower}_conv_n{conv}_fpn3_{suffix}"] = source_state[
                    f"head.{tower}_subnet.{2 * conv}.{param}"
                ]
    path = tmp_path / "detectron_retinanet.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {k: v.numpy() for k, v in blobs.items()}}, f)

    DetectionCheckpointer(ours).load(str(path))
    loaded = ours.state_dict()
    for name in [n for n in source_state if n.startswith(("head.", "backbone.top_block."))] + [
        "backbone.fpn_lateral5.weight",
        "backbone.fpn_output4.weight",
    ]:
        assert torch.equal(loaded[name], source_state[name]), name


def test_ema_normalizer_is_a_checkpointed_buffer(tmp_path):
    _, ours = build_pair()
    assert "loss_normalizer_ema" in dict(ours.named_buffers())
    assert ours.loss_normalizer_ema.item() == 100.0
    with EventStorage():
        ours(make_batch(1))
    labels, _ = ours.label_anchors(
        ours.anchor_generator(_features(ours, make_batch(1))), _gt(make_batch(1))
    )
    num_pos = ((labels >= 0) & (labels < NUM_CLASSES)).sum().item()
    assert ours.loss_normalizer_ema.item() == pytest.approx(
        0.9 * 100 + 0.1 * max(num_pos, 1), rel=1e-6
    )

    DetectionCheckpointer(ours, save_dir=str(tmp_path)).save("model")
    resumed = build_model(our_cfg())
    assert resumed.loss_normalizer_ema.item() == 100.0
    DetectionCheckpointer(resumed).load(str(tmp_path / "model.pth"))
    assert resumed.loss_normalizer_ema.item() == ours.loss_normalizer_ema.item()


def _features(model, batch):
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    return [features[f] for f in model.head_in_features]


def _gt(batch):
    return [x["instances"] for x in batch]


def test_num_pos_normalizer_divides_by_positive_anchor_count(monkeypatch):
    _, ema_model = build_pair()
    cfg = our_cfg()
    cfg.MODEL.RETINANET_FL.LOSS_NORMALIZER = "num_pos"
    num_pos_model = build_model(cfg)
    num_pos_model.load_state_dict(ema_model.state_dict())
    batch = make_batch(4)
    labels, _ = ema_model.label_anchors(
        ema_model.anchor_generator(_features(ema_model, batch)), _gt(batch)
    )
    num_pos = ((labels >= 0) & (labels < NUM_CLASSES)).sum().item()
    assert num_pos > 0
    with EventStorage():
        ema_losses = ema_model(batch)
        num_pos_losses = num_pos_model(batch)
    ema_value = ema_model.loss_normalizer_ema.item()
    for name in ema_losses:
        torch.testing.assert_close(
            num_pos_losses[name] * num_pos, ema_losses[name] * ema_value, rtol=1e-5, atol=0
        )
    # The num_pos normalizer leaves the moving average alone.
    assert num_pos_model.loss_normalizer_ema.item() == 100.0

    # With two workers, each divides by the mean count, so that DDP's gradient averaging gives
    # the batch's summed loss over the batch's positive count; at least 1.
    def all_reduce_with_other_worker(tensor):
        tensor += 10.0  # the other worker's positives

    monkeypatch.setattr(loss_normalizer_module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(loss_normalizer_module.dist, "all_reduce", all_reduce_with_other_worker)
    assert num_pos_model._loss_normalizer(4) == 7.0
    monkeypatch.setattr(loss_normalizer_module.dist, "all_reduce", lambda tensor: None)
    assert num_pos_model._loss_normalizer(0) == 1.0


@pytest.mark.parametrize("normalizer", ["ema", "num_pos"])
def test_images_without_gt_boxes_train(normalizer):
    cfg = our_cfg()
    cfg.MODEL.RETINANET_FL.LOSS_NORMALIZER = normalizer
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = make_batch(5, sizes=((96, 96, 0), (64, 96, 0)))
    with EventStorage() as storage:
        losses = model(batch)
    assert losses["loss_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert model.head.cls_score.bias.grad.abs().sum() > 0
    assert storage.history("num_pos_anchors").latest() == 0
    if normalizer == "num_pos":
        assert storage.history("loss_normalizer").latest() == 1.0


def test_chunked_labelling_equals_unchunked_and_bounds_iou_size(monkeypatch):
    generator = OctaveAnchorGenerator(strides=[8, 16, 32, 64, 128])
    anchors = Boxes.cat(
        generator([torch.zeros(1, 1, -(-160 // s), -(-160 // s)) for s in (8, 16, 32, 64, 128)])
    )
    rng = torch.Generator().manual_seed(0)
    top_left = torch.rand(40, 2, generator=rng) * 130
    boxes = torch.cat([top_left, top_left + torch.rand(40, 2, generator=rng) * 90 + 4], dim=1)
    # A duplicate (ties between GT boxes), a tiny box (its best IoU is below 0.4, so only
    # low-quality matching makes it positive) and a box overlapping no anchor (best IoU 0,
    # tied by every anchor).
    boxes = torch.cat(
        [
            boxes,
            boxes[:1],
            torch.tensor([[50.0, 50.0, 52.0, 52.0], [5000.0, 5000.0, 5001.0, 5001.0]]),
        ]
    )
    gt_boxes = Boxes(boxes)

    largest_iou_columns = []
    real_pairwise_iou = matching_module.pairwise_iou

    def spy(a, b):
        largest_iou_columns.append(len(b))
        return real_pairwise_iou(a, b)

    monkeypatch.setattr(matching_module, "pairwise_iou", spy)
    for low_quality in (True, False):
        matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=low_quality)
        expected_idxs, expected_labels = matcher(real_pairwise_iou(gt_boxes, anchors))
        for chunk_size in (1000, 4097, len(anchors) - 1):
            largest_iou_columns.clear()
            idxs, labels = match_anchors(gt_boxes, anchors, matcher, chunk_size)
            assert torch.equal(idxs, expected_idxs), (low_quality, chunk_size)
            assert torch.equal(labels, expected_labels), (low_quality, chunk_size)
            assert max(largest_iou_columns) <= chunk_size
        if low_quality:
            assert (expected_labels == 1).all()  # the box outside the image ties with every anchor
    # Without the far box, low-quality matches add positives the paper's rule does not have.
    matcher_on = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    matcher_off = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=False)
    near = Boxes(boxes[:-1])
    _, labels_on = match_anchors(near, anchors, matcher_on, 1000)
    _, labels_off = match_anchors(near, anchors, matcher_off, 1000)
    assert (labels_on == 1).sum() > (labels_off == 1).sum()
    assert torch.equal(labels_on[labels_off == 1], labels_off[labels_off == 1])


def test_model_labels_are_independent_of_chunk_size():
    _, ours = build_pair()
    batch = make_batch(6)
    anchors = ours.anchor_generator(_features(ours, batch))
    expected_labels, expected_boxes = ours.label_anchors(anchors, _gt(batch))
    ours.iou_chunk_size = 500
    labels, boxes = ours.label_anchors(anchors, _gt(batch))
    assert torch.equal(labels, expected_labels)
    for a, b in zip(boxes, expected_boxes):
        assert torch.equal(a, b)
    assert set(expected_labels.unique().tolist()) <= {-1, 0, 1, 2, NUM_CLASSES}


def test_losses_are_fp32_under_autocast_and_giou_box_loss():
    cfg = our_cfg()
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "giou"
    torch.manual_seed(0)
    model = build_model(cfg)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(make_batch(7, sizes=((64, 64, 2),)))
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value) and value.item() > 0, name


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "MODEL.RETINANET_FL.LOSS_NORMALIZER",
            "batch",
            "MODEL.RETINANET_FL.LOSS_NORMALIZER must be one of",
        ),
        ("MODEL.RETINANET_FL.LOSS_NORMALIZER_MOMENTUM", 1.0, "LOSS_NORMALIZER_MOMENTUM must be in"),
        ("MODEL.RETINANET_FL.IOU_CHUNK_SIZE", 0, "IOU_CHUNK_SIZE must be >= 1"),
        ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "l2", "BBOX_REG_LOSS_TYPE must be one of"),
        ("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", -0.1, "SMOOTH_L1_LOSS_BETA must be >= 0"),
        ("MODEL.RETINANET.NMS_THRESH_TEST", 0.0, r"NMS_THRESH_TEST must be in \(0, 1\]"),
        ("MODEL.RETINANET.PRIOR_PROB", 1.0, r"PRIOR_PROB must be in the open interval \(0, 1\)"),
    ],
)
def test_bad_config_values_name_key_and_range(key, value, message):
    cfg = our_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message) as error:
        build_model(cfg)
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_bad_matcher_and_feature_settings():
    with pytest.raises(ValueError, match="IOU_THRESHOLDS must be non-decreasing"):
        build_anchor_matcher([0.5, 0.4], [0, -1, 1], True)
    with pytest.raises(ValueError, match=r"IOU_LABELS must have len\(IOU_THRESHOLDS\) \+ 1 = 3"):
        build_anchor_matcher([0.4, 0.5], [0, 1], True)
    cfg = our_cfg()
    cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p9"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(cfg)


def test_gt_class_out_of_range_is_reported():
    _, ours = build_pair()
    batch = make_batch(8, sizes=((64, 64, 1),))
    batch[0]["instances"].gt_classes[:] = NUM_CLASSES
    with EventStorage(), pytest.raises(ValueError, match="NUM_CLASSES = 3"):
        ours(batch)


def test_detectors_with_different_gammas_in_one_process_match_detectron2():
    # Our default (compiled) loss kernel, several γ in one process: each detector's loss_cls is
    # Detectron2's RetinaNet's with the same γ.
    batch = make_batch(4)
    for gamma in (2.0, 1.0, 3.0):
        torch.manual_seed(0)
        reference_cfg, our_cfg_ = detectron2_cfg(), our_cfg()
        for cfg in (reference_cfg, our_cfg_):
            cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = gamma
        reference = build_model(reference_cfg)
        ours = build_model(our_cfg_)
        assert ours.cls_loss.kernel == "compiled"
        ours.load_state_dict(reference.state_dict(), strict=True)
        with EventStorage():
            expected, actual = reference(batch), ours(batch)
        torch.testing.assert_close(
            actual["loss_cls"], expected["loss_cls"], rtol=1e-5, atol=0, msg=f"gamma={gamma}"
        )


@pytest.mark.parametrize("score_thresh", [0.0, 0.5])
def test_inference_postprocessing_equals_detectron2_bit_for_bit(score_thresh):
    """On the same head outputs (ours channels-last, as our head gives them), our inference
    post-processing (anchors, scores, per-level selection and decoding, NMS) gives Detectron2's
    detections exactly. At 0.5, about half the pairs pass the threshold; at 0, all do."""
    reference, ours = build_pair()
    with torch.no_grad():
        torch.nn.init.normal_(reference.head.cls_score.weight, std=0.05)
        reference.head.cls_score.bias.zero_()
    reference.eval()
    ours.eval()
    reference.test_score_thresh = ours.test_score_thresh = score_thresh
    with torch.no_grad():
        images = reference.preprocess_image(make_batch(3))
        features = reference.backbone(images.tensor)
        features = [features[f] for f in reference.head_in_features]
        predictions = reference.head(features)
        # Both score in place: each takes its own copy.
        expected = reference.forward_inference(
            images, features, [[x.clone() for x in p] for p in predictions]
        )
        actual = ours.forward_inference(
            images,
            features,
            [[x.clone(memory_format=torch.channels_last) for x in p] for p in predictions],
        )
    for expected_instances, actual_instances in zip(expected, actual):
        assert len(actual_instances) == len(expected_instances) == ours.max_detections_per_image
        assert actual_instances.image_size == expected_instances.image_size
        assert torch.equal(actual_instances.pred_boxes.tensor, expected_instances.pred_boxes.tensor)
        assert torch.equal(actual_instances.scores, expected_instances.scores)
        assert torch.equal(actual_instances.pred_classes, expected_instances.pred_classes)
