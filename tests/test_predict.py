"""python -m retinanet_fl.predict over folders: unreadable files, batches, resuming, exported
models."""

import json
import logging

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from retinanet_fl import predict
from retinanet_fl.data import image_files
from retinanet_fl.export.__main__ import main as export_main
from retinanet_fl.export.cpu import has_bf16


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, small_cfg):
    """A random-weight model's config file and checkpoint, tested at 64 px."""
    root = tmp_path_factory.mktemp("predict_model")
    cfg = small_cfg(
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    )  # fmt: skip
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, root / "model.pth")
    (root / "config.yaml").write_text(cfg.dump())
    return str(root / "config.yaml"), str(root / "model.pth")


@pytest.fixture
def image_folder(tmp_path):
    """Four 64 px images and a file named like an image that holds text."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (folder / "bad.jpg").write_text("not an image")
    return folder


def run(model_files, inputs, output, *options):
    config_file, weights = model_files
    argv = ["--config-file", config_file, "--input", *inputs, "--output", str(output)]
    argv += ["--confidence-threshold", "0.0", *options, "MODEL.WEIGHTS", weights]
    return predict.main(argv)


def read_json(path):
    return {record["file_name"]: record["detections"] for record in json.loads(path.read_text())}


def test_unreadable_file_is_skipped_and_the_rest_written(model_files, image_folder, tmp_path):
    output = tmp_path / "out"
    assert run(model_files, [str(image_folder)], output) == 1
    results = read_json(output / "predictions.json")
    assert sorted(results) == sorted(str(image_folder / f"{i}.png") for i in range(4))
    assert all(len(detections) > 0 for detections in results.values())
    assert len((output / "predictions.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in output.glob("*.png")) == [f"{i}.png" for i in range(4)]
    # Without the bad file, the exit status is 0.
    good = [str(image_folder / f"{i}.png") for i in range(4)]
    assert run(model_files, good, tmp_path / "good") == 0


def test_batches_give_the_detections_of_single_images(model_files, image_folder, tmp_path):
    good = [str(image_folder / f"{i}.png") for i in range(4)]
    run(model_files, good, tmp_path / "single")
    run(model_files, good, tmp_path / "batch", "--batch-size", "3")
    single = read_json(tmp_path / "single" / "predictions.json")
    batch = read_json(tmp_path / "batch" / "predictions.json")
    assert single.keys() == batch.keys()
    for name in single:
        assert len(single[name]) == len(batch[name])
        for a, b in zip(single[name], batch[name]):
            assert a["class_id"] == b["class_id"]
            np.testing.assert_allclose(a["bbox_xyxy"], b["bbox_xyxy"], atol=0.02)
            assert a["score"] == pytest.approx(b["score"], abs=2e-4)


def test_resume_skips_finished_images(model_files, image_folder, tmp_path, monkeypatch):
    good = [str(image_folder / f"{i}.png") for i in range(4)]
    output = tmp_path / "out"
    run(model_files, good, output)
    lines_path = output / "predictions.jsonl"
    lines = lines_path.read_text().splitlines()
    # An interrupted run: two images done, the third cut in the middle of its line.
    lines_path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    predicted = []
    real_call = predict.CheckpointRunner.__call__

    def spy(runner, images):
        predicted.append(len(images))
        return real_call(runner, images)

    monkeypatch.setattr(predict.CheckpointRunner, "__call__", spy)
    assert run(model_files, good, output, "--resume") == 0
    assert sum(predicted) == 2
    assert read_json(output / "predictions.json") == {
        json.loads(line)["file_name"]: json.loads(line)["detections"] for line in lines
    }


@pytest.mark.parametrize("export_format, input_format", [("torchscript", "BGR"), ("onnx", "RGB")])
def test_exported_model_writes_the_same_predictions(
    model_files, image_folder, tmp_path, export_format, input_format
):
    if export_format == "onnx":
        pytest.importorskip("onnxruntime")
    config_file, weights = model_files
    if input_format == "RGB":
        rgb_config = tmp_path / "rgb.yaml"
        text = open(config_file).read()
        assert "  FORMAT: BGR\n" in text
        rgb_config.write_text(text.replace("  FORMAT: BGR\n", "  FORMAT: RGB\n", 1))
        config_file = str(rgb_config)
    exported_dir = tmp_path / "exported"
    argv = ["--config-file", config_file, "--format", export_format, "--output", str(exported_dir)]
    assert export_main(argv + ["MODEL.WEIGHTS", weights]) == 0
    exported_file = next(exported_dir.iterdir())
    good = [str(image_folder / f"{i}.png") for i in range(2)]
    run((config_file, weights), good, tmp_path / "eager")
    argv = ["--exported", str(exported_file), "--input", *good, "--output", str(tmp_path / "ex")]
    assert predict.main(argv + ["--confidence-threshold", "0.0"]) == 0
    eager = read_json(tmp_path / "eager" / "predictions.json")
    exported = read_json(tmp_path / "ex" / "predictions.json")
    assert eager.keys() == exported.keys()
    for name in eager:
        assert len(eager[name]) == len(exported[name]) > 0
        for a, b in zip(eager[name], exported[name]):
            assert a["class_id"] == b["class_id"]
            np.testing.assert_allclose(a["bbox_xyxy"], b["bbox_xyxy"], atol=0.02)
            assert a["score"] == pytest.approx(b["score"], abs=2e-4)
    assert sorted(p.name for p in (tmp_path / "ex").glob("*.png")) == ["0.png", "1.png"]


def test_test_time_augmentation(model_files, image_folder, tmp_path):
    """TEST.AUG.ENABLED: detections of the merged copies, capped at TEST.DETECTIONS_PER_IMAGE."""
    good = [str(image_folder / f"{i}.png") for i in range(2)]
    options = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(48, 64)"]
    options += ["TEST.AUG.MAX_SIZE", "100", "TEST.DETECTIONS_PER_IMAGE", "7"]
    config_file, weights = model_files
    argv = ["--config-file", config_file, "--input", *good, "--output", str(tmp_path / "tta")]
    assert (
        predict.main(argv + ["--confidence-threshold", "0.0", *options, "MODEL.WEIGHTS", weights])
        == 0
    )
    results = read_json(tmp_path / "tta" / "predictions.json")
    assert sorted(results) == sorted(good)
    for detections in results.values():
        assert 0 < len(detections) <= 7
        for detection in detections:
            x0, y0, x1, y1 = detection["bbox_xyxy"]
            assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64


@pytest.fixture
def predict_warnings(caplog, monkeypatch):
    """The messages predict and its listing of image files log, whatever setup_logger did to
    their loggers."""
    names = (predict.__name__, image_files.__name__)
    for name in names:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", False)
        logger.addHandler(caplog.handler)
        caplog.set_level(logging.WARNING, logger=name)
    yield lambda: [r.getMessage() for r in caplog.records if r.name in names]
    for name in names:
        logging.getLogger(name).removeHandler(caplog.handler)


def test_folder_gives_every_format_pillow_reads_and_names_the_other_files(
    model_files, tmp_path, predict_warnings
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    images = ["a.tif", "b.TIFF", "c.webp", "d.gif", "IMG_0001.JPG"]
    for name in images:
        Image.fromarray(pixels).save(folder / name)
    for name in ["notes.txt", "labels.csv", "model.pth"]:
        (folder / name).write_text("not an image")
    (folder / "subfolder.png").mkdir()  # folders inside are not searched

    assert predict.list_images([str(folder)]) == sorted(str(folder / name) for name in images)
    (warning,) = predict_warnings()
    assert warning == (
        f"{folder}: 3 files not taken, their extension is not a format Pillow reads: labels.csv, "
        "model.pth, notes.txt."
    )
    assert run(model_files, [str(folder)], tmp_path / "out") == 0
    assert len(read_json(tmp_path / "out" / "predictions.json")) == 5
    pictures = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert pictures == sorted(
        ["IMG_0001.JPG", "a.tif", "b.TIFF", "c.webp", "d.gif.png", "predictions.json"]
        + ["predictions.jsonl"]
    )


@pytest.mark.parametrize("overrides_first", [True, False])
def test_config_overrides_anywhere_on_the_command_line(
    model_files, image_folder, tmp_path, monkeypatch, overrides_first
):
    config_file, weights = model_files
    monkeypatch.chdir(image_folder)  # IMG_0001.JPG: an upper-case input, not a config key
    Image.open("0.png").save("IMG_0001.JPG")
    overrides = ["MODEL.WEIGHTS", weights, "SEED", "5"]  # without MODEL.WEIGHTS, main stops
    inputs = ["--input", "IMG_0001.JPG", "1.png", "--output", str(tmp_path / "out")]
    argv = ["--config-file", config_file]
    argv += overrides + inputs if overrides_first else inputs + overrides
    args = predict.parse_args(argv)
    assert args.input == ["IMG_0001.JPG", "1.png"] and args.opts == overrides
    assert predict.main(argv + ["--confidence-threshold", "0.0"]) == 0
    results = read_json(tmp_path / "out" / "predictions.json")
    assert sorted(results) == ["1.png", "IMG_0001.JPG"]
    assert all(len(detections) > 0 for detections in results.values())


def test_bf16_scores_are_fp32_scores_to_bfloat16_precision(model_files, image_folder, tmp_path):
    config_file, weights = model_files
    cfg = predict.load_config(config_file, ["MODEL.WEIGHTS", weights], for_inference=True)
    good = [str(image_folder / f"{i}.png") for i in range(2)]
    scores = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / precision
        summary = predict.predict_images(cfg, good, str(output), 0.0, precision=precision)
        assert summary.num_predicted == 2 and summary.seconds_per_image > 0
        results = read_json(output / "predictions.json")
        scores[precision] = {name: [d["score"] for d in results[name]] for name in good}
    for name in good:
        # bfloat16 keeps 8 bits of mantissa: the scores move, by little, and a box near the
        # NMS threshold may come or go, so the highest scores are compared.
        fp32, bf16 = (np.sort(scores[p][name])[::-1][:10] for p in ("fp32", "bf16"))
        assert len(fp32) == len(bf16) == 10
        assert not np.array_equal(fp32, bf16)
        np.testing.assert_allclose(bf16, fp32, atol=0.02)


def test_bf16_needs_a_cpu_that_has_it(model_files, image_folder, tmp_path, capsys):
    good = [str(image_folder / "0.png")]
    if has_bf16():
        assert run(model_files, good, tmp_path / "out", "--precision", "bf16") == 0
        assert "ms per image in the model" in capsys.readouterr().out
        return
    with pytest.raises(SystemExit, match="no native bfloat16.*leave out --precision bf16"):
        run(model_files, good, tmp_path / "out", "--precision", "bf16")
    assert not (tmp_path / "out").exists()


def test_an_exported_file_keeps_its_precision(image_folder, tmp_path):
    argv = ["--exported", str(tmp_path / "model.onnx"), "--input", str(image_folder / "0.png")]
    with pytest.raises(SystemExit, match="precision it was exported in.*--precision bf16"):
        predict.main(argv + ["--output", str(tmp_path / "out"), "--precision", "bf16"])
