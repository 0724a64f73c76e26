"""The compile benchmark (``python -m retinanet_fl.benchmark compile``), on a tiny model."""

import math

import pytest

from retinanet_fl.benchmark import main
from retinanet_fl.benchmark.compiled import coco_like_sizes
from retinanet_fl.benchmark.results import CompileResults, load_results


def test_coco_like_sizes_follow_detectron2s_resizing():
    sizes = coco_like_sizes(200, 640, 800, 1333, seed=0)
    assert sizes == coco_like_sizes(200, 640, 800, 1333, seed=0)
    for height, width in sizes:
        short, long = min(height, width), max(height, width)
        assert long <= 1333 and long / short <= 2.0 + 1e-2
        # The cap shrinks the short side with the long one; otherwise it is in range.
        assert 640 <= short <= 800 or long == 1333
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)


def test_compile_benchmark_counts_compiles_and_reports(tmp_path, capsys):
    argv = ["compile", "--depth", "18", "--num-images", "1", "--short-side", "64", "64"]
    argv += ["--max-size", "96", "--steady-repeats", "2", "--threads", "1"]
    main([*argv, "--output-dir", str(tmp_path)])
    results = load_results(tmp_path / "compile.json")
    assert isinstance(results, CompileResults)
    (first,) = results.entries
    assert min(first.height, first.width) == 64 and max(first.height, first.width) <= 96
    # The first call compiles the backbone and the head; the same size again compiles nothing.
    assert first.compiled_graphs >= 2 and results.steady_compiled_graphs == 0
    assert results.compile_overhead_s == pytest.approx(first.compiled_s - first.eager_s)
    assert all(len(times) == 2 for times in results.steady_times_s.values())
    assert math.isfinite(results.steady_ratio_compiled_vs_eager)
    assert "Calls that compiled: **1 of 1**" in (tmp_path / "compile.md").read_text()
    main(["render", str(tmp_path / "compile.json")])
    assert capsys.readouterr().out.endswith((tmp_path / "compile.md").read_text())
    with pytest.raises(SystemExit, match="--short-side"):
        main(["compile", "--short-side", "800", "640"])
