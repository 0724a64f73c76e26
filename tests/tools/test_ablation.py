"""tools/ablation.py: the grid and its digests, the resumable runner, the collector, the report."""

import json
import math
import os
import statistics

import ablation
import ablation_report
import pytest
import synthetic_pretrain

from retinanet_fl.model_zoo import get_config_file

# Committed in results/study_imbalance/study_imbalance_runs.csv: obj1, CE and FL, seed 0.
OBJ1_CE_SEED0, OBJ1_FL_SEED0 = "cc70524305a4", "7c4e5725be19"
# ... and obj1_pretrained's, whose MODEL.WEIGHTS is synthetic-pretrained://R-18.
PRETRAINED_CE_SEED0, PRETRAINED_FL_SEED0 = "994c8659a1d2", "1b115df470f6"


def test_study_grid_expands_rows_arms_seeds_with_committed_digests(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    study = ablation.load_experiment("imbalance", rows=["obj1", "obj1_fl_lr3x"], seeds=[0, 1])
    runs = ablation.plan(study, tmp_path)
    assert [(r.row.name, r.seed, r.arm.name) for r in runs[:4]] == [
        ("obj1", 0, "ce"),
        ("obj1", 0, "fl"),
        ("obj1", 1, "ce"),
        ("obj1", 1, "fl"),
    ]
    assert len(runs) == 8
    # FL at 3x the LR is a new run; its CE runs are obj1's.
    assert len({r.run_dir for r in runs}) == 6
    assert runs[0].run_dir.name == OBJ1_CE_SEED0 and runs[1].run_dir.name == OBJ1_FL_SEED0
    assert runs[4].run_dir == runs[0].run_dir and runs[5].run_dir != runs[1].run_dir
    # The runs name their data by path, where $DETECTRON2_DATASETS points.
    train = runs[0].opts[runs[0].opts.index("DATASETS.TRAIN") + 1]
    assert train.startswith(f"('coco:{tmp_path}/data/synthetic_obj1/annotations/instances_train")
    assert runs[5].opts[-4:] == ("SOLVER.BASE_LR", "0.12", "SEED", "0")

    # A table is seed after seed, and shares its runs with the study where the config is the same.
    table = ablation.load_experiment("1b", preset="synthetic_sparse", seeds=[0])
    table_runs = ablation.plan(table, tmp_path)
    assert [r.row.name for r in table_runs] == [r.name for r in table.rows]
    assert table_runs[0].run_dir.name == OBJ1_CE_SEED0  # gamma_0_alpha_0.75 is obj1's CE
    assert table_runs[3].run_dir.name == OBJ1_FL_SEED0  # gamma_2_alpha_0.25 is obj1's FL


def test_pretrained_url_is_hashed_and_train_net_gets_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    monkeypatch.setenv(synthetic_pretrain.CACHE_ENV, str(tmp_path / "cache"))
    study = ablation.load_experiment("imbalance", rows=["obj1_pretrained"], seeds=[0])
    ce, fl = ablation.plan(study, tmp_path)
    assert (ce.run_dir.name, fl.run_dir.name) == (PRETRAINED_CE_SEED0, PRETRAINED_FL_SEED0)

    # A recipe small enough to build here: built before the launch, its file given to train_net.
    tiny = "synthetic-pretrained://R-18/iters=2/num_images=16/num_val_images=8/image_size=32"
    run = ablation.plan(study, tmp_path, ["MODEL.WEIGHTS", tiny])[0]
    assert run.run_dir.name == ablation.config_digest(run.config_file, run.opts)
    launched = []

    def launcher(launched_run, resume):
        command = launched_run.command(resume)
        launched.append((launched_run.run_dir, command[-2:], os.path.isfile(command[-1])))
        return 1

    ablation.execute_run(run, launcher)
    (cached,) = (tmp_path / "cache").glob("synthetic_R-18_*.pth")
    # The run's folder is the URL's; the last override (train_net's MODEL.WEIGHTS) is the file.
    assert launched == [(run.run_dir, ["MODEL.WEIGHTS", str(cached.resolve())], True)]
    assert ablation.read_status(run.run_dir)["command"][-1] == str(cached.resolve())


def test_digest_ignores_restated_values_and_changes_with_a_value():
    config = get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml")
    digest = ablation.config_digest(config, ["SOLVER.BASE_LR", "0.04"])
    assert digest == ablation.config_digest(config, ["SOLVER.BASE_LR", "0.040", "SEED", "0"])
    assert digest != ablation.config_digest(config, ["SOLVER.BASE_LR", "0.05"])
    with pytest.raises(ValueError, match="KEY, VALUE"):
        ablation.check_opts(["SOLVER.BASE_LR"], "--opts")


# Per row, the AP of seeds 0, 1, 2 (None: the run fails).
AP = {"base": [30.0, 32.0, 31.0], "better": [33.0, 33.5, 36.0], "broken": [20.0, None, 21.0]}


def _write_experiment(directory):
    rows = [
        {
            "NAME": name,
            "OPTS": ["MODEL.RETINANET.FOCAL_LOSS_ALPHA", 0.1 * (i + 1)],
            "PAPER": [34.0, 52.5, 36.5] if i == 0 else [None, None, None],
        }
        for i, name in enumerate(AP)
    ]
    (directory / "table_toy.yaml").write_text(
        json.dumps(
            {
                "TABLE": "toy",
                "TITLE": "toy",
                "ROWS": rows,
                "SEEDS": [0, 1, 2],
                "BASE_CONFIG": get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml"),
                "EXTRA_METRICS": {"AP rarest": "AP-blue_triangle"},
            }
        )
    )


class FakeTrainNet:
    """Writes metrics.json as train_net would, AP from ``AP``; fails where ``AP`` has None."""

    def __init__(self, experiment):
        self.rows = {
            run.run_dir: (run.row.name, run.seed) for run in ablation.plan(experiment, ".")
        }
        self.calls = []

    def __call__(self, run, resume):
        self.calls.append((run.row.name, run.seed, resume))
        ap = AP[run.row.name][run.seed]
        if ap is None:
            (run.run_dir / ablation.LOG_FILE).write_text("FloatingPointError: loss became NaN\n")
            return 1
        record = {
            "bbox/AP": ap,
            "bbox/AP50": ap + 20,
            "bbox/AP75": ap + 2,
            "bbox/AP-blue_triangle": ap / 10,
        }
        (run.run_dir / "metrics.json").write_text('{"iteration": 1}\n' + json.dumps(record) + "\n")
        return 0


def test_runner_resumes_and_the_report_computes_mean_sd_and_paired_differences(
    tmp_path, monkeypatch
):
    _write_experiment(tmp_path)
    monkeypatch.setattr(ablation, "ABLATIONS_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)
    experiment = ablation.load_experiment("toy")
    runs = ablation.plan(experiment, tmp_path / "out")
    # An interrupted run (its status still says running) resumes; a finished one is skipped.
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / ablation.STATUS_FILE).write_text('{"status": "running"}')
    launcher = FakeTrainNet(experiment)
    assert ablation.main(["--table", "toy", "--output-dir", "out"], launcher) == 0
    assert launcher.calls[0] == ("base", 0, True) and len(launcher.calls) == 9
    assert ablation.main(["--table", "toy", "--output-dir", "out"], launcher) == 0
    assert len(launcher.calls) == 9  # everything finished or failed: nothing runs again

    records = ablation_report.read_runs_csv(tmp_path / "out" / ablation.RUNS_CSV)
    assert [r["status"] for r in records].count("failed") == 1
    assert "FloatingPointError" in next(r["error"] for r in records if r["status"] == "failed")
    lines = {line.row.name: line for line in ablation_report.summarize(experiment, records)}
    better = lines["better"]
    assert better.metrics["AP"].mean == pytest.approx(statistics.mean(AP["better"]))
    assert better.metrics["AP"].sd == pytest.approx(statistics.stdev(AP["better"]))
    differences = [b - a for a, b in zip(AP["base"], AP["better"])]  # paired seed by seed
    assert better.deltas["AP"].mean == pytest.approx(statistics.mean(differences))
    assert better.deltas["AP"].sd == pytest.approx(statistics.stdev(differences))
    assert better.verdict() == "ahead"
    # The failed seed leaves one pair fewer.
    assert lines["broken"].deltas["AP"].n == 2
    assert lines["broken"].deltas["AP"].mean == pytest.approx(((20 - 30) + (21 - 31)) / 2)
    assert lines["base"].deltas == {} and lines["base"].verdict() == "–"
    assert better.metrics["AP-blue_triangle"].mean == pytest.approx(
        statistics.mean(AP["better"]) / 10
    )

    markdown = (tmp_path / "out" / "table_toy.md").read_text()
    assert "| 34.0 | 52.5 | 36.5 |" in markdown  # the paper's numbers beside ours
    assert (
        f"{statistics.mean(AP['better']):.1f} ± {statistics.stdev(AP['better']):.1f} (n=3)"
        in markdown
    )
    assert "- failed: broken seed 1: FloatingPointError" in markdown
    assert (tmp_path / "out" / "table_toy.png").stat().st_size > 10_000

    ablation.main(["--table", "toy", "--output-dir", "out", "--dry-run"], launcher)


def test_dry_run_lists_status_and_shared_runs(tmp_path, monkeypatch, capsys):
    _write_experiment(tmp_path)
    monkeypatch.setattr(ablation, "ABLATIONS_DIR", tmp_path)
    ablation.main(["--table", "toy", "toy", "--dry-run", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "base seed 0 [pending] runs/" in printed
    assert "same run as toy/base seed 0" in printed
    assert printed.strip().endswith(f"9 distinct runs, in {tmp_path}")


def test_spread_of_no_value_and_of_one():
    assert ablation_report.Spread({}).format() == "–"
    assert ablation_report.Spread({0: 1.25}).format(signed=True) == "+1.2 (n=1)"
    assert math.isnan(ablation_report.Spread({0: 1.0}).sd)


def test_figure1_is_the_focal_loss_and_stats_counts_anchors(tmp_path, capsys):
    import torch

    p_t = torch.tensor([0.1, 0.5, 0.9])
    expected = -((1 - p_t) ** 2) * torch.log(p_t)
    assert torch.allclose(ablation_report.focal_loss_of_pt(p_t, 2.0), expected, rtol=1e-5)
    ablation.main(["--figure", "1", "--output", str(tmp_path / "f1.png")])
    assert (tmp_path / "f1.png").stat().st_size > 10_000
    config = get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml")
    ablation.main(["--stats", "--config-file", config, "--image-size", "160", "160"])
    # 3 x 3 anchors on P3-P7 of a 160 px image (docs/REPRODUCTION.md).
    assert "anchors per image: 4,842.00" in capsys.readouterr().out
