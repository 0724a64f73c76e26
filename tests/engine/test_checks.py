"""Config mistakes caught when the model and the data are built: each error or warning names the
key, the value and what is allowed."""

import json
import logging
import os
import uuid

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

import retinanet_fl  # noqa: F401  registers the model and the datasets
from retinanet_fl import train_net
from retinanet_fl.config import load_config
from retinanet_fl.engine import checks
from retinanet_fl.engine.trainer import Trainer
from retinanet_fl.model_zoo import get_config_file
from tests.conftest import CLASSES, IMAGE_SIZE


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "MODEL.RETINANET_FL.CLS_LOSS",
            "dice",
            "CLS_LOSS = 'dice' is not a registered classification loss",
        ),
        (
            "MODEL.RETINANET.NORM",
            "BatchNorm",
            r"NORM must be one of \('', 'BN', 'SyncBN', 'FrozenBN', 'GN', 'LN'\) .*got 'BatchNorm'",
        ),
        (
            "MODEL.RETINANET.BBOX_REG_WEIGHTS",
            (1.0, 1.0, 0.0, 1.0),
            r"BBOX_REG_WEIGHTS must be 4 finite numbers > 0 .*got \[1.0, 1.0, 0.0, 1.0\]",
        ),
        (
            "MODEL.RETINANET.BBOX_REG_WEIGHTS",
            (10.0, 10.0, 5.0),
            r"BBOX_REG_WEIGHTS must be 4 finite numbers > 0 .*got \[10.0, 10.0, 5.0\]",
        ),
        (
            "MODEL.RETINANET.IOU_THRESHOLDS",
            [0.5, 0.4],
            r"IOU_THRESHOLDS must be non-decreasing values in \(0, 1\] .*got \[0.5, 0.4\]",
        ),
        (
            "MODEL.RETINANET.IOU_THRESHOLDS",
            [0.0, 0.5],
            r"IOU_THRESHOLDS must be non-decreasing values in \(0, 1\] .*got \[0.0, 0.5\]",
        ),
        (
            "MODEL.RETINANET.SCORE_THRESH_TEST",
            float("nan"),
            r"SCORE_THRESH_TEST must be in \[0, 1\), got nan",
        ),
        (
            "MODEL.RETINANET_FL.ANCHOR_SCALE",
            -4.0,
            "ANCHOR_SCALE must be a positive number .*got -4.0",
        ),
        (
            "MODEL.RETINANET_FL.LOSS_KERNEL",
            "triton",
            r"LOSS_KERNEL must be one of \('compiled', 'eager'\), got 'triton'",
        ),
    ],
)
def test_bad_key_values_are_named_with_the_allowed_range(key, value, message, small_cfg):
    cfg = small_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises((ValueError, KeyError), match=message):
        Trainer.build_model(cfg)


def test_group_norm_needs_channels_divisible_by_its_groups(small_cfg):
    cfg = small_cfg("MODEL.RETINANET.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", "48")
    with pytest.raises(
        ValueError, match=r"'GN' uses 32 groups.*OUT_CHANNELS\) must be a multiple of 32, got 48"
    ):
        build_model(cfg)
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    assert isinstance(build_model(cfg).head.cls_subnet[1], torch.nn.GroupNorm)


def test_num_classes_not_matching_the_dataset_names_both_numbers(
    tiny_images, check_warnings, small_cfg, register_tiny
):
    name = register_tiny(tiny_images[1])
    cfg = small_cfg("DATASETS.TEST", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "80")
    with pytest.raises(ValueError) as error:
        Trainer.build_model(cfg)
    message = str(error.value)
    assert (
        "MODEL.RETINANET.NUM_CLASSES = 80 does not match the 3 categories (thing_classes) of "
        f"dataset '{name}'"
    ) in message
    assert "Set MODEL.RETINANET.NUM_CLASSES 3" in message
    assert "ROI_HEADS" not in message

    # The number put under MODEL.ROI_HEADS, where a two-stage detector reads it.
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    with pytest.raises(
        ValueError, match="ROI_HEADS.NUM_CLASSES is 3, but a RetinaNet reads MODEL.RETINANET.NUM"
    ):
        Trainer.build_model(cfg)

    # COCO's 80 categories match; a dataset that is not registered (set in Python, past
    # load_config's check of the names) is skipped (and not registered).
    cfg = small_cfg("MODEL.RETINANET.NUM_CLASSES", "80")
    cfg.DATASETS.TRAIN = ("not_registered_anywhere", "coco_2017_train")
    assert isinstance(Trainer.build_model(cfg), torch.nn.Module)
    assert "not_registered_anywhere" not in MetadataCatalog
    assert check_warnings() == []


def test_num_classes_of_a_coco_json_is_checked_once_loaded(tiny_images, tmp_path, train_cfg):
    """register_coco_instances sets thing_classes when the json is read: the train loader checks
    then."""
    root, records = tiny_images
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    images = [
        {"id": r["image_id"], "file_name": os.path.basename(r["file_name"]), **size}
        for r in records
    ]
    boxes = [(r["image_id"], a) for r in records for a in r["annotations"]]
    annotations = [
        {
            "id": i,
            "image_id": image_id,
            "category_id": a["category_id"] + 1,
            "bbox": a["bbox"],
            "area": 1.0,
        }
        for i, (image_id, a) in enumerate(boxes, start=1)
    ]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    json_file = tmp_path / "tiny.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    name = f"test_robustness_json_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root))
    cfg = train_cfg(name, tmp_path / "out", "MODEL.RETINANET.NUM_CLASSES", "5")
    Trainer.build_model(cfg)  # nothing known about the categories yet
    with pytest.raises(
        ValueError, match=f"NUM_CLASSES = 5 does not match the 3 categories .* dataset '{name}'"
    ):
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
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml"),
            "--eval-only",
            "MODEL.WEIGHTS",
            str(tmp_path / "no_such_model.pth"),
            "MODEL.RETINANET.NUM_CLASSES",
            "80",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    # The weights file does not exist: the config check comes first.
    with pytest.raises(
        ValueError, match="NUM_CLASSES = 80 does not match the 6 categories .* 'synthetic_train'"
    ):
        train_net_module.main(args)


@pytest.mark.parametrize(
    "key, value", [("SCORE_THRESH_TEST", 0.3), ("NMS_THRESH_TEST", 0.6), ("NUM_CLASSES", 3)]
)
def test_settings_under_roi_heads_warn_that_retinanet_reads_its_own(
    key, value, check_warnings, small_cfg
):
    cfg = small_cfg(f"MODEL.ROI_HEADS.{key}", str(value), "MODEL.RETINANET.NUM_CLASSES", "80")
    checks.check_model_config(cfg)
    (message,) = check_warnings()
    assert message == (
        f"MODEL.ROI_HEADS.{key} is set to {value!r}, but FocalLossRetinaNet reads "
        f"MODEL.RETINANET.{key} (now {cfg.MODEL.RETINANET[key]!r}): "
        f"set MODEL.RETINANET.{key} {value!r} instead."
    )
    # Set in both places: the user knows which one the model reads.
    cfg.MODEL.RETINANET[key] = value
    checks.check_model_config(cfg)
    assert len(check_warnings()) == 1


@pytest.mark.parametrize(
    "opts, unused",
    [
        (
            ["MODEL.RETINANET_FL.OHEM_NMS_THRESH", "0.5"],
            "MODEL.RETINANET_FL.OHEM_NMS_THRESH set but not used: "
            "only MODEL.RETINANET_FL.CLS_LOSS 'ohem' reads them, and it is 'focal'",
        ),
        (
            ["MODEL.RETINANET_FL.FOCAL_STAR_GAMMA", "4.0", "MODEL.RETINANET_FL.CLS_LOSS", "ce"],
            "MODEL.RETINANET_FL.FOCAL_STAR_GAMMA set but not used: "
            "only MODEL.RETINANET_FL.CLS_LOSS 'focal_star' reads them, and it is 'ce'",
        ),
        (
            [
                "MODEL.ANCHOR_GENERATOR.NAME",
                "DefaultAnchorGenerator",
                "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE",
                "2",
            ],
            "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE set but not used: "
            "only MODEL.ANCHOR_GENERATOR.NAME 'OctaveAnchorGenerator' reads them",
        ),
        (
            ["MODEL.META_ARCHITECTURE", "RetinaNet"],
            "MODEL.META_ARCHITECTURE is 'RetinaNet', which reads none of MODEL.RETINANET_FL",
        ),
    ],
)
def test_our_keys_that_the_model_does_not_read_warn(opts, unused, check_warnings, small_cfg):
    checks.check_model_config(small_cfg(*opts))
    messages = check_warnings()
    assert len(messages) == 1 and unused in messages[0], messages


def test_octave_anchor_keys_are_read_under_detectron2_retinanet(check_warnings, small_cfg):
    # Detectron2's RetinaNet builds OctaveAnchorGenerator through the registry: it reads
    # ANCHOR_SCALE, while the rest of MODEL.RETINANET_FL is unread.
    cfg = small_cfg(
        "MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET_FL.ANCHOR_SCALE", "3.0"
    )
    checks.check_model_config(cfg)
    (message,) = check_warnings()
    assert "LOSS_NORMALIZER" in message and "ANCHOR_SCALE" not in message


def test_anchor_sizes_that_octave_anchors_ignore_warn(check_warnings, small_cfg):
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
        "retinanet_R50_FPN_atss.yaml",
        "retinanet_R50_FPN_atss_qfl.yaml",
        "retinanet_R50_FPN_atss_vfl.yaml",
        "retinanet_R101_FPN.yaml",
        "synthetic/retinanet_R18_FPN_synthetic.yaml",
    ],
)
def test_shipped_configs_pass_the_checks_without_warnings(config_file, check_warnings):
    cfg = load_config(get_config_file(config_file))
    checks.check_model_config(cfg)
    assert check_warnings() == []
