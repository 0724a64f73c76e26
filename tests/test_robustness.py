"""
Robustness of FocalLossRetinaNet and its Trainer: config mistakes caught at build time, NaN or
infinite losses stopping training with the term named, and the cases of Detectron2's RetinaNet
end-to-end tests (non-finite predictions at inference, autocast) run against our model.
"""
import json
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, ImageList, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

import retinanet_fl  # noqa: F401  registers the model and the datasets
from retinanet_fl import train_net
from retinanet_fl.config import load_config
from retinanet_fl.engine import checks
from retinanet_fl.engine.trainer import Trainer
from retinanet_fl.modeling.cls_losses import FocalClsLoss

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO_ROOT, "configs", "Base-RetinaNet-FL.yaml")
CLASSES = ("circle", "square", "star")
IMAGE_SIZE = 64


def small_cfg(*opts):
    """Our paper config on an R-18-FPN with a one-conv head, on the CPU, without datasets."""
    return load_config(BASE_CONFIG, [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.RETINANET.NUM_CLASSES", str(len(CLASSES)),
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        *opts,
    ])


@pytest.fixture
def check_warnings(caplog, monkeypatch):
    """The messages that retinanet_fl.engine.checks logs, whatever its loggers were set up to do."""
    logger = logging.getLogger(checks.__name__)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger=checks.__name__)
    yield lambda: [r.getMessage() for r in caplog.records if r.name == checks.__name__]
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """Four random images with one or two boxes each, as Detectron2 dataset dicts."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    records = []
    for image_id in range(4):
        file_name = str(root / f"{image_id}.png")
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(file_name)
        annotations = [
            {"bbox": [8.0 + 20 * k, 10.0, 24.0, 30.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": k}
            for k in range(1 + image_id % 2)
        ]
        records.append({
            "file_name": file_name, "image_id": image_id, "height": IMAGE_SIZE, "width": IMAGE_SIZE,
            "annotations": annotations,
        })
    return root, records


def register_tiny(records, prefix="tiny"):
    name = f"test_robustness_{prefix}_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [dict(record) for record in records])
    MetadataCatalog.get(name).set(thing_classes=list(CLASSES))
    return name


def train_cfg(dataset_name, output_dir, *opts):
    return small_cfg(
        "DATASETS.TRAIN", f"('{dataset_name}',)",
        "MODEL.RESNETS.NORM", "BN",  # from scratch
        "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", f"({IMAGE_SIZE},)",
        "INPUT.MAX_SIZE_TRAIN", str(IMAGE_SIZE), "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(output_dir), "SEED", "0",
        *opts,
    )


# ------------------------------------------------------------------------------------------------
# Values of the keys the model reads: each error names the key, the value and what is allowed.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.RETINANET_FL.CLS_LOSS", "dice", "CLS_LOSS = 'dice' is not a registered classification loss"),
        ("MODEL.RETINANET.NORM", "BatchNorm",
         r"NORM must be one of \('', 'BN', 'SyncBN', 'FrozenBN', 'GN', 'LN'\) .*got 'BatchNorm'"),
        ("MODEL.RETINANET.BBOX_REG_WEIGHTS", (1.0, 1.0, 0.0, 1.0),
         r"BBOX_REG_WEIGHTS must be 4 finite numbers > 0 .*got \[1.0, 1.0, 0.0, 1.0\]"),
        ("MODEL.RETINANET.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0),
         r"BBOX_REG_WEIGHTS must be 4 finite numbers > 0 .*got \[10.0, 10.0, 5.0\]"),
        ("MODEL.RETINANET.IOU_THRESHOLDS", [0.5, 0.4],
         r"IOU_THRESHOLDS must be non-decreasing values in \(0, 1\] .*got \[0.5, 0.4\]"),
        ("MODEL.RETINANET.IOU_THRESHOLDS", [0.0, 0.5],
         r"IOU_THRESHOLDS must be non-decreasing values in \(0, 1\] .*got \[0.0, 0.5\]"),
        ("MODEL.RETINANET.SCORE_THRESH_TEST", float("nan"), r"SCORE_THRESH_TEST must be in \[0, 1\), got nan"),
        ("MODEL.RETINANET_FL.ANCHOR_SCALE", -4.0, "ANCHOR_SCALE must be a positive number .*got -4.0"),
        ("MODEL.RETINANET_FL.LOSS_KERNEL", "triton",
         r"LOSS_KERNEL must be one of \('compiled', 'eager'\), got 'triton'"),
    ],
)
def test_bad_key_values_are_named_with_the_allowed_range(key, value, message):
    cfg = small_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises((ValueError, KeyError), match=message):
        Trainer.build_model(cfg)


def test_group_norm_needs_channels_divisible_by_its_groups():
    cfg = small_cfg("MODEL.RETINANET.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", "48")
    with pytest.raises(ValueError, match=r"'GN' uses 32 groups.*OUT_CHANNELS\) must be a multiple of 32, got 48"):
        build_model(cfg)
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    assert isinstance(build_model(cfg).head.cls_subnet[1], torch.nn.GroupNorm)


# ------------------------------------------------------------------------------------------------
# Common mistakes with Detectron2's keys, caught when the Trainer builds the model or the data.
# ------------------------------------------------------------------------------------------------
def test_num_classes_not_matching_the_dataset_names_both_numbers(tiny_images, check_warnings):
    name = register_tiny(tiny_images[1])
    cfg = small_cfg("DATASETS.TEST", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "80")
    with pytest.raises(ValueError) as error:
        Trainer.build_model(cfg)
    message = str(error.value)
    assert (
        f"MODEL.RETINANET.NUM_CLASSES = 80 does not match the 3 categories (thing_classes) of dataset '{name}'"
    ) in message
    assert "Set MODEL.RETINANET.NUM_CLASSES 3" in message
    assert "ROI_HEADS" not in message

    # The number put under MODEL.ROI_HEADS, where a two-stage detector reads it.
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    with pytest.raises(ValueError, match="ROI_HEADS.NUM_CLASSES is 3, but a RetinaNet reads MODEL.RETINANET.NUM"):
        Trainer.build_model(cfg)

    # COCO's 80 categories match; a dataset that is not registered is skipped (and not registered).
    cfg = small_cfg(
        "DATASETS.TRAIN", "('not_registered_anywhere', 'coco_2017_train')", "MODEL.RETINANET.NUM_CLASSES", "80"
    )
    assert isinstance(Trainer.build_model(cfg), torch.nn.Module)
    assert "not_registered_anywhere" not in MetadataCatalog
    assert check_warnings() == []


def test_num_classes_of_a_coco_json_is_checked_once_loaded(tiny_images, tmp_path):
    """register_coco_instances sets thing_classes when the json is read: the train loader checks then."""
    root, records = tiny_images
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    images = [{"id": r["image_id"], "file_name": os.path.basename(r["file_name"]), **size} for r in records]
    boxes = [(r["image_id"], a) for r in records for a in r["annotations"]]
    annotations = [
        {"id": i, "image_id": image_id, "category_id": a["category_id"] + 1, "bbox": a["bbox"], "area": 1.0}
        for i, (image_id, a) in enumerate(boxes, start=1)
    ]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    json_file = tmp_path / "tiny.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    name = f"test_robustness_json_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root))
    cfg = train_cfg(name, tmp_path / "out", "MODEL.RETINANET.NUM_CLASSES", "5")
    Trainer.build_model(cfg)  # nothing known about the categories yet
    with pytest.raises(ValueError, match=f"NUM_CLASSES = 5 does not match the 3 categories .* dataset '{name}'"):
        Trainer.build_train_loader(cfg)


@pytest.fixture
def train_net_module(monkeypatch):
    """retinanet_fl.train_net; the loggers its setup configures are restored afterwards."""
    for name in ("detectron2", "fvcore", "retinanet_fl"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    return train_net


def test_eval_only_checks_num_classes_before_loading_weights(train_net_module, tmp_path):
    args = default_argument_parser().parse_args([
        "--config-file", os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_FPN_synthetic.yaml"),
        "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "no_such_model.pth"),
        "MODEL.RETINANET.NUM_CLASSES", "80", "OUTPUT_DIR", str(tmp_path),
    ])
    # The weights file does not exist: the config check comes first.
    with pytest.raises(ValueError, match="NUM_CLASSES = 80 does not match the 6 categories .* 'synthetic_train'"):
        train_net_module.main(args)


@pytest.mark.parametrize(
    "key, value", [("SCORE_THRESH_TEST", 0.3), ("NMS_THRESH_TEST", 0.6), ("NUM_CLASSES", 3)]
)
def test_settings_under_roi_heads_warn_that_retinanet_reads_its_own(key, value, check_warnings):
    cfg = small_cfg(f"MODEL.ROI_HEADS.{key}", str(value), "MODEL.RETINANET.NUM_CLASSES", "80")
    checks.check_model_config(cfg)
    (message,) = check_warnings()
    assert message == (
        f"MODEL.ROI_HEADS.{key} is set to {value!r}, but FocalLossRetinaNet reads "
        f"MODEL.RETINANET.{key} (now {cfg.MODEL.RETINANET[key]!r}): set MODEL.RETINANET.{key} {value!r} instead."
    )
    # Set in both places: the user knows which one the model reads.
    cfg.MODEL.RETINANET[key] = value
    checks.check_model_config(cfg)
    assert len(check_warnings()) == 1


@pytest.mark.parametrize(
    "opts, unused",
    [
        (["MODEL.RETINANET_FL.OHEM_NMS_THRESH", "0.5"],
         "MODEL.RETINANET_FL.OHEM_NMS_THRESH set but not used: only MODEL.RETINANET_FL.CLS_LOSS 'ohem' reads "
         "them, and it is 'focal'"),
        (["MODEL.RETINANET_FL.FOCAL_STAR_GAMMA", "4.0", "MODEL.RETINANET_FL.CLS_LOSS", "ce"],
         "MODEL.RETINANET_FL.FOCAL_STAR_GAMMA set but not used: only MODEL.RETINANET_FL.CLS_LOSS 'focal_star' "
         "reads them, and it is 'ce'"),
        (["MODEL.ANCHOR_GENERATOR.NAME", "DefaultAnchorGenerator",
          "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE", "2"],
         "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE set but not used: only MODEL.ANCHOR_GENERATOR.NAME "
         "'OctaveAnchorGenerator' reads them"),
        (["MODEL.META_ARCHITECTURE", "RetinaNet"],
         "MODEL.META_ARCHITECTURE is 'RetinaNet', which reads none of MODEL.RETINANET_FL"),
    ],
)
def test_our_keys_that_the_model_does_not_read_warn(opts, unused, check_warnings):
    checks.check_model_config(small_cfg(*opts))
    messages = check_warnings()
    assert len(messages) == 1 and unused in messages[0], messages


def test_octave_anchor_keys_are_read_under_detectron2_retinanet(check_warnings):
    # Detectron2's RetinaNet builds OctaveAnchorGenerator through the registry: it reads
    # ANCHOR_SCALE, while the rest of MODEL.RETINANET_FL is unread.
    cfg = small_cfg("MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET_FL.ANCHOR_SCALE", "3.0")
    checks.check_model_config(cfg)
    (message,) = check_warnings()
    assert "LOSS_NORMALIZER" in message and "ANCHOR_SCALE" not in message


def test_anchor_sizes_that_octave_anchors_ignore_warn(check_warnings):
    cfg = small_cfg("MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64, 128, 256]]")
    Trainer.build_model(cfg)
    (message,) = check_warnings()
    assert "MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64, 128, 256]] is not used" in message
    assert "[[32.0, 40.3, 50.8], [64.0, 80.6, 101.6]" in message and "ANCHOR_SCALE = 4.0" in message
    # Sizes equal to the octave ones (Detectron2's RetinaNet configs) are fine.
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [
        [x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (32, 64, 128, 256, 512)
    ]
    Trainer.build_model(cfg)
    assert len(check_warnings()) == 1


@pytest.mark.parametrize(
    "config_file",
    [
        "Base-RetinaNet-FL.yaml",
        "retinanet_R50_FPN.yaml",
        "retinanet_R101_FPN.yaml",
        "synthetic/retinanet_R18_FPN_synthetic.yaml",
    ],
)
def test_shipped_configs_pass_the_checks_without_warnings(config_file, check_warnings):
    cfg = load_config(os.path.join(REPO_ROOT, "configs", config_file))
    checks.check_model_config(cfg)
    assert check_warnings() == []


# ------------------------------------------------------------------------------------------------
# Numerics: a NaN or infinite loss stops training, naming the iteration and the term.
# ------------------------------------------------------------------------------------------------
def test_nan_loss_stops_training_naming_iteration_and_term(tiny_images, tmp_path, monkeypatch):
    calls = []
    original_forward = FocalClsLoss.forward

    def nan_at_second_call(self, *args):
        calls.append(None)
        loss = original_forward(self, *args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(FocalClsLoss, "forward", nan_at_second_call)
    trainer = Trainer(train_cfg(register_tiny(tiny_images[1]), tmp_path))
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("Non-finite loss at iteration 1: loss_cls = nan (finite: loss_box_reg = ")
    assert "SOLVER.BASE_LR" in message
    assert trainer.iter == 1
    # It stopped before the optimizer step: the NaN gradients never reached the weights.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert [it for _, it in trainer.storage.history("loss_cls").values()] == [0]


def test_absurd_learning_rate_stops_training_with_a_named_term(tiny_images, tmp_path):
    cfg = train_cfg(register_tiny(tiny_images[1]), tmp_path, "SOLVER.BASE_LR", "1e12", "SOLVER.MAX_ITER", "10")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    message = r"^Non-finite loss at iteration \d+: loss_(cls|box_reg) = (nan|inf)"
    with pytest.raises(FloatingPointError, match=message):
        trainer.train()
    assert trainer.iter < cfg.SOLVER.MAX_ITER - 1


# ------------------------------------------------------------------------------------------------
# Detectron2's RetinaNet end-to-end cases, on FocalLossRetinaNet.
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eval_model():
    torch.manual_seed(0)
    return build_model(small_cfg()).eval()


def _predictions(model, images):
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, deltas = model.head(features)
    return features, logits, deltas


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "logit, delta",
    [(NAN, 0.0), (-INF, 0.0), (INF, 0.0), (2.0, NAN), (2.0, INF), (2.0, -INF), (INF, INF), (NAN, NAN)],
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
        (output,) = eval_model([{"image": image, "height": 2 * IMAGE_SIZE, "width": 2 * IMAGE_SIZE}])
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


def test_bf16_autocast_training_and_inference_on_cpu():
    # At 64 px P6 is 1x1, and PyTorch 2.14's CPU bf16 weight gradient of a 3x3 stride-2 conv on a
    # 1x1 input (P7's) is NaN in about a third of calls; at 128 px P6 is 2x2 and the gradient is finite.
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
