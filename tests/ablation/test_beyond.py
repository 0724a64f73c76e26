"""Tests of the ``beyond`` ablation table (softmax FL, per-class α on the long-tailed set) and of
the per-class AP columns its tables show."""

import csv
import json
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog

from retinanet_fl.ablation import load_sweep, load_sweeps, main, plan_runs, run_sweep
from retinanet_fl.ablation.runner import RunSpec, read_eval_results
from retinanet_fl.data.synthetic import SYNTHETIC_CLASSES, long_tail_class_probs
from retinanet_fl.modeling.class_alpha import parse_alpha_per_class
from retinanet_fl.modeling.cls_losses import build_cls_loss
from tests.ablation.test_tables import _effective_cfgs

ROWS = [
    "sigmoid_fl",
    "softmax_fl",
    "sigmoid_fl_alpha_inverse_frequency",
    "sigmoid_fl_alpha_effective_number",
    "ce_alpha_0.75",
    "ce_alpha_inverse_frequency",
]


def test_beyond_table_runs_the_six_variants_on_the_long_tailed_set():
    (sweep,) = load_sweeps(["beyond"], preset="synthetic")
    assert [r.name for r in sweep.rows] == ROWS
    cfgs = _effective_cfgs(sweep)
    for row, cfg in zip(sweep.rows, cfgs):
        assert cfg.DATASETS.TRAIN == ("synthetic_longtail50_train",), row.name
        assert cfg.DATASETS.TEST == ("synthetic_longtail50_val",), row.name
        assert all(
            name in DatasetCatalog.list() for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
        )
        # The synthetic preset's schedule: R-18-FPN from scratch, 160 px, 400 x 8, SGD at 0.04.
        assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.WEIGHTS, cfg.INPUT.MIN_SIZE_TEST) == (
            18,
            "",
            160,
        )
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (400, 8)
        assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR) == ("SGD", 0.04)
        build_cls_loss(cfg)  # the loss and its α settings are valid
    losses = [c.MODEL.RETINANET_FL.CLS_LOSS for c in cfgs]
    assert losses == ["focal", "softmax_focal", "focal", "focal", "ce", "ce"]
    rules = [
        parse_alpha_per_class(c.MODEL.RETINANET_FL.ALPHA_PER_CLASS, c.MODEL.RETINANET.NUM_CLASSES)
        for c in cfgs
    ]
    assert rules == [None, None, "inverse_frequency", "effective_number", None, "inverse_frequency"]
    assert [c.MODEL.RETINANET.FOCAL_LOSS_GAMMA for c in cfgs] == [2.0] * 4 + [0.0] * 2
    assert [c.MODEL.RETINANET.FOCAL_LOSS_ALPHA for c in cfgs] == [0.25] * 4 + [0.75] * 2


def test_beyond_table_is_the_same_runs_with_or_without_the_preset():
    (plain,) = load_sweeps(["beyond"])
    (preset,) = load_sweeps(["beyond"], preset="synthetic")
    dirs = [[spec.run_dir for _, spec in plan_runs(s, Path("/out"))] for s in (plain, preset)]
    assert dirs[0] == dirs[1] and len(set(dirs[0])) == len(ROWS)


def test_extra_columns_are_the_most_and_least_frequent_classes():
    (sweep,) = load_sweeps(["beyond"])
    keys = [key for _, key in sweep.extra_metrics]
    probs = long_tail_class_probs(50.0)
    assert keys == [
        f"AP-{SYNTHETIC_CLASSES[probs.argmax()]}",
        f"AP-{SYNTHETIC_CLASSES[probs.argmin()]}",
    ]


def test_all_tables_leave_out_beyond_and_its_dry_run_lists_seed_after_seed(capsys):
    assert "beyond" not in [s.table for s in load_sweeps(["all"])]
    argv = ["--table", "beyond", "--preset", "synthetic", "--seeds", "0", "1", "--dry-run"]
    assert main([*argv, "--output-dir", "/tmp/unused_beyond_dir"]) == 0
    listing = capsys.readouterr().out
    assert "12 rows, 12 distinct runs" in listing
    # A complete seed first, so that a stopped sweep leaves whole seeds behind.
    order = [line.split(" [")[0].strip() for line in listing.splitlines() if " seed " in line]
    assert order == [f"{row} seed {seed}" for seed in (0, 1) for row in ROWS]


def _write_sweep(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "base.yaml").write_text("MODEL:\n  RETINANET:\n    NUM_CLASSES: 2\nVERSION: 2\n")
    rows = "\n".join(
        f"  - {{NAME: alpha_{a}, COLUMNS: ['{a}'], OPTS: [MODEL.RETINANET.FOCAL_LOSS_ALPHA, {a}], "
        "PAPER: [null, null, null]}"
        for a in (0.25, 0.75)
    )
    path = tmp_path / "table_t.yaml"
    path.write_text(
        "TABLE: t\nTITLE: 'Table t'\nBASE_CONFIG: base.yaml\nCOLUMNS: ['α']\n"
        + extra
        + "ROWS:\n"
        + rows
        + "\n"
    )
    return path


def _fake_train_net(spec: RunSpec, resume: bool) -> int:
    """AP = 100 α + seed; the class 'rare' has AP 10 α + seed, NaN (no detections) for seed 2."""
    opts = dict(zip(spec.opts[0::2], spec.opts[1::2]))
    alpha, seed = float(opts["MODEL.RETINANET.FOCAL_LOSS_ALPHA"]), int(opts["SEED"])
    record = {"bbox/AP": 100 * alpha + seed, "bbox/AP50": 1.0, "bbox/AP75": 2.0}
    record["bbox/AP-common"] = 50.0
    record["bbox/AP-rare"] = float("nan") if seed == 2 else 10 * alpha + seed
    (spec.run_dir / "metrics.json").write_text(json.dumps(record) + "\n")
    return 0


def test_per_class_ap_columns_show_mean_sd_and_paired_difference(tmp_path):
    extra = "EXTRA_METRICS: {'AP common': AP-common, 'AP rare': AP-rare}\n"
    sweep = load_sweep(_write_sweep(tmp_path, extra))
    out = tmp_path / "out"
    results = run_sweep(sweep, out, launcher=_fake_train_net, seeds=[0, 1, 2])
    assert read_eval_results(results[0].run_dir)["AP-common"] == 50.0
    with open(out / "table_t.csv") as f:
        rows = list(csv.DictReader(f))
    # α = .75: rare AP 7.5, 8.5 and 0 (NaN counts as 0, like AP): mean 5.33.
    assert float(rows[1]["AP-rare_mean"]) == pytest.approx((7.5 + 8.5 + 0.0) / 3, abs=1e-3)
    assert float(rows[0]["AP-rare_sd"]) > 0 and rows[0]["AP-rare_n"] == "3"
    assert float(rows[1]["delta_AP-rare_vs_first_mean"]) == pytest.approx((5 + 5 + 0) / 3, abs=1e-3)
    assert float(rows[1]["AP-common_mean"]) == 50.0 and float(rows[1]["AP-common_sd"]) == 0.0
    markdown = (out / "table_t.md").read_text()
    assert "| α | AP (mean ± sd) | AP50 | AP75 | AP common | AP rare | AP per seed" in markdown
    assert "paper AP" not in markdown  # no paper numbers: no paper column
    # The first row's extra cells without a difference; the others with theirs, seed by seed.
    assert "| 0.25 | 26.0 ± 1.0 (n=3) | 1.0 | 2.0 | 50.0 ± 0.0 (n=3) | 2.0 ± 1.8 (n=3) |" in (
        markdown
    )
    assert (
        "| 0.75 | 76.0 ± 1.0 (n=3) | 1.0 | 2.0 | 50.0 ± 0.0 (n=3); Δ +0.0 ± 0.0 (n=3) "
        "| 5.3 ± 4.6 (n=3); Δ +3.3 ± 2.9 (n=3) |"
    ) in markdown
    assert (out / "table_t.png").stat().st_size > 1000


def test_a_run_without_per_class_ap_leaves_the_column_empty(tmp_path):
    sweep = load_sweep(_write_sweep(tmp_path, "EXTRA_METRICS: {'AP rare': AP-rare}\n"))

    def launcher(spec: RunSpec, resume: bool) -> int:
        (spec.run_dir / "metrics.json").write_text(json.dumps({"bbox/AP": 30.0}) + "\n")
        return 0

    run_sweep(sweep, tmp_path / "out", launcher=launcher, seeds=[0])
    with open(tmp_path / "out" / "table_t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["AP_mean"], r["AP-rare_mean"], r["AP-rare_n"]) for r in rows] == [
        ("30.0", "", "0")
    ] * 2


@pytest.mark.parametrize(
    "extra, message",
    [
        ("EXTRA_METRICS: [AP-rare]\n", "must map column headers"),
        ("EXTRA_METRICS: {'AP rare': ''}\n", "must map column headers"),
        ("EXTRA_METRICS: {'again': AP50}\n", "repeats the standard metrics"),
    ],
)
def test_bad_extra_metrics_are_refused(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(_write_sweep(tmp_path, extra))
