"""Smoke tests of the train and inference benchmarks: reports written, stages equal the forward.

No timing is asserted: the numbers depend on the machine.
"""
import json
import subprocess
import sys

import pytest
import torch

from retinanet_fl.benchmark.models import (
    DETECTRON2,
    OURS,
    TORCHVISION,
    build_detectron2_pair,
    build_torchvision_retinanet,
    dense_detector_stages,
    detectron2_retinanet_cfg,
    make_batch,
    torchvision_stages,
)

SMALL = ["--depth", "18", "--image-sizes", "64", "--iters", "1", "--warmup", "1", "--threads", "1"]


def _run_stages(stages):
    state = None
    with torch.no_grad():
        for _, stage in stages:
            state = stage(state)
    return state


def test_stages_compute_the_forward():
    cfg = detectron2_retinanet_cfg(18, 80, 0.0, "eager", "cpu")
    models = build_detectron2_pair(cfg, seed=0, image_size=64)
    models[TORCHVISION] = build_torchvision_retinanet(18, 80, 64, 0.0, 1000, 0.5, 100)
    batch = make_batch(2, 64, 80, 0, seed=0)
    for name, model in models.items():
        model.eval()
        if name == TORCHVISION:
            images = [x["image"].float() / 255 for x in batch]
            staged = _run_stages(torchvision_stages(model, images))
            with torch.no_grad():
                direct = model(images)
            pairs = [(s["boxes"], d["boxes"]) for s, d in zip(staged, direct)]
        else:
            inputs = [{"image": x["image"]} for x in batch]
            staged = _run_stages(dense_detector_stages(model, inputs))
            with torch.no_grad():
                direct = model(inputs)
            pairs = [
                (s["instances"].pred_boxes.tensor, d["instances"].pred_boxes.tensor)
                for s, d in zip(staged, direct)
            ]
        # Threshold 0: every image has its full quota of detections, so NMS did real work.
        assert all(len(staged_boxes) > 50 for staged_boxes, _ in pairs), name
        for staged_boxes, direct_boxes in pairs:
            torch.testing.assert_close(staged_boxes, direct_boxes, rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Both benchmarks on ResNet-18 at 64 px, in a child process: measuring CPU memory changes
    how glibc allocates for the rest of the process."""
    output_dir = tmp_path_factory.mktemp("bench")
    code = (
        "import sys; from retinanet_fl.benchmark import main; "
        "main(['train'] + sys.argv[2:] + ['--output-dir', sys.argv[1]]); "
        "main(['inference'] + sys.argv[2:] + ['--output-dir', sys.argv[1], '--batch-sizes', '1'])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(output_dir), *SMALL, "--memory-repeats", "1"],
        check=True,
        capture_output=True,
        text=True,
    )
    return output_dir


def test_train_report(reports):
    results = json.loads((reports / "train.json").read_text())
    (entry,) = results["entries"]
    assert (entry["image_size"], entry["batch_size"], entry["precision"]) == (64, 2, "fp32")
    assert results["machine"]["torch_threads"] >= 1
    medians = entry["median_s"]
    assert entry["time_ratio_ours_vs_detectron2"] == pytest.approx(
        medians[OURS] / medians[DETECTRON2]
    )
    assert set(entry["phase_median_s"][OURS]) == {"forward", "backward", "optimizer"}
    assert entry["num_anchors_per_image"] > 0
    assert entry["cls_loss_median_s"][OURS] > 0 and entry["cls_loss_median_s"][DETECTRON2] > 0
    assert entry["time_ratio_bound_from_cls_loss"] > 0
    # Identical weights and inputs: the first iteration's losses agree.
    for name, value in entry["first_iteration_losses"][DETECTRON2].items():
        assert entry["first_iteration_losses"][OURS][name] == pytest.approx(value, rel=1e-4)
    for key in ("peak_memory_bytes", "peak_allocated_bytes"):
        assert entry[key][OURS] > 0 and entry[key][DETECTRON2] > 0
    assert entry["memory_ratio_ours_vs_detectron2"] > 0
    assert entry["allocated_ratio_ours_vs_detectron2"] > 0
    assert {"time", "memory", "allocated memory"} <= set(entry["targets"])
    assert results["profiles"]
    for profile in results["profiles"]:
        assert profile["ops"][OURS] and profile["ops"][DETECTRON2]
    markdown = (reports / "train.md").read_text()
    assert "ours/D2 time" in markdown and "## Targets" in markdown and "## Profile" in markdown
    assert f"{entry['time_ratio_ours_vs_detectron2']:.3f}" in markdown


def test_inference_report(reports):
    results = json.loads((reports / "inference.json").read_text())
    (entry,) = results["entries"]
    assert set(entry["median_s"]) == {OURS, DETECTRON2, TORCHVISION}
    for ratio in ("time_ratio_ours_vs_detectron2", "time_ratio_ours_vs_torchvision"):
        assert entry[ratio] > 0
    assert set(entry["stage_median_s"][TORCHVISION]) == {"backbone", "head", "postprocess"}
    assert entry["images_per_s"][OURS] == pytest.approx(1 / entry["median_s"][OURS])
    assert all(count > 0 for count in entry["detections_per_image"][OURS])
    assert {"time_vs_detectron2", "time_vs_torchvision"} == set(entry["targets"])
    markdown = (reports / "inference.md").read_text()
    assert "ms / image" in markdown and "torchvision" in markdown and "## Targets" in markdown


def test_amp_on_cpu_is_refused(tmp_path):
    from retinanet_fl.benchmark import main

    with pytest.raises(SystemExit, match="CUDA only"):
        main(["train", *SMALL, "--precisions", "amp", "--output-dir", str(tmp_path)])


def test_losses_benchmark_report(tmp_path):
    from retinanet_fl.benchmark.losses import LOSS_METHODS

    subprocess.run(
        [sys.executable, "-m", "retinanet_fl.benchmark", "losses", "--output-dir", str(tmp_path),
         "--sizes", "3000", "--num-classes", "5", "--repeats", "5"],
        check=True,
    )
    results = json.loads((tmp_path / "losses.json").read_text())
    (entry,) = results["sizes"]
    assert set(entry["median_s"]) == set(LOSS_METHODS)
    # Every loss method computes the same gradient.
    gradient_l1 = entry["gradient_l1"]
    assert set(gradient_l1) == set(LOSS_METHODS) - {"logits_copy"}
    for method, value in gradient_l1.items():
        assert value == pytest.approx(gradient_l1["fvcore_jit"], rel=1e-5), method
    assert set(entry["targets"]) == {
        "compiled 20x faster than fvcore_jit",
        "compiled within 3x of a logits copy",
        "compiled extra memory at most one (R, K) fp32",
        "eager no slower than fvcore's eager",
    }
    assert len(results["compile_s_per_new_setting"]) == 2
    report = (tmp_path / "losses.md").read_text()
    assert all(f"| {method} |" in report for method in LOSS_METHODS)
