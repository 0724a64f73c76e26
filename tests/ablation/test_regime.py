"""Tests of the imbalance regime (``python -m retinanet_fl.ablation stats``)."""

import json
import math
import re
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from retinanet_fl.ablation import main
from retinanet_fl.ablation.regime import loss_shares, read_regime, regime_stats
from retinanet_fl.ablation.runner import RunSpec
from retinanet_fl.ablation.study import TRAINED_REGIME_FILE, measure_trained_regime
from retinanet_fl.config import load_config
from retinanet_fl.data.synthetic import register_synthetic_coco
from retinanet_fl.engine import AtomicCheckpointer

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "configs" / "synthetic" / "retinanet_R18_FPN_synthetic.yaml"


def test_loss_shares_split_the_negatives_loss_by_hardness():
    # p = sigmoid(x): two easy negatives (p ~ .018, .047) and one hard (p ~ .88).
    negatives = torch.tensor([-4.0, -3.0, 2.0])
    positives = torch.tensor([1.0])
    ce = F.softplus(negatives.double())
    p = torch.sigmoid(negatives.double())
    shares = loss_shares(positives, negatives)
    assert shares["easy_negative_fraction"] == pytest.approx(2 / 3)
    assert shares["easy_negative_ce_share"] == pytest.approx(float(ce[:2].sum() / ce.sum()))
    fl = p**2 * ce
    assert shares["easy_negative_fl_share"] == pytest.approx(float(fl[:2].sum() / fl.sum()))
    # Focusing shrinks the easy negatives' share.
    assert shares["easy_negative_fl_share"] < shares["easy_negative_ce_share"] / 10
    assert shares["negative_to_positive_ce"] == pytest.approx(
        float(ce.sum() / F.softplus(torch.tensor(-1.0, dtype=torch.float64)))
    )
    assert math.isnan(loss_shares(torch.tensor([]), negatives)["negative_to_positive_ce"])


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Four 96 px images with two objects each, registered under a fresh name."""
    root = tmp_path_factory.mktemp("regime") / "ds"
    prefix = f"test_regime_{uuid.uuid4().hex[:8]}"
    names = register_synthetic_coco(
        str(root),
        prefix=prefix,
        num_train=4,
        num_val=1,
        image_size=96,
        seed=1,
        objects_per_image=(2, 2),
    )
    return names["train"]


def _cfg(dataset, *opts):
    return load_config(
        str(CONFIG),
        [
            "DATASETS.TRAIN",
            f"('{dataset}',)",
            "INPUT.MIN_SIZE_TEST",
            96,
            "INPUT.MAX_SIZE_TEST",
            96,
            "MODEL.DEVICE",
            "cpu",
            *opts,
        ],
    )


def test_regime_counts_anchors_by_label(tiny_dataset):
    stats = regime_stats(_cfg(tiny_dataset), num_images=4)
    assert stats.dataset == tiny_dataset and stats.num_images == 4
    assert stats.image_size == (96, 96)
    assert stats.objects_per_image == 2.0
    # P3-P7 of a 96 px image: 12², 6², 3², 2², 1² locations, 9 anchors each.
    assert stats.anchors_per_image == 9 * (144 + 36 + 9 + 4 + 1)
    assert stats.positive_per_image > 0 and stats.ignored_per_image >= 0
    assert stats.positive_per_image + stats.ignored_per_image + stats.negative_per_image == (
        pytest.approx(stats.anchors_per_image)
    )
    assert stats.negatives_per_positive == pytest.approx(
        stats.negative_per_image / stats.positive_per_image
    )
    assert stats.weights == "" and stats.easy_negative_ce_share is None
    # Larger anchors on the same images: fewer of them, a different balance.
    coarse = regime_stats(
        _cfg(tiny_dataset, "MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE", 1), num_images=4
    )
    assert coarse.anchors_per_image == stats.anchors_per_image / 3


def test_stats_command_with_a_checkpoint(tiny_dataset, tmp_path, capsys):
    cfg = _cfg(tiny_dataset)
    model = build_model(cfg)
    AtomicCheckpointer(model, save_dir=str(tmp_path)).save("model")
    weights = str(tmp_path / "model.pth")
    output = tmp_path / "regime.json"
    argv = ["stats", "--config-file", str(CONFIG), "--num-images", "2", "--output", str(output)]
    overrides = [
        "DATASETS.TRAIN",
        f"('{tiny_dataset}',)",
        "INPUT.MIN_SIZE_TEST",
        "96",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        weights,
    ]
    assert main(argv + overrides) == 0
    printed = capsys.readouterr().out
    assert "negatives per positive" in printed and "carry" in printed
    stats = read_regime(output)
    assert json.loads(output.read_text())["weights"] == weights
    # Untrained with the prior π = .01: every negative scores ~.01, so all are easy.
    assert stats.easy_negative_fraction == pytest.approx(1.0)
    assert stats.easy_negative_ce_share == pytest.approx(1.0)
    assert stats.negative_to_positive_ce > 1.0

    # A dataset-free count for a size, as for COCO.
    assert main(["stats", "--config-file", str(CONFIG), "--image-size", "96", "128"]) == 0
    # 9 anchors × (12·16 + 6·8 + 3·4 + 2·2 + 1) positions on P3–P7 of a 96 × 128 image
    assert re.search(r"anchors per image:\s+2,313\b", capsys.readouterr().out)
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        regime_stats(cfg, num_images=0)
    assert tiny_dataset in DatasetCatalog.list()


def test_a_finished_study_run_is_measured_once_and_cached(tiny_dataset, tmp_path):
    """What the study does after each finished run: measure its final model, cache the result."""
    opts = ("DATASETS.TEST", f"('{tiny_dataset}',)", "INPUT.MIN_SIZE_TEST", "96", "MODEL.DEVICE")
    spec = RunSpec(config_file=CONFIG, opts=(*opts, "cpu"), run_dir=tmp_path)
    assert measure_trained_regime(spec) is None  # no final model yet
    AtomicCheckpointer(build_model(_cfg(tiny_dataset)), save_dir=str(tmp_path)).save("model_final")
    stats = measure_trained_regime(spec)
    assert stats.weights == str(tmp_path / "model_final.pth") and stats.num_images == 4
    assert stats.easy_negative_ce_share == pytest.approx(1.0)  # untrained, prior π = .01
    assert read_regime(tmp_path / TRAINED_REGIME_FILE) == stats
