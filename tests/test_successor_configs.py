"""
The COCO configs of the focal loss's successors (ATSS, QFL, VFL): what they change from the
paper's config, and that each variant trains from the command line, evaluates, exports to ONNX
and predicts (on the tiny synthetic dataset, with the variant's changes).
"""

import json
import os

import pytest

from retinanet_fl import predict
from retinanet_fl.config import get_cfg
from retinanet_fl.export.__main__ import main as export_main
from retinanet_fl.model_zoo import get_config_file

from .test_train_net import parse_box_ap, run_train_net

# Config file -> what it sets on top of retinanet_R50_FPN.yaml (besides OUTPUT_DIR).
VARIANTS = {
    "retinanet_R50_FPN_atss.yaml": {"MODEL.RETINANET_FL.ANCHOR_MATCHER": "atss"},
    "retinanet_R50_FPN_atss_qfl.yaml": {
        "MODEL.RETINANET_FL.ANCHOR_MATCHER": "atss",
        "MODEL.RETINANET_FL.CLS_LOSS": "quality_focal",
        "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "giou",
    },
    "retinanet_R50_FPN_atss_vfl.yaml": {
        "MODEL.RETINANET_FL.ANCHOR_MATCHER": "atss",
        "MODEL.RETINANET_FL.CLS_LOSS": "varifocal",
        "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": "giou",
    },
}


def flat_config(config_file: str, opts=()) -> dict:
    """The config of a file (and overrides) as {"MODEL.X.KEY": value}, OUTPUT_DIR left out."""
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(cfg, "")
    del flat["OUTPUT_DIR"]
    return flat


def changes_from_the_paper_config(name: str) -> dict:
    base = flat_config(get_config_file("retinanet_R50_FPN.yaml"))
    variant = flat_config(get_config_file(name))
    return {key: value for key, value in variant.items() if base[key] != value}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_configs_change_only_the_assignment_the_loss_and_the_box_loss(name):
    assert changes_from_the_paper_config(name) == VARIANTS[name]


# Export and prediction do not depend on the loss or the assignment: one variant runs them.
EXPORTED_VARIANT = "retinanet_R50_FPN_atss_vfl.yaml"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_evaluates_exports_and_predicts(name, datasets_root, tmp_path):
    # The synthetic config with the variant's changes, a few iterations.
    opts = [item for key, value in VARIANTS[name].items() for item in (key, str(value))]
    opts += ["MODEL.RETINANET_FL.LOSS_KERNEL", "eager", "SOLVER.MAX_ITER", "4"]
    opts += ["SOLVER.WARMUP_ITERS", "4", "SOLVER.CHECKPOINT_PERIOD", "4"]
    train_dir = tmp_path / "train"
    log = run_train_net(datasets_root, train_dir, opts=opts)
    assert len(parse_box_ap(log)) == 6  # evaluated after training
    config_file = str(train_dir / "config.yaml")
    trained = flat_config(config_file)
    assert all(trained[key] == value for key, value in VARIANTS[name].items())

    if name != EXPORTED_VARIANT:
        return
    weights = str(train_dir / "model_final.pth")
    argv = ["--config-file", config_file, "--format", "onnx", "--output", str(tmp_path / "onnx")]
    assert export_main([*argv, "MODEL.WEIGHTS", weights]) == 0
    val_images = sorted(os.listdir(os.path.join(datasets_root, "synthetic", "val")))
    image = os.path.join(datasets_root, "synthetic", "val", val_images[0])
    argv = ["--exported", str(tmp_path / "onnx" / "model.onnx"), "--input", image]
    assert predict.main([*argv, "--output", str(tmp_path / "predicted")]) == 0
    (record,) = json.loads((tmp_path / "predicted" / "predictions.json").read_text())
    assert record["file_name"].endswith(val_images[0]) and isinstance(record["detections"], list)
