"""End-to-end runs of train_net.py on a tiny synthetic dataset: train, evaluate, resume, 2 CPU
workers."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "retinanet_R18_FPN_synthetic.yaml")
# A model and schedule small enough for a few CPU seconds per run.
TINY_OPTS = [
    # 64 channels: the config's group norm (32 groups) needs 2 per group on P7's single pixel
    "MODEL.FPN.OUT_CHANNELS",
    "64",
    "MODEL.RETINANET.NUM_CONVS",
    "1",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.01",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.BASE_LR",
    "0.001",
    "SOLVER.WARMUP_ITERS",
    "40",
    "SOLVER.STEPS",
    "()",
    "SOLVER.MAX_ITER",
    "40",
    "SOLVER.CHECKPOINT_PERIOD",
    "20",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SEED",
    "1",
]


def run_train_net(datasets_root, output_dir, *args, opts=()):
    """Run train_net.py in a fresh process on the tiny dataset; return its combined output."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        TRAIN_NET,
        "--config-file",
        CONFIG,
        *args,
        *TINY_OPTS,
        "OUTPUT_DIR",
        str(output_dir),
        *opts,
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout + completed.stderr


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def parse_box_ap(output):
    """The AP row of the last 'copypaste' table that Detectron2 prints after evaluation."""
    rows = re.findall(r"copypaste: ([-\d.,na]+)\s*$", output, flags=re.MULTILINE)
    return [float(value) for value in rows[-1].split(",")]


@pytest.fixture(scope="module")
def trained_run(datasets_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("trained")
    output = run_train_net(datasets_root, output_dir)
    return output_dir, output


def test_training_reduces_loss(trained_run):
    output_dir, output = trained_run
    # Detectron2 writes the median loss of each 20-iteration window: iterations 19 and 39.
    losses = [row["total_loss"] for row in read_metrics(output_dir) if "total_loss" in row]
    assert len(losses) == 2
    assert losses[1] < losses[0]


def test_eval_only_reproduces_in_training_evaluation(trained_run, datasets_root, tmp_path):
    output_dir, output = trained_run
    ap_in_training = parse_box_ap(output)
    weights = os.path.join(output_dir, "model_final.pth")
    eval_output = run_train_net(
        datasets_root, tmp_path, "--eval-only", opts=["MODEL.WEIGHTS", weights]
    )
    assert parse_box_ap(eval_output) == pytest.approx(ap_in_training, abs=1e-4, nan_ok=True)
    assert ap_in_training[1] > 0  # AP50: the model does detect something
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        assert len(json.load(f)) > 0


def test_eval_only_with_test_time_augmentation(trained_run, datasets_root, tmp_path):
    output_dir, _ = trained_run
    weights = os.path.join(output_dir, "model_final.pth")
    options = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(48, 64, 80)"]
    options += ["TEST.AUG.MAX_SIZE", "100", "TEST.DETECTIONS_PER_IMAGE", "5"]
    output = run_train_net(
        datasets_root, tmp_path, "--eval-only", opts=["MODEL.WEIGHTS", weights, *options]
    )
    assert "Test-time augmentation: min sizes [48, 64, 80]" in output
    assert len(parse_box_ap(output)) == 6  # evaluated: AP, AP50, AP75, APs, APm, APl
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        results = json.load(f)
    # The merged copies give more than 5 detections per image: the cap binds.
    per_image = [sum(r["image_id"] == i for r in results) for i in {r["image_id"] for r in results}]
    assert len(per_image) == 4 and max(per_image) == 5


def test_resume_continues_from_saved_iteration_with_same_lr(trained_run, datasets_root, tmp_path):
    output_dir, _ = trained_run
    shutil.copy(os.path.join(output_dir, "model_0000019.pth"), tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_0000019.pth")
    output = run_train_net(datasets_root, tmp_path, "--resume")
    assert "Starting training from iteration 20" in output
    resumed = read_metrics(tmp_path)
    original = {row["iteration"]: row for row in read_metrics(output_dir) if "lr" in row}
    assert resumed[0]["iteration"] == 39
    assert resumed[0]["lr"] == pytest.approx(original[39]["lr"], rel=1e-9)


def test_two_gloo_workers_match_one_process(datasets_root, tmp_path):
    # The training set given by path: every worker registers it.
    synthetic = os.path.join(datasets_root, "synthetic")
    train_json = os.path.join(synthetic, "annotations", "instances_train.json")
    # Frozen BatchNorm and no flip, so one image on each of 2 workers sees exactly what a batch of 2
    # sees.
    opts = [
        "DATASETS.TRAIN",
        f"('coco:{train_json}:{os.path.join(synthetic, 'train')}',)",
        "SOLVER.MAX_ITER",
        "1",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "MODEL.RESNETS.NORM",
        "FrozenBN",
        "INPUT.RANDOM_FLIP",
        "none",
        "DATASETS.TEST",
        "()",
        # full LR from the first step, so the step moves the weights well beyond the tolerance;
        # SGD, whose step is linear in the gradient (AdamW's first step divides it by its own size)
        "SOLVER.WARMUP_FACTOR",
        "1.0",
        "SOLVER.BASE_LR",
        "0.05",
        "SOLVER.OPTIMIZER",
        "SGD",
    ]
    run_train_net(datasets_root, tmp_path / "single", opts=opts)
    output = run_train_net(
        datasets_root, tmp_path / "two", "--num-gpus", "2", "--dist-url", "auto", opts=opts
    )
    assert "world size: 2" in output.lower() or "rank 1" in output.lower()
    single = torch.load(tmp_path / "single" / "model_final.pth", weights_only=True)["model"]
    two = torch.load(tmp_path / "two" / "model_final.pth", weights_only=True)["model"]
    for name, tensor in single.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_resume_after_sigkill_while_saving_finishes_the_schedule(
    trained_run, datasets_root, tmp_path
):
    # Kill the run right after it announces its second checkpoint, i.e. while that file is being
    # written.
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        TRAIN_NET,
        "--config-file",
        CONFIG,
        *TINY_OPTS,
        "SOLVER.CHECKPOINT_PERIOD",
        "5",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    saves = 0
    for line in process.stdout:
        if "Saving checkpoint to" in line:
            saves += 1
            if saves == 2:
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / (tmp_path / "last_checkpoint").read_text(), weights_only=True)[
        "iteration"
    ] in (4, 9)

    output = run_train_net(datasets_root, tmp_path, "--resume", opts=["DATASETS.TEST", "()"])
    assert re.search(r"Starting training from iteration (5|10)\b", output)
    resumed_last = read_metrics(tmp_path)[-1]
    original = {row["iteration"]: row for row in read_metrics(trained_run[0]) if "lr" in row}
    assert resumed_last["iteration"] == 39
    assert resumed_last["lr"] == pytest.approx(original[39]["lr"], rel=1e-9)


def test_training_writes_the_evaluation_report(trained_run):
    output_dir, _ = trained_run
    report = output_dir / "report"
    with open(report / "report.json") as f:
        classes = json.load(f)["classes"]
    assert len(classes) == 6 and all(entry["num_gt"] > 0 for entry in classes)
    page = (report / "index.html").read_text()
    for source in re.findall(r'src="([^"]+)"', page):
        assert (report / source).stat().st_size > 0
    assert 'src="training_curves.png"' in page


def test_validation_loss_best_checkpoint_and_early_stopping(datasets_root, tmp_path):
    # At learning rate 0 the metric never improves: the second evaluation stops training.
    # (Detectron2 writes metrics.json every 20 iterations: an evaluation period of 20 keeps each.)
    opts = ["TEST.EVAL_PERIOD", "20", "SOLVER.MAX_ITER", "60", "SOLVER.BASE_LR", "0.0"]
    output = run_train_net(datasets_root, tmp_path, opts=[*opts, "SOLVER.EARLY_STOP_PATIENCE", "1"])
    assert "Early stopping at iteration 40: bbox/AP has not improved for 1 evaluations" in output
    validation = [row for row in read_metrics(tmp_path) if "validation/total_loss" in row]
    assert [row["iteration"] for row in validation] == [19, 39]
    assert all(row["validation/total_loss"] > 0 for row in validation)
    assert (tmp_path / "model_best.pth").is_file()
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 39
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
