"""Tests of retinanet_fl.ablation: sweep definitions, resumable runs, tables, figures."""

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from retinanet_fl.ablation import figures, load_sweep, load_sweeps, main, plan_runs, run_sweep
from retinanet_fl.ablation.runner import RunSpec, read_status
from retinanet_fl.ablation.sweeps import TABLE_FILES, apply_preset, load_preset
from retinanet_fl.config import get_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]


def _effective_cfgs(sweep):
    """The resolved config of every row of a sweep, as train_net.py would build it."""
    cfgs = []
    for _, spec in plan_runs(sweep, Path("/unused")):
        cfg = get_cfg()
        cfg.merge_from_file(str(spec.config_file))
        cfg.merge_from_list(list(spec.opts))
        cfgs.append(cfg)
    return cfgs


# ---------------------------------------------------------------------------------------------
# The paper's sweeps
# ---------------------------------------------------------------------------------------------
def test_dry_run_lists_exactly_the_papers_variants(capsys):
    sweeps = {s.table: s for s in load_sweeps(["all"])}
    assert list(sweeps) == ["1a", "1b", "1c", "1d", "3", "prior"]

    def settings(table, read):
        return [read(cfg) for cfg in _effective_cfgs(sweeps[table])]

    rn = lambda cfg: cfg.MODEL.RETINANET  # noqa: E731
    fl = lambda cfg: cfg.MODEL.RETINANET_FL  # noqa: E731
    assert settings("1a", lambda c: (fl(c).CLS_LOSS, rn(c).FOCAL_LOSS_ALPHA)) == [
        ("ce", a) for a in (0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999)
    ]
    assert settings("1b", lambda c: (rn(c).FOCAL_LOSS_GAMMA, rn(c).FOCAL_LOSS_ALPHA)) == [
        (0.0, 0.75),
        (0.1, 0.75),
        (0.2, 0.75),
        (0.5, 0.5),
        (1.0, 0.25),
        (2.0, 0.25),
        (5.0, 0.25),
    ]
    assert settings(
        "1c", lambda c: (fl(c).ANCHOR_SCALES_PER_OCTAVE, c.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS)
    ) == [
        (1, [[1.0]]),
        (2, [[1.0]]),
        (3, [[1.0]]),
        (1, [[0.5, 1.0, 2.0]]),
        (2, [[0.5, 1.0, 2.0]]),
        (3, [[0.5, 1.0, 2.0]]),
        (4, [[0.5, 1.0, 2.0]]),
    ]
    ohem = lambda c: (  # noqa: E731
        fl(c).CLS_LOSS,
        fl(c).OHEM_BATCH_SIZE_PER_IMAGE,
        fl(c).OHEM_NMS_THRESH,
        fl(c).OHEM_NEG_POS_RATIO,
        c.MODEL.RESNETS.DEPTH,
    )
    assert settings("1d", ohem)[:9] == [
        ("ohem", b, t, r, 101)
        for r, t, b in [
            (0.0, 0.7, 128),
            (0.0, 0.7, 256),
            (0.0, 0.7, 512),
            (0.0, 0.5, 128),
            (0.0, 0.5, 256),
            (0.0, 0.5, 512),
            (3.0, 0.5, 128),
            (3.0, 0.5, 256),
            (3.0, 0.5, 512),
        ]
    ]
    assert settings(
        "1d", lambda c: (fl(c).CLS_LOSS, rn(c).FOCAL_LOSS_GAMMA, c.MODEL.RESNETS.DEPTH)
    )[9:] == [("focal", 2.0, 101)]
    assert settings("3", lambda c: (fl(c).CLS_LOSS, fl(c).FOCAL_STAR_GAMMA, fl(c).FOCAL_STAR_BETA))[
        2:
    ] == [("focal_star", 2.0, 1.0), ("focal_star", 4.0, 0.0)]
    assert settings("3", lambda c: fl(c).CLS_LOSS)[:2] == ["ce", "focal"]
    assert settings(
        "prior", lambda c: (fl(c).CLS_LOSS, fl(c).USE_PRIOR_INIT, rn(c).PRIOR_PROB)
    ) == [("ce", True, 0.01), ("ce", False, 0.01), ("focal", True, 0.01), ("focal", False, 0.01)]
    # The paper's numbers travel with the rows.
    assert sweeps["1b"].rows[5].paper == (34.0, 52.5, 36.5)
    assert sweeps["1d"].rows[3].paper == (32.8, 50.3, 35.1)
    assert sweeps["prior"].rows[1].paper_note == "diverged"

    assert main(["--table", "all", "--dry-run", "--output-dir", "/tmp/unused_ablation_dir"]) == 0
    listing = capsys.readouterr().out
    for sweep in sweeps.values():
        for row in sweep.rows:
            assert f"  {row.name} [" in listing
    # Rows that are the same model in several tables share one run.
    assert "39 rows, 33 distinct runs" in listing
    assert "scales_3_ratios_3 [pending, same run as 1b/gamma_2_alpha_0.25]" in listing


def test_synthetic_preset_reduces_every_table():
    full = {s.table: s for s in load_sweeps(["all"])}
    for sweep in load_sweeps(["all"], preset="synthetic"):
        assert sweep.preset == "synthetic"
        assert sweep.base_config.is_file(), sweep.base_config
        assert set(r.name for r in sweep.rows) <= set(r.name for r in full[sweep.table].rows)
        assert len(plan_runs(sweep, Path("/unused"))) == len(sweep.rows) >= 2
        # The preset replaces the scale (R-101 for Table 1d) but keeps each table's variants.
        assert "MODEL.RESNETS.DEPTH" not in sweep.base_opts[0::2]
        assert sweep.opts == full[sweep.table].opts


# ---------------------------------------------------------------------------------------------
# Runs, resuming, failures, tables
# ---------------------------------------------------------------------------------------------
def _write_sweep(tmp_path: Path, num_rows: int = 2) -> Path:
    (tmp_path / "base.yaml").write_text("MODEL:\n  RETINANET:\n    NUM_CLASSES: 3\nVERSION: 2\n")
    rows = "\n".join(
        f"  - {{NAME: alpha_{a}, LABEL: '{a}', COLUMNS: ['{a}'], "
        f"OPTS: [MODEL.RETINANET.FOCAL_LOSS_ALPHA, {a}], PAPER: [{30 + i}.0, {50 + i}.0, null]}}"
        for i, a in enumerate([0.25, 0.75, 0.5][:num_rows])
    )
    path = tmp_path / "table_t.yaml"
    path.write_text(
        "TABLE: t\nTITLE: 'Table t: alpha'\nBASE_CONFIG: base.yaml\n"
        "OPTS: [MODEL.RETINANET_FL.CLS_LOSS, ce]\nCOLUMNS: ['α']\nROWS:\n" + rows + "\n"
    )
    return path


class FakeTrainNet:
    """Stands in for train_net.py: writes metrics.json lines with AP = 100 × α, or fails."""

    def __init__(self, fail_alphas=(), interrupt_alphas=()):
        self.calls: List[Tuple[float, bool]] = []
        self.fail_alphas = set(fail_alphas)
        self.interrupt_alphas = set(interrupt_alphas)

    def __call__(self, spec: RunSpec, resume: bool) -> int:
        opts = dict(zip(spec.opts[0::2], spec.opts[1::2]))
        alpha = float(opts["MODEL.RETINANET.FOCAL_LOSS_ALPHA"])
        assert opts["MODEL.RETINANET_FL.CLS_LOSS"] == "ce" and opts["SOLVER.MAX_ITER"] == "2"
        self.calls.append((alpha, resume))
        with open(spec.run_dir / "metrics.json", "a") as f:
            f.write(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n")
        if alpha in self.interrupt_alphas:
            raise KeyboardInterrupt
        if alpha in self.fail_alphas:
            (spec.run_dir / "train_net.log").write_text(
                "Traceback (most recent call last):\n"
                "FloatingPointError: Loss became infinite or NaN at iteration=1!\n"
            )
            return 1
        with open(spec.run_dir / "metrics.json", "a") as f:
            f.write(
                json.dumps(
                    {"iteration": 1, "bbox/AP": 100 * alpha, "bbox/AP50": 1.0, "bbox/AP75": 2.0}
                )
                + "\n"
            )
        return 0


def _read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_run_sweep_writes_table_files_with_both_rows(tmp_path):
    sweep = load_sweep(_write_sweep(tmp_path))
    fake = FakeTrainNet()
    results = run_sweep(sweep, tmp_path / "out", ["SOLVER.MAX_ITER", 2], launcher=fake)

    assert [r.status for r in results] == ["finished", "finished"]
    assert fake.calls == [(0.25, False), (0.75, False)]
    rows = _read_csv(tmp_path / "out" / "table_t.csv")
    assert [(r["α"], r["status"], float(r["AP"]), float(r["paper_AP"])) for r in rows] == [
        ("0.25", "finished", 25.0, 30.0),
        ("0.75", "finished", 75.0, 31.0),
    ]
    assert float(rows[1]["delta_AP"]) == pytest.approx(44.0)
    assert rows[0]["paper_AP75"] == "" and rows[0]["delta_AP75"] == ""
    assert [(tmp_path / "out" / r["run_dir"]).resolve() for r in rows] == [
        r.run_dir.resolve() for r in results
    ]
    assert not Path(rows[0]["run_dir"]).is_absolute()  # committed tables carry no machine's paths
    markdown = (tmp_path / "out" / "table_t.md").read_text()
    assert (
        "| α | AP | AP50 | AP75 | paper AP | paper AP50 | paper AP75 | ΔAP | ΔAP50 | ΔAP75 |"
        in markdown
    )
    assert "| 0.25 | 25.0 | 1.0 | 2.0 | 30.0 | 50.0 | – | -5.0 | -49.0 | – |" in markdown
    assert "| 0.75 | **75.0** |" in markdown  # our best AP in bold
    assert (tmp_path / "out" / "table_t.png").stat().st_size > 1000
    # A run is an ordinary train_net.py command.
    command = read_status(results[0].run_dir)["command"]
    assert command[1:3] == ["-m", "retinanet_fl.train_net"] and "OUTPUT_DIR" in command


def test_interrupted_sweep_resumes_without_rerunning_finished_runs(tmp_path):
    sweep = load_sweep(_write_sweep(tmp_path, num_rows=3))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            sweep,
            tmp_path / "out",
            ["SOLVER.MAX_ITER", 2],
            launcher=FakeTrainNet(interrupt_alphas=[0.75]),
        )
    statuses = [r["status"] for r in _read_csv(tmp_path / "out" / "table_t.csv")]
    assert statuses == ["finished", "interrupted", "pending"]

    fake = FakeTrainNet()
    results = run_sweep(sweep, tmp_path / "out", ["SOLVER.MAX_ITER", 2], launcher=fake)
    # The finished run is not repeated; the interrupted one resumes from its checkpoint.
    assert fake.calls == [(0.75, True), (0.5, False)]
    assert [r.status for r in results] == ["finished"] * 3
    assert [r.metrics["AP"] for r in results] == [25.0, 75.0, 50.0]

    fake = FakeTrainNet()
    run_sweep(sweep, tmp_path / "out", ["SOLVER.MAX_ITER", 2], launcher=fake)
    assert fake.calls == []

    # Other overrides are another configuration: new runs, not the stale results; restating a
    # value the config already has is the same configuration.
    def first_run_dir(extra_opts):
        return plan_runs(sweep, tmp_path / "out", extra_opts)[0][1].run_dir

    assert first_run_dir(["SOLVER.MAX_ITER", 3]) != results[0].run_dir
    assert (
        first_run_dir(["SOLVER.MAX_ITER", 2, "MODEL.RETINANET.NUM_CLASSES", 3])
        == results[0].run_dir
    )


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = load_sweep(_write_sweep(tmp_path))
    fake = FakeTrainNet(fail_alphas=[0.25])
    results = run_sweep(sweep, tmp_path / "out", ["SOLVER.MAX_ITER", 2], launcher=fake)

    assert fake.calls == [(0.25, False), (0.75, False)]
    assert [r.status for r in results] == ["failed", "finished"]
    assert results[0].error == "FloatingPointError: Loss became infinite or NaN at iteration=1!"
    rows = _read_csv(tmp_path / "out" / "table_t.csv")
    assert (
        rows[0]["status"] == "failed"
        and rows[0]["AP"] == ""
        and "FloatingPointError" in rows[0]["error"]
    )
    markdown = (tmp_path / "out" / "table_t.md").read_text()
    assert "| 0.25 | failed | – | – | 30.0 |" in markdown
    assert "FloatingPointError: Loss became infinite" in markdown

    # A failed run is an outcome: not repeated unless asked.
    fake = FakeTrainNet()
    run_sweep(sweep, tmp_path / "out", ["SOLVER.MAX_ITER", 2], launcher=fake)
    assert fake.calls == []
    results = run_sweep(
        sweep, tmp_path / "out", ["SOLVER.MAX_ITER", 2], launcher=fake, retry_failed=True
    )
    assert fake.calls == [(0.25, False)] and [r.status for r in results] == ["finished", "finished"]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_sweep_files_and_options_give_clear_errors(tmp_path):
    path = _write_sweep(tmp_path)
    path.write_text(path.read_text().replace("COLUMNS: ['α']", "COLUMNS: ['α']\nCOLUMN: x"))
    with pytest.raises(ValueError, match="unknown key.*COLUMN"):
        load_sweep(path)
    path = _write_sweep(tmp_path)
    path.write_text(
        path.read_text().replace(
            "OPTS: [MODEL.RETINANET_FL.CLS_LOSS, ce]", "OPTS: [MODEL.RETINANET_FL.CLS_LOSS]"
        )
    )
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        load_sweep(path)
    sweep = load_sweep(_write_sweep(tmp_path))
    with pytest.raises(ValueError, match="row alpha_0.25.*MODEL.RETINANET.NO_SUCH_KEY"):
        plan_runs(sweep, tmp_path, ["MODEL.RETINANET.NO_SUCH_KEY", 1])
    with pytest.raises(ValueError, match="keeps rows \\['nope'\\]"):
        preset = load_preset("synthetic")
        apply_preset(
            sweep, preset.__class__(**{**preset.__dict__, "tables": {"t": {"rows": ("nope",)}}})
        )
    with pytest.raises(ValueError, match="Unknown preset 'nope'.*synthetic"):
        load_preset("nope")
    with pytest.raises(ValueError, match="Unknown table"):
        load_sweeps(["9z"])
    assert set(TABLE_FILES) == {"1a", "1b", "1c", "1d", "3", "prior", "beyond"}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def test_figure1_plots_the_focal_loss(tmp_path):
    p_t = torch.tensor([0.1, 0.5, 0.9])
    for gamma in figures.FIGURE1_GAMMAS:
        expected = [-((1 - p) ** gamma) * math.log(p) for p in p_t.tolist()]
        assert figures.focal_loss_of_pt(p_t, gamma).tolist() == pytest.approx(expected, rel=1e-4)
    assert main(["figure1", "--output", str(tmp_path / "f1.png")]) == 0
    assert (tmp_path / "f1.png").stat().st_size > 10000


def test_figure4_sample_split_and_cdf():
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    labels = torch.tensor(
        [1, 2, -1, 0]
    )  # foreground class 1, background, ignored, foreground class 0
    positives, negatives = figures.split_samples(logits, labels, num_classes=2)
    assert sorted(positives.tolist()) == [2.0, 7.0]
    assert sorted(negatives.tolist()) == [1.0, 3.0, 4.0, 8.0]

    fractions, cdf = figures.normalized_loss_cdf(torch.tensor([3.0, 1.0, 0.0, 0.0]), num_points=5)
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cdf.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.25, 1.0])
    assert figures.hardest_share(torch.tensor([3.0, 1.0, 0.0, 0.0]), 0.25) == pytest.approx(0.75)


def test_figure4_on_a_model(tmp_path):
    from retinanet_fl.config import load_config

    config = REPO_ROOT / "configs" / "synthetic" / "retinanet_R18_FPN_synthetic.yaml"
    cfg = load_config(str(config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    summary = figures.figure4(cfg, tmp_path / "f4.png", num_images=2)
    assert (tmp_path / "f4.png").stat().st_size > 10000
    assert json.loads((tmp_path / "f4.json").read_text()) == summary
    negatives = summary["negative"]
    assert negatives["gamma=0"]["samples"] > 1000 and summary["positive"]["gamma=0"]["samples"] > 0
    # Focusing concentrates the negatives' loss on the hardest ones (same samples, same order).
    shares = [negatives[f"gamma={g:g}"]["hardest_0.01_share"] for g in figures.FIGURE4_GAMMAS]
    assert shares == sorted(shares) and shares[-1] > shares[0]
