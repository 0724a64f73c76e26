"""What --quantize int8 says about bad calibration data, a missing runtime and the CPU, before
anything is exported; nothing is left behind."""

import json
import sys

import pytest

from retinanet_fl.export import cpu
from retinanet_fl.export.__main__ import main as export_main

from ..test_train_net import TINY_OPTS


@pytest.fixture(scope="module")
def checkpoint(small_cfg, tmp_path_factory):
    """A checkpoint of the small model carrying the classes of the own_coco dataset."""
    import torch
    from detectron2.modeling import build_model

    from ..conftest import OWN_CATEGORIES

    root = tmp_path_factory.mktemp("quantize_errors")
    cfg = small_cfg("MODEL.RETINANET.NUM_CLASSES", str(len(OWN_CATEGORIES)))
    classes = {
        "thing_classes": list(OWN_CATEGORIES.values()),
        "thing_dataset_id_to_contiguous_id": {i: k for k, i in enumerate(OWN_CATEGORIES)},
        "input_format": "BGR",
    }
    torch.save(
        {"model": build_model(cfg).state_dict(), "class_metadata": classes}, root / "model.pth"
    )
    (root / "config.yaml").write_text(cfg.dump())
    return str(root / "config.yaml"), str(root / "model.pth")


def _quantize(checkpoint, output, *opts, images="4"):
    config, weights = checkpoint
    argv = ["--config-file", config, "--format", "onnx", "--quantize", "int8"]
    argv += ["--calibration-images", images, "--output", str(output)]
    return export_main(argv + [*TINY_OPTS, "MODEL.WEIGHTS", weights, *opts])


def test_no_training_data(checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"calibrates on images of DATASETS.TRAIN, which is empty"):
        _quantize(checkpoint, tmp_path / "out", "DATASETS.TRAIN", "()")
    assert not (tmp_path / "out").exists()


def test_missing_training_data(checkpoint, tmp_path):
    missing = f"('coco:{tmp_path}/gone/train.json:{tmp_path}/gone',)"
    with pytest.raises(FileNotFoundError, match=r"gone/train.json"):
        _quantize(checkpoint, tmp_path / "out", "DATASETS.TRAIN", missing)
    assert not (tmp_path / "out").exists()


def test_training_data_of_other_classes(checkpoint, own_coco, tmp_path):
    _, json_file, image_root = own_coco["train"].split(":")
    with open(json_file) as f:
        content = json.load(f)
    content["categories"][0]["name"] = "cherry"
    renamed = tmp_path / "train.json"
    renamed.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"'cherry'.*wrong class names"):
        _quantize(
            checkpoint, tmp_path / "out", "DATASETS.TRAIN", f"('coco:{renamed}:{image_root}',)"
        )
    assert not (tmp_path / "out").exists()


def test_zero_calibration_images(checkpoint, own_coco, tmp_path):
    with pytest.raises(ValueError, match="--calibration-images must be at least 1, got 0"):
        _quantize(
            checkpoint, tmp_path / "out", "DATASETS.TRAIN", f"('{own_coco['train']}',)", images="0"
        )


def test_unreadable_calibration_images(checkpoint, own_coco, tmp_path):
    _, json_file, _ = own_coco["train"].split(":")
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(json_file) as f:
        for image in json.load(f)["images"]:
            (broken / image["file_name"]).write_bytes(b"not an image")
    data = f"('coco:{json_file}:{broken}',)"
    with pytest.raises(ValueError, match="None of the 4 calibration images of DATASETS.TRAIN"):
        _quantize(checkpoint, tmp_path / "out", "DATASETS.TRAIN", data)
    assert not (tmp_path / "out").exists()


def test_runtime_not_installed(checkpoint, own_coco, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    from retinanet_fl.export.quantize import quantize_onnx_int8

    with pytest.raises(ImportError, match=r"needs 'onnxruntime', which is not installed: pip"):
        quantize_onnx_int8("model.onnx", str(tmp_path / "int8.onnx"), [], {})


def test_quantize_is_onnx_only(checkpoint, tmp_path, capsys):
    config, weights = checkpoint
    argv = ["--config-file", config, "--format", "pt2", "--quantize", "int8"]
    with pytest.raises(SystemExit):
        export_main(argv + ["--output", str(tmp_path), "MODEL.WEIGHTS", weights])
    assert "--quantize int8 makes an ONNX file: use --format onnx" in capsys.readouterr().err


def test_cpu_without_vnni_warns(logged):
    logged(cpu.__name__)
    assert cpu.warn_int8_speed(frozenset({"avx2", "fma"}))
    assert "This CPU has no VNNI" in logged(cpu.__name__)
    assert not cpu.warn_int8_speed(frozenset({"avx2", "avx512_vnni"}))
    assert not cpu.warn_int8_speed(frozenset({"avx2", "avx_vnni"}))


def test_bf16_refused_without_native_bf16():
    with pytest.raises(ValueError, match="This CPU has no native bfloat16"):
        cpu.check_precision("bf16", flags=frozenset({"avx2", "avx512f"}))
    cpu.check_precision("bf16", flags=frozenset({"avx512_bf16"}))
    cpu.check_precision("bf16", flags=frozenset({"amx_bf16", "amx_tile"}))
    cpu.check_precision("fp32", flags=frozenset())
    with pytest.raises(ValueError, match="Unknown precision 'fp16'"):
        cpu.check_precision("fp16")
