"""tools/benchmark.py on a tiny configuration, every part in one interleaved run."""

import json

import benchmark
import pytest
import torch


def test_coco_like_batches_follow_detectron2s_resizing_and_grouping():
    batches = benchmark.coco_like_batches(6, 2, (640, 800, 1333), seed=0)
    assert len(batches) == 6 and all(len(batch) == 2 for batch in batches)
    for batch in batches:
        assert len({height > width for height, width in batch}) == 1  # one orientation a batch
        for height, width in batch:
            assert max(height, width) <= 1333 and 320 <= min(height, width) <= 800
            assert 0.5 <= height / width <= 2.0


def test_memory_measures_see_a_calls_allocation():
    size = 64 * benchmark.MIB

    def allocate() -> float:
        return float(torch.ones(size // 4).sum())  # float32: `size` bytes, every page written

    resident = benchmark.PeakMemory(torch.device("cpu"))
    if resident.available:
        # Pages: the resident set may already hold a little of it.
        assert 0.9 * size <= resident.measure(allocate) < 2 * size
    assert size <= benchmark.allocator_peak(allocate) < 1.1 * size


def test_tiny_run_times_every_part_and_writes_table_and_json(tmp_path, capsys):
    argv = [
        "--depth",
        "18",
        "--num-classes",
        "3",
        "--image-sizes",
        "64",
        "--batch-sizes",
        "2",
        "--loss-sizes",
        "2000",
        "--table1e-depths",
        "18",
        "--table1e-sizes",
        "64",
        "600",
        "--compile-modes",
        "inference",
        "--compile-calls",
        "1",
        "--compile-size-range",
        "64",
        "64",
        "64",
        "--repeats",
        "2",
        "--warmup",
        "1",
        # Our loss compiles in the losses part; the models here run it eagerly, to save time.
        "--ours-opts",
        "MODEL.RETINANET_FL.LOSS_KERNEL",
        "eager",
        "--deploy-calibration-images",
        "2",
        # Measured above, on a call whose allocation is known.
        "--no-memory",
        "--threads",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    results = benchmark.main(argv)
    cases = {(c["part"], c["setting"]): c for c in results["cases"]}
    assert {part for part, _ in cases} == set(benchmark.BUILDERS)
    train = cases["train", "64 px, batch 2, fp32"]
    # Ours holds Detectron2's weights: the same first-iteration losses.
    first = {name: step["first_output"] for name, step in train["steps"].items()}
    assert first["ours"] == pytest.approx(first["detectron2"], rel=1e-3)
    inference = cases["inference", "64 px, batch 2, fp32"]
    assert {"ours", "detectron2", "torchvision", "torchscript"} <= set(inference["steps"])
    assert [len(s["times_s"]) for s in inference["steps"].values()] == [2] * len(inference["steps"])
    ratios = {(r["a"], r["b"]): r for r in inference["ratios"]}
    ours, detectron2 = (inference["steps"][n]["median_s"] for n in ("ours", "detectron2"))
    assert ratios["ours", "detectron2"]["time"] == pytest.approx(ours / detectron2)
    assert ratios["torchscript", "ours"]["peak"] is None  # --no-memory
    # Score threshold 0: every model keeps its most detections, the exported file as the eager one.
    detections = {name: step["first_output"] for name, step in inference["steps"].items()}
    assert detections["torchscript"] == detections["ours"]
    assert detections["pt2"] == detections["ours"]
    deploy = cases["deploy", "64 px, batch 1, CPU"]
    assert {"detectron2", "ours", "onnx_fp32", "onnx_int8"} <= set(deploy["steps"])
    assert ("ours_bf16" in deploy["steps"]) == deploy["info"]["cpu_bf16"]
    assert {(r["a"], r["b"]) for r in deploy["ratios"]} >= {("onnx_int8", "detectron2")}
    deployed = {name: step["first_output"] for name, step in deploy["steps"].items()}
    assert deployed["onnx_fp32"] == deployed["ours"] == deployed["detectron2"]
    successors = cases["successors", "64 px, batch 2, train"]
    rows = ["fl", "fl_atss", "qfl_atss", "vfl_atss", "vfl_atss_one_anchor"]
    assert list(successors["steps"]) == rows
    assert [(r["a"], r["b"]) for r in successors["ratios"]] == [(row, "fl") for row in rows[1:]]
    # The FL row is the train part's model; QFL and VFL share ATSS's boxes and GIoU.
    row_losses = {name: step["first_output"] for name, step in successors["steps"].items()}
    assert row_losses["fl"] == first["ours"]
    assert row_losses["qfl_atss"]["loss_box_reg"] == row_losses["vfl_atss"]["loss_box_reg"]
    assert row_losses["fl_atss"]["loss_cls"] != row_losses["fl"]["loss_cls"]
    assert list(cases["successors", "64 px, batch 1, inference"]["steps"]) == rows
    losses = cases["losses", "R = 2,000 x K = 3, fp32"]["steps"]
    gradients = [s["first_output"] for n, s in losses.items() if n != "logits_copy"]
    assert gradients == pytest.approx([gradients[0]] * len(gradients), rel=1e-4)
    compiled = next(c for (part, _), c in cases.items() if part == "compile")["info"]
    assert compiled["calls_that_compiled"] == 1 and compiled["graphs"] >= 1
    table1e = next(c for (part, _), c in cases.items() if part == "table1e")
    assert [(r["a"], r["b"]) for r in table1e["ratios"]] == [("64 px", "600 px")]

    assert json.loads((tmp_path / "benchmark.json").read_text())["args"]["repeats"] == 2
    table = (tmp_path / "benchmark.md").read_text()
    assert "| train | 64 px, batch 2, fp32 | ours / detectron2 |" in table
    assert (tmp_path / "table1e.png").is_file()
    assert "wrote" in capsys.readouterr().out
