"""The compile benchmark (``python -m retinanet_fl.benchmark compile``), on a tiny model."""

import math

import pytest

from retinanet_fl.benchmark import main
from retinanet_fl.benchmark.compiled import coco_like_batches, coco_like_sizes
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


def test_coco_like_batches_group_images_by_orientation():
    assert coco_like_batches(12, 1, 640, 800, 1333, seed=0) == [
        [size] for size in coco_like_sizes(12, 640, 800, 1333, seed=0)
    ]
    batches = coco_like_batches(50, 2, 640, 800, 1333, seed=0)
    assert len(batches) == 50 and all(len(batch) == 2 for batch in batches)
    # As Detectron2's AspectRatioGroupedDataset: both landscape, or both not.
    assert all(len({w > h for h, w in batch}) == 1 for batch in batches)
    assert {w > h for batch in batches for h, w in batch} == {True, False}


def test_compile_benchmark_counts_compiles_and_reports(tmp_path, capsys):
    # Both modes (the default), channels-last (the default); inductor's on-disk cache reused, so
    # that the suite compiles these graphs once per machine.
    argv = ["compile", "--depth", "18", "--num-calls", "1", "--short-side", "64", "64"]
    argv += ["--max-size", "96", "--steady-repeats", "2", "--threads", "1", "--reuse-compile-cache"]
    main([*argv, "--output-dir", str(tmp_path)])
    results = load_results(tmp_path / "compile.json")
    assert isinstance(results, CompileResults)
    assert results.channels_last and results.precision == "fp32"
    assert [mode.mode for mode in results.modes] == ["inference", "train"]
    for mode, batch_size in zip(results.modes, [1, 2]):
        (first,) = mode.entries
        assert len(first.image_sizes) == mode.batch_size == batch_size
        for height, width in first.image_sizes:
            assert min(height, width) <= 64 and max(height, width) <= 96
        # Padded to the largest image, rounded up to a multiple of 32 (the FPN's size divisibility).
        for padded, side in zip((first.padded_height, first.padded_width), zip(*first.image_sizes)):
            assert padded % 32 == 0 and max(side) <= padded < max(side) + 32
        # The first call compiles the backbone and the head; the same batch again compiles
        # nothing.
        assert first.compiled_graphs >= 2 and mode.steady_compiled_graphs == 0
        assert mode.compile_overhead_s == pytest.approx(first.compiled_s - first.eager_s)
        assert all(len(times) == 2 for times in mode.steady_times_s.values())
        assert math.isfinite(mode.steady_ratio_compiled_vs_eager)
    inference, train = results.modes
    assert inference.max_loss_relative_difference is None
    assert train.max_loss_relative_difference < 1e-4
    report = (tmp_path / "compile.md").read_text()
    assert report.count("Calls that compiled: **1 of 1**") == 2
    assert "## Training, batch 2" in report and "median per iteration" in report
    main(["render", str(tmp_path / "compile.json")])
    assert capsys.readouterr().out.endswith(report)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--short-side", "800", "640"], "--short-side"),
        (["--train-batch-size", "0"], "--train-batch-size"),
        (["--ours-opts", "MODEL.RETINANET_FL.CHANNELS_LAST"], "KEY VALUE"),
        (["--ours-opts", "MODEL.RETINANET_FL.COMPILE", "False"], "MODEL.RETINANET_FL.COMPILE"),
    ],
)
def test_compile_benchmark_rejects_bad_options(options, message):
    with pytest.raises(SystemExit, match=message):
        main(["compile", *options])
