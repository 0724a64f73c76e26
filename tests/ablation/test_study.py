"""Multi-seed studies (retinanet_fl.ablation.study) on a fake sweep, and the study file."""

import csv
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Dict, List

import pytest

from retinanet_fl.ablation import describe_sweeps, load_sweep, main, run_sweep
from retinanet_fl.ablation.regime import RegimeStats, write_regime
from retinanet_fl.ablation.runner import RunSpec, plan_runs
from retinanet_fl.ablation.study import (
    STUDIES_DIR,
    TRAINED_REGIME_FILE,
    Spread,
    load_study,
    plan_study,
    run_study,
    select,
)
from retinanet_fl.config import get_cfg

# AP of the fake runs: per point a base, per arm an offset, per seed some noise.
BASE_AP = {"0.01": 30.0, "0.02": 20.0}
FL_OFFSET = {"0.01": 4.0, "0.02": -2.0}
SEED_NOISE = {0: 0.0, 1: 1.0, 2: -2.0}


def _write_study(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text("MODEL:\n  RETINANET:\n    NUM_CLASSES: 3\nVERSION: 2\n")
    path = tmp_path / "fake.yaml"
    path.write_text(
        "STUDY: fake\nTITLE: 'FL - CE against the prior'\nBASE_CONFIG: base.yaml\n"
        "BASE_OPTS: [SOLVER.MAX_ITER, 2]\nSEEDS: [0, 1, 2]\nREFERENCE: ce\n"
        "ARMS:\n"
        "  - {NAME: ce, LABEL: CE, OPTS: [MODEL.RETINANET_FL.CLS_LOSS, ce]}\n"
        "  - {NAME: fl, LABEL: FL, OPTS: [MODEL.RETINANET_FL.CLS_LOSS, focal]}\n"
        "POINTS:\n"
        "  - {NAME: p1, LABEL: 'π .01', GROUP: prior, OPTS: [MODEL.RETINANET.PRIOR_PROB, 0.01]}\n"
        "  - {NAME: p2, LABEL: 'π .02', GROUP: prior, OPTS: [MODEL.RETINANET.PRIOR_PROB, 0.02],\n"
        "     ARM_OPTS: {fl: [SOLVER.BASE_LR, 0.5]}}\n"
    )
    return path


class FakeTrainNet:
    """Writes metrics.json with an AP given by (point, arm, seed); fails the (point, arm, seed)s
    asked to."""

    def __init__(self, fail=()):
        self.calls: List[tuple] = []
        self.fail = set(fail)

    def __call__(self, spec: RunSpec, resume: bool) -> int:
        opts = dict(zip(spec.opts[0::2], spec.opts[1::2]))
        prior, loss, seed = (
            opts["MODEL.RETINANET.PRIOR_PROB"],
            opts["MODEL.RETINANET_FL.CLS_LOSS"],
            int(opts["SEED"]),
        )
        self.calls.append((prior, loss, seed))
        if (prior, loss, seed) in self.fail:
            return 1
        ap = BASE_AP[prior] + (FL_OFFSET[prior] if loss == "focal" else 0.0) + SEED_NOISE[seed]
        with open(spec.run_dir / "metrics.json", "a") as f:
            f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": ap + 20, "bbox/AP75": ap - 5}) + "\n")
        # What measure_trained_regime caches: CE's easy negatives carry more of its loss.
        trained = dataclasses.replace(
            _regime(100.0),
            weights="model_final.pth",
            easy_negative_fraction=0.99,
            easy_negative_ce_share=(0.6 if loss == "ce" else 0.3) + 0.01 * seed,
            easy_negative_fl_share=0.01,
            negative_to_positive_ce=5.0,
        )
        write_regime(trained, spec.run_dir / TRAINED_REGIME_FILE)
        return 0


def _regime(ratio: float) -> RegimeStats:
    return RegimeStats(
        "fake_train",
        10,
        (160, 160),
        1.0,
        4842.0,
        4842.0 / (ratio + 1),
        0.0,
        4842.0 * ratio / (ratio + 1),
        ratio,
    )


def _read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_spread_is_mean_and_sample_sd():
    spread = Spread.of({0: 1.0, 1: 2.0, 2: 6.0})
    assert spread.mean == 3.0 and spread.sd == pytest.approx(statistics.stdev([1, 2, 6]))
    assert spread.format() == "3.0 ± 2.6 (n=3)"
    assert Spread.of({0: 5.0}).format() == "5.0 (n=1)" and Spread.of({}).format() == "–"


def test_fake_study_collects_means_sds_and_paired_differences(tmp_path):
    study = load_study(_write_study(tmp_path))
    out = tmp_path / "out"
    # Regimes are measured once per point and cached; here they are given.
    write_regime(_regime(400.0), out / "regime" / "p1.json")
    write_regime(_regime(40.0), out / "regime" / "p2.json")
    fake = FakeTrainNet(fail=[("0.02", "focal", 2)])
    results = run_study(
        study, out, "python -m retinanet_fl.ablation study fake", launcher=fake, measure=None
    )

    # Point by point, seed by seed, arm by arm: the first point completes first.
    assert fake.calls[:6] == [("0.01", arm, s) for s in (0, 1, 2) for arm in ("ce", "focal")]
    assert len(fake.calls) == 12
    assert [r.status for r in results].count("failed") == 1

    rows = {(r["point"], r["arm"]): r for r in _read_csv(out / "study_fake.csv")}
    p1_ce, p1_fl, p2_ce, p2_fl = (
        rows[k] for k in [("p1", "ce"), ("p1", "fl"), ("p2", "ce"), ("p2", "fl")]
    )
    noise = list(SEED_NOISE.values())
    assert float(p1_ce["AP_mean"]) == pytest.approx(30.0 + statistics.fmean(noise), abs=1e-4)
    assert float(p1_ce["AP_sd"]) == pytest.approx(statistics.stdev(noise), abs=1e-4)
    assert p1_ce["AP_n"] == "3" and p1_ce["AP_per_seed"] == "0:30.00 1:31.00 2:28.00"
    # Paired: the seed noise cancels, so FL − CE is exactly the offset with no spread.
    assert float(p1_fl["delta_AP_mean"]) == pytest.approx(4.0)
    assert float(p1_fl["delta_AP_sd"]) == pytest.approx(0.0)
    assert p1_fl["verdict"] == "ahead" and p1_ce["delta_AP_mean"] == ""
    # At p2 FL's seed 2 failed: 2 FL seeds, 2 pairs.
    assert p2_fl["AP_n"] == "2" and p2_fl["delta_AP_n"] == "2"
    assert float(p2_fl["AP_mean"]) == pytest.approx(18.0 + statistics.fmean(noise[:2]), abs=1e-4)
    assert float(p2_fl["delta_AP_mean"]) == pytest.approx(-2.0)
    assert p2_fl["verdict"] == "behind"
    assert float(p1_ce["negatives_per_positive"]) == 400.0
    assert float(p2_ce["negatives_per_positive"]) == 40.0

    # The trained models' regime, averaged over seeds, in percent.
    assert float(p1_ce["val_easy_negative_ce_share_mean"]) == pytest.approx(61.0)
    assert float(p1_ce["val_easy_negative_ce_share_sd"]) == pytest.approx(1.0)
    assert float(p2_fl["val_easy_negative_ce_share_mean"]) == pytest.approx(30.5)

    runs = _read_csv(out / "study_fake_runs.csv")
    assert len(runs) == 12 and {r["status"] for r in runs} == {"finished", "failed"}
    assert not Path(runs[0]["run_dir"]).is_absolute()
    markdown = (out / "study_fake.md").read_text()
    assert "python -m retinanet_fl.ablation study fake" in markdown
    assert "| π .01 | prior | 400 |" in markdown and "+4.0 ± 0.0 | +4.0 | ahead |" in markdown
    assert "seeds 0, 1, 2" in markdown and "1 failed, 11 finished" in markdown
    assert "| π .01 | CE | 99.0 ± 0.0 (n=3) | 61.0 ± 1.0 (n=3) |" in markdown
    assert (out / "study_fake.png").stat().st_size > 10000

    # Resumable: nothing finished runs again; the failed run only when asked.
    fake = FakeTrainNet()
    run_study(study, out, "cmd", launcher=fake, measure=None)
    assert fake.calls == []
    run_study(study, out, "cmd", launcher=fake, retry_failed=True, measure=None)
    assert fake.calls == [("0.02", "focal", 2)]
    rows = {(r["point"], r["arm"]): r for r in _read_csv(out / "study_fake.csv")}
    assert rows[("p2", "fl")]["AP_n"] == "3"


def test_study_command_line(tmp_path, capsys):
    _write_study(tmp_path)
    out = tmp_path / "out"
    for point, ratio in (("p1", 400.0), ("p2", 40.0)):
        write_regime(_regime(ratio), out / "regime" / f"{point}.json")
    common = ["--studies-dir", str(tmp_path), "--output-dir", str(out)]
    assert main(["study", "fake", "--dry-run", "--points", "p2", "--seeds", "7", *common]) == 0
    listing = capsys.readouterr().out
    assert "p2 ce seed 7 [pending]" in listing and "p1" not in listing
    assert "2 runs (2 distinct)" in listing
    fake = FakeTrainNet()
    with pytest.raises(KeyError):  # the fake knows seeds 0-2 only: the seed reached the run
        main(["study", "fake", "--seeds", "7", *common], launcher=fake)
    assert main(["study", "fake", "--collect-only", *common]) == 0
    assert (out / "study_fake.md").is_file()
    with pytest.raises(ValueError, match="Unknown study 'nope'.*fake"):
        main(["study", "nope", *common])
    with pytest.raises(ValueError, match="no point\\(s\\) \\['p9'\\]"):
        main(["study", "fake", "--points", "p9", *common])


def test_bad_study_files_give_clear_errors(tmp_path):
    path = _write_study(tmp_path)
    text = path.read_text()
    for old, new, message in [
        ("REFERENCE: ce", "REFERENCE: ohem", "REFERENCE 'ohem' is not an arm"),
        ("ARM_OPTS: {fl:", "ARM_OPTS: {xx:", "ARM_OPTS names 'xx'"),
        ("SEEDS: [0, 1, 2]", "SEEDS: []", "SEEDS must be a non-empty list"),
        ("GROUP: prior, OPTS", "GRUOP: prior, OPTS", "unknown key.*GRUOP"),
        (
            "  - {NAME: fl, LABEL: FL, OPTS: [MODEL.RETINANET_FL.CLS_LOSS, focal]}\n",
            "",
            "at least 2 ARMS",
        ),
    ]:
        path.write_text(text.replace(old, new))
        with pytest.raises(ValueError, match=message):
            load_study(path)
    path.write_text(text.replace("PRIOR_PROB, 0.02]", "PRIOR_PROOB, 0.02]"))
    with pytest.raises(ValueError, match="point p2, arm ce: the overrides"):
        plan_study(load_study(path), tmp_path / "out")


def test_imbalance_study_compares_fl_with_the_best_ce_at_every_point():
    study = load_study(STUDIES_DIR / "imbalance.yaml")
    assert study.seeds == (0, 1, 2) and study.reference == "ce"
    runs = plan_study(study, Path("/unused"))
    assert len(runs) == len(study.points) * 2 * 3

    def cfg_of(run):
        cfg = get_cfg()
        cfg.merge_from_file(str(run.spec.config_file))
        cfg.merge_from_list(list(run.spec.opts))
        return cfg

    first = [cfg_of(r) for r in runs[:6]]
    assert [
        (
            c.MODEL.RETINANET_FL.CLS_LOSS,
            c.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            c.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            c.SEED,
        )
        for c in first
    ] == [
        (loss, gamma, alpha, seed)
        for seed in (0, 1, 2)
        for loss, gamma, alpha in (("ce", 0.0, 0.75), ("focal", 2.0, 0.25))
    ]
    assert {c.DATASETS.TRAIN for c in first} == {("synthetic_obj1_train",)}
    assert {(c.SOLVER.OPTIMIZER, c.SOLVER.BASE_LR, c.SOLVER.MAX_ITER) for c in first} == {
        ("SGD", 0.04, 400)
    }
    # The ends of the objects-per-image axis first, FL's learning rate, then the others.
    assert [p.name for p in study.points[:4]] == ["obj1", "obj12", "obj1_fl_lr3x", "obj3"]
    # FL at 3x the LR shares its CE runs with obj1.
    by_point = {}
    for run in runs:
        by_point.setdefault(run.point.name, []).append(run)
    lr3x = by_point["obj1_fl_lr3x"]
    assert [r.spec.run_dir for r in lr3x if r.arm.name == "ce"] == [
        r.spec.run_dir for r in by_point["obj1"] if r.arm.name == "ce"
    ]
    assert {cfg_of(r).SOLVER.BASE_LR for r in lr3x if r.arm.name == "fl"} == {0.12}
    assert select(study, ["obj3"], [5]).points[0].name == "obj3"


def test_tables_with_seeds_show_mean_sd_and_paired_difference(tmp_path):
    (tmp_path / "base.yaml").write_text("MODEL:\n  RETINANET:\n    NUM_CLASSES: 3\nVERSION: 2\n")
    (tmp_path / "table_t.yaml").write_text(
        "TABLE: t\nTITLE: 'Table t: alpha'\nBASE_CONFIG: base.yaml\n"
        "OPTS: [MODEL.RETINANET_FL.CLS_LOSS, ce]\nCOLUMNS: ['α']\nROWS:\n"
        "  - {NAME: a1, COLUMNS: ['.25'], OPTS: [MODEL.RETINANET.FOCAL_LOSS_ALPHA, 0.25],"
        " PAPER: [10.8, 16.0, 11.7]}\n"
        "  - {NAME: a3, COLUMNS: ['.75'], OPTS: [MODEL.RETINANET.FOCAL_LOSS_ALPHA, 0.75],"
        " PAPER: [31.1, 49.4, 33.0]}\n"
    )
    calls = []

    def fake(spec: RunSpec, resume: bool) -> int:
        opts = dict(zip(spec.opts[0::2], spec.opts[1::2]))
        alpha, seed = float(opts["MODEL.RETINANET.FOCAL_LOSS_ALPHA"]), int(opts["SEED"])
        calls.append((alpha, seed))
        assert spec.seed == seed
        ap = 100 * alpha + SEED_NOISE[seed]
        with open(spec.run_dir / "metrics.json", "a") as f:
            f.write(json.dumps({"bbox/AP": ap, "bbox/AP50": ap, "bbox/AP75": ap}) + "\n")
        return 0

    sweep = load_sweep(tmp_path / "table_t.yaml")
    run_sweep(sweep, tmp_path / "out", launcher=fake, seeds=[0, 1, 2])
    # The whole table with seed 0, then with seed 1, ...
    assert calls == [(a, s) for s in (0, 1, 2) for a in (0.25, 0.75)]
    rows = _read_csv(tmp_path / "out" / "table_t.csv")
    noise = list(SEED_NOISE.values())
    assert [r["row"] for r in rows] == ["a1", "a3"]
    assert float(rows[1]["AP_mean"]) == pytest.approx(75 + statistics.fmean(noise), abs=1e-4)
    assert float(rows[1]["AP_sd"]) == pytest.approx(statistics.stdev(noise), abs=1e-4)
    assert rows[1]["AP_n"] == "3" and rows[1]["AP_per_seed"] == "0:75.00 1:76.00 2:73.00"
    # Paired by seed, the noise cancels.
    assert float(rows[1]["delta_AP_vs_first_mean"]) == pytest.approx(50.0)
    assert float(rows[1]["delta_AP_vs_first_sd"]) == pytest.approx(0.0, abs=1e-4)
    markdown = (tmp_path / "out" / "table_t.md").read_text()
    assert "Seeds: 0, 1, 2." in markdown
    assert (
        "| .75 | 74.7 ± 1.5 (n=3) | 74.7 | 74.7 | 75.0 / 76.0 / 73.0 | +50.0 ± 0.0 (n=3) | 31.1 |"
        in markdown
    )
    assert (tmp_path / "out" / "table_t.png").stat().st_size > 10000
    listing = describe_sweeps([sweep], tmp_path / "out", seeds=[0, 1])
    assert "a3 seed 1 [finished]" in listing and "4 rows, 4 distinct runs" in listing


def test_sparse_preset_is_the_synthetic_preset_on_the_studys_sparsest_data():
    from retinanet_fl.ablation import load_sweeps

    synthetic = {s.table: s for s in load_sweeps(["all"], preset="synthetic")}
    for sweep in load_sweeps(["all"], preset="synthetic_sparse"):
        assert [r.name for r in sweep.rows] == [r.name for r in synthetic[sweep.table].rows]
        for _, spec in plan_runs(sweep, Path("/out")):
            opts = dict(zip(spec.opts[0::2], spec.opts[1::2]))
            assert opts["DATASETS.TRAIN"] == "('synthetic_obj1_train',)"
            assert opts["DATASETS.TEST"] == "('synthetic_obj1_val',)"
    # In the same output folder, Table 1b's CE and FL rows are the study's obj1 runs.
    study = select(load_study(STUDIES_DIR / "imbalance.yaml"), ["obj1"])
    obj1_runs = {(r.arm.name, r.seed): r.spec.run_dir for r in plan_study(study, Path("/out"))}
    table_1b = load_sweeps(["1b"], preset="synthetic_sparse")[0]
    for row, spec in plan_runs(table_1b, Path("/out"), seeds=[0, 1, 2]):
        if row.name in ("gamma_0_alpha_0.75", "gamma_2_alpha_0.25"):
            arm = "ce" if row.name.startswith("gamma_0_") else "fl"
            assert spec.run_dir == obj1_runs[(arm, spec.seed)]
