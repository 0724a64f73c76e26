"""Smoke tests of the benchmarks: reports written and consistent with their results (the inference
report with its exported models), stages equal the forward, the committed results read and
rendered again unchanged.

No timing is asserted: the numbers depend on the machine.
"""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retinanet_fl.benchmark import main
from retinanet_fl.benchmark.exported import missing_packages
from retinanet_fl.benchmark.fixtures import (
    build_detectron2_pair,
    build_torchvision_retinanet,
    detectron2_retinanet_cfg,
    make_batch,
)
from retinanet_fl.benchmark.inference import dense_detector_stages, torchvision_stages
from retinanet_fl.benchmark.loss_kernels import LOSS_METHODS
from retinanet_fl.benchmark.report import render
from retinanet_fl.benchmark.results import (
    DETECTRON2,
    EXPORTED_STAGE,
    ONNXRUNTIME,
    OURS,
    TORCHSCRIPT,
    TORCHVISION,
    BenchmarkResults,
    InferenceResults,
    LossResults,
    TrainResults,
    load_results,
    to_json,
)
from retinanet_fl.benchmark.targets import (
    INFERENCE_ONNXRUNTIME_MAX_RATIO,
    INFERENCE_TIME_MAX_RATIO,
    TRAIN_MEMORY_MAX_RATIO,
    TRAIN_TIME_MAX_RATIO,
    evaluate,
)

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"

# The exported models the inference benchmark runs by default on the CPU: those installed here.
DEFAULT_EXPORTED = [TORCHSCRIPT] + ([] if missing_packages([ONNXRUNTIME]) else [ONNXRUNTIME])

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
    how glibc allocates for the rest of the process. Inference runs its default models on the CPU,
    the exported ones included."""
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


def _load_and_check(path: Path) -> BenchmarkResults:
    """The results at ``path``; checks that they are written as the dataclasses write them, and
    that the Markdown beside them is what the renderer makes of them."""
    results = load_results(path)
    assert json.dumps(to_json(results), indent=2) + "\n" == path.read_text()
    assert render(results) == path.with_suffix(".md").read_text()
    return results


def test_train_report(reports):
    results = _load_and_check(reports / "train.json")
    assert isinstance(results, TrainResults)
    # Training reports bf16 autocast beside fp32 by default, on the CPU too.
    entries = {entry.precision: entry for entry in results.entries}
    assert sorted(entries) == ["amp", "fp32"]
    assert all(math.isfinite(v) for v in entries["amp"].first_iteration_losses[OURS].values())
    entry = entries["fp32"]
    assert (entry.image_size, entry.batch_size) == (64, 2)
    assert results.machine.torch_threads == results.settings.threads == 1
    medians = entry.median_s
    assert entry.time_ratio_ours_vs_detectron2 == pytest.approx(medians[OURS] / medians[DETECTRON2])
    assert entry.images_per_s[OURS] == pytest.approx(2 / medians[OURS])
    assert set(entry.phase_median_s[OURS]) == {"forward", "backward", "optimizer"}
    # 9 anchors per location of P3-P7 (strides 8 to 128) on a 64 px image.
    assert entry.num_anchors_per_image == 9 * (8 * 8 + 4 * 4 + 2 * 2 + 1 + 1)
    loss = entry.cls_loss_median_s
    assert entry.time_ratio_bound_from_cls_loss == pytest.approx(
        1 - (loss[DETECTRON2] - loss[OURS]) / medians[DETECTRON2]
    )
    # Identical weights and inputs: the first iteration's losses agree.
    for name, value in entry.first_iteration_losses[DETECTRON2].items():
        assert entry.first_iteration_losses[OURS][name] == pytest.approx(value, rel=1e-4)
    for peaks, ratio in (
        (entry.peak_memory_bytes, entry.memory_ratio_ours_vs_detectron2),
        (entry.peak_allocated_bytes, entry.allocated_ratio_ours_vs_detectron2),
    ):
        assert peaks[OURS] > 0 and peaks[DETECTRON2] > 0
        assert ratio == pytest.approx(peaks[OURS] / peaks[DETECTRON2])
    assert {"time", "memory", "allocated memory"} == set(entry.targets)
    time_target = entry.targets["time"]
    assert time_target.ratio == entry.time_ratio_ours_vs_detectron2
    assert time_target.met == (time_target.ratio <= TRAIN_TIME_MAX_RATIO)
    assert entry.targets["memory"].target == f"<= {TRAIN_MEMORY_MAX_RATIO}"
    assert results.profiles
    for profile in results.profiles:
        assert profile.ops[OURS] and profile.ops[DETECTRON2]
    markdown = (reports / "train.md").read_text()
    assert "ours/D2 time" in markdown and "## Targets" in markdown and "## Profile" in markdown
    assert f"{entry.time_ratio_ours_vs_detectron2:.3f}" in markdown


def test_inference_report(reports):
    results = _load_and_check(reports / "inference.json")
    assert isinstance(results, InferenceResults)
    (entry,) = results.entries
    medians = entry.median_s
    assert set(medians) == {OURS, DETECTRON2, TORCHVISION, *DEFAULT_EXPORTED}
    for other, ratio in (
        (DETECTRON2, entry.time_ratio_ours_vs_detectron2),
        (TORCHVISION, entry.time_ratio_ours_vs_torchvision),
    ):
        assert ratio == pytest.approx(medians[OURS] / medians[other])
    assert set(entry.stage_median_s[TORCHVISION]) == {"backbone", "head", "postprocess"}
    assert entry.images_per_s[OURS] == pytest.approx(1 / medians[OURS])
    assert entry.latency_per_image_s == pytest.approx(medians)
    detections = entry.detections_per_image
    assert all(count > 0 for count in detections[OURS])
    # Identical weights and images: ours and Detectron2's keep the same detections.
    assert detections[OURS] == detections[DETECTRON2]
    onnxruntime_target = ["time_onnxruntime_vs_ours"] if ONNXRUNTIME in DEFAULT_EXPORTED else []
    assert {"time_vs_detectron2", "time_vs_torchvision", *onnxruntime_target} == set(entry.targets)
    assert entry.targets["time_vs_detectron2"].target == f"<= {INFERENCE_TIME_MAX_RATIO}"
    markdown = (reports / "inference.md").read_text()
    assert "ms / image" in markdown and "torchvision" in markdown and "## Targets" in markdown


def test_inference_report_exported_rows(reports):
    if ONNXRUNTIME not in DEFAULT_EXPORTED:
        pytest.skip("onnx and onnxruntime (the export extra) are not installed")
    results = load_results(reports / "inference.json")
    (entry,) = results.entries
    medians, exported = entry.median_s, entry.time_ratio_exported_vs_ours
    assert set(exported) == {TORCHSCRIPT, ONNXRUNTIME}
    for name, ratio in exported.items():
        assert math.isfinite(medians[name]) and medians[name] > 0, name
        assert math.isfinite(ratio) and ratio == pytest.approx(medians[name] / medians[OURS])
        assert entry.latency_per_image_s[name] == pytest.approx(medians[name])
        # One graph, timed as one stage.
        assert set(entry.stage_median_s[name]) == {EXPORTED_STAGE}
        # Exported from ours, on the same images: as many detections.
        assert entry.detections_per_image[name] == entry.detections_per_image[OURS], name
    target = entry.targets["time_onnxruntime_vs_ours"]
    assert target.ratio == exported[ONNXRUNTIME]
    assert target.target == f"<= {INFERENCE_ONNXRUNTIME_MAX_RATIO}"
    # PyTorch's allocator sees TorchScript's tensors, not ONNX Runtime's.
    assert entry.peak_allocated_bytes[TORCHSCRIPT] > 0
    assert entry.peak_memory_bytes[ONNXRUNTIME] is None
    assert entry.peak_allocated_bytes[ONNXRUNTIME] is None
    for profile in results.profiles:
        assert TORCHSCRIPT in profile.ops and ONNXRUNTIME not in profile.ops
    settings = results.settings.exported
    assert settings.models == [TORCHSCRIPT, ONNXRUNTIME]
    assert settings.onnxruntime_intra_op_threads == results.settings.threads == 1
    files = results.exported_files
    assert [(f.image_size, f.model) for f in files] == [(64, TORCHSCRIPT), (64, ONNXRUNTIME)]
    assert all(f.file_bytes > 0 and f.export_s > 0 for f in files)
    markdown = (reports / "inference.md").read_text()
    assert "## Exported models" in markdown and "1 intra-op threads" in markdown
    assert f"| {exported[ONNXRUNTIME]:.3f} |" in markdown
    assert f"onnxruntime/ours = {exported[ONNXRUNTIME]:.3f}" in markdown


def test_bf16_autocast_on_cpu_with_our_config_overrides(tmp_path):
    """``--precisions amp`` on the CPU is bf16 autocast; ``--ours-opts`` reach our model alone."""
    ours_opts = ["--ours-opts", "MODEL.RETINANET_FL.CHANNELS_LAST", "False"]
    argv = ["train", *SMALL, "--precisions", "amp", "--no-profile", "--memory-repeats", "0"]
    main([*argv, *ours_opts, "--output-dir", str(tmp_path)])
    results = _load_and_check(tmp_path / "train.json")
    (entry,) = results.entries
    assert entry.precision == "amp"
    assert all(math.isfinite(loss) for loss in entry.first_iteration_losses[OURS].values())
    assert "ours also with `MODEL.RETINANET_FL.CHANNELS_LAST False`" in results.settings.config
    with pytest.raises(SystemExit, match="KEY VALUE pairs"):
        main(["train", *SMALL, "--ours-opts", "MODEL.RETINANET_FL.CHANNELS_LAST"])


@pytest.mark.parametrize("name", ["train", "inference", "losses"])
def test_committed_results_render_unchanged(name, capsys):
    """The committed JSON reads into the dataclasses and writes back byte for byte, and the
    committed Markdown is what ``render`` prints from it."""
    _load_and_check(COMMITTED / f"{name}.json")
    main(["render", str(COMMITTED / f"{name}.json")])
    assert capsys.readouterr().out == (COMMITTED / f"{name}.md").read_text()


def test_targets():
    assert evaluate(0.95, 0.95, "<=").met and not evaluate(1.0, 1.0, "<").met
    missed = evaluate(1.25, 1.0, "<=")
    assert (missed.met, missed.missed_by, missed.target) == (False, 0.25, "<= 1.0")
    assert evaluate(0.5, 1.0, "<").missed_by == 0.0


def test_losses_benchmark_report(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "retinanet_fl.benchmark",
            "losses",
            "--output-dir",
            str(tmp_path),
            "--sizes",
            "3000",
            "--num-classes",
            "5",
            "--repeats",
            "5",
        ],
        check=True,
    )
    results = _load_and_check(tmp_path / "losses.json")
    assert isinstance(results, LossResults)
    (entry,) = results.sizes
    assert set(entry.median_s) == set(LOSS_METHODS)
    assert entry.reference == "fvcore_jit"
    assert entry.speedup["ours_compiled"] == pytest.approx(
        entry.median_s["fvcore_jit"] / entry.median_s["ours_compiled"]
    )
    # Every loss method computes the same gradient.
    gradient_l1 = entry.gradient_l1
    assert set(gradient_l1) == set(LOSS_METHODS) - {"logits_copy"}
    for method, value in gradient_l1.items():
        assert value == pytest.approx(gradient_l1["fvcore_jit"], rel=1e-5), method
    assert set(entry.targets) == {
        "compiled 20x faster than fvcore_jit",
        "compiled within 3x of a logits copy",
        "compiled extra memory at most one (R, K) fp32",
        "eager no slower than fvcore's eager",
    }
    assert len(results.compile_s_per_new_setting) == 2
    report = (tmp_path / "losses.md").read_text()
    assert all(f"| {method} |" in report for method in LOSS_METHODS)


def test_table1e_report_and_render(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "retinanet_fl.benchmark", "table1e", "--output-dir", str(tmp_path),
         "--depths", "18", "--sizes", "64", "96", "--reference-size", "64", "--repeats", "5",
         "--threads", "1"],
        check=True,
    )  # fmt: skip
    results = json.loads((tmp_path / "table1e.json").read_text())
    entries = results["entries"]
    assert [(e["depth"], e["short_side"], e["height"], e["width"]) for e in entries] == [
        (18, 64, 64, 85),
        (18, 96, 96, 128),
    ]
    for entry in entries:
        median_ms = statistics.median(entry["times_s"]) * 1e3
        assert entry["median_ms"] == pytest.approx(median_ms)
        assert entry["paper_ms"] is None  # the paper has no R-18 row
    assert entries[0]["ratio_to_reference"] == 1.0
    assert entries[1]["ratio_to_reference"] == pytest.approx(
        entries[1]["median_ms"] / entries[0]["median_ms"]
    )
    assert (tmp_path / "table1e.png").is_file()
    report = (tmp_path / "table1e.md").read_text()
    rendered = subprocess.run(
        [sys.executable, "-m", "retinanet_fl.benchmark", "render", str(tmp_path / "table1e.json")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert rendered == report and "## R-18-FPN" in report
