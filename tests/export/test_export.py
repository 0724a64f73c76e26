"""python -m retinanet_fl.export: ONNX, .pt2 and legacy TorchScript files detecting what the eager
model does, exported without deprecation warnings from our code."""

import json
import os
import warnings

import pytest
import torch
from detectron2.modeling import build_model

import retinanet_fl
from retinanet_fl.export import ONNX_OPSET, ExportableDetector, ExportedDetector, export_pt2
from retinanet_fl.export.__main__ import main as export_main
from retinanet_fl.export.files import write_atomically

from .conftest import random_image, unsaturate_head

# (height, width): sizes that need padding to the backbone's 32 px, portrait and landscape.
SIZES = [(64, 64), (80, 100), (128, 96)]
GRAY = torch.full((3, 64, 80), 128, dtype=torch.uint8)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, small_cfg):
    """An R-18 model (random weights, rescaled head), its config file and checkpoint."""
    root = tmp_path_factory.mktemp("export_model")
    cfg = small_cfg()
    torch.manual_seed(0)
    model = unsaturate_head(build_model(cfg).eval(), random_image(96, 128))
    torch.save({"model": model.state_dict()}, root / "model.pth")
    (root / "config.yaml").write_text(cfg.dump())
    return model, str(root / "config.yaml"), str(root / "model.pth")


FILE_NAMES = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.ts"}
PACKAGE_DIR = os.path.dirname(retinanet_fl.__file__)


@pytest.fixture(scope="module", params=sorted(FILE_NAMES))
def exported(request, small_model, tmp_path_factory):
    """The small model exported by the command line and loaded, with the warnings of both."""
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    _, config_file, weights = small_model
    out = tmp_path_factory.mktemp(request.param)
    argv = ["--config-file", config_file, "--format", request.param, "--output", str(out)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_main(argv + ["MODEL.WEIGHTS", weights]) == 0
        detector = ExportedDetector(str(out / FILE_NAMES[request.param]))
        detector(GRAY)
    detector.caught_warnings = caught
    return detector


def _assert_same_detections(actual, expected):
    boxes, scores, classes = actual
    expected_boxes, expected_scores, expected_classes = expected
    assert boxes.shape == expected_boxes.shape
    assert torch.equal(classes, expected_classes)
    torch.testing.assert_close(boxes, expected_boxes, rtol=0, atol=1e-2)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", SIZES)
def test_same_detections_as_eager_at_several_sizes(exported, small_model, size):
    image = random_image(*size, seed=size[0] + size[1]).to(torch.uint8)
    with torch.no_grad():
        expected = ExportableDetector(small_model[0])(image)
    assert len(expected[1]) > 0
    _assert_same_detections(exported(image), expected)


def test_no_detection_gives_empty_outputs(exported, small_model):
    with torch.no_grad():
        assert len(ExportableDetector(small_model[0])(GRAY)[1]) == 0
    boxes, scores, classes = exported(GRAY)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)


def test_metadata_stored_in_file(exported):
    assert exported.metadata["input_format"] == "BGR"
    assert exported.metadata["num_classes"] == 3
    assert exported.metadata["min_size_test"] == 800


def test_intra_op_threads_checked(exported):
    with pytest.raises(ValueError, match="intra_op_threads must be at least 1, got 0"):
        ExportedDetector(exported.path, intra_op_threads=0)
    # A TorchScript file runs on torch's threads, and takes the setting without complaint.
    detector = ExportedDetector(exported.path, intra_op_threads=1)
    if exported.path.endswith(".onnx"):
        assert detector._session.get_session_options().intra_op_num_threads == 1


def test_our_calls_emit_no_deprecation_warning(exported):
    """Export, load and run call no deprecated API of torch (or anything else) from our code; a
    deprecation inside torch or torchvision is theirs, not ours."""
    ours = [
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
        for w in exported.caught_warnings
        if issubclass(w.category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning))
        and os.path.abspath(w.filename).startswith(PACKAGE_DIR)
    ]
    assert ours == []


def test_exported_without_detections_still_detects(small_model, tmp_path):
    """Nothing in the graph is specialised to the sample image, not even its detection count."""
    model = small_model[0]
    path = export_pt2(ExportableDetector(model), GRAY, str(tmp_path / "m.pt2"), {"x": 1})
    image = random_image(96, 128, seed=5).to(torch.uint8)
    with torch.no_grad():
        expected = ExportableDetector(model)(image)
        actual = torch.export.load(path).module()(image)
    assert len(expected[1]) > 0
    _assert_same_detections(actual, expected)
    assert os.listdir(tmp_path) == ["m.pt2"]  # no temporary file left


def test_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("previous")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(str(path), fail)
    assert path.read_text() == "previous"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_onnx_opset(exported):
    if not exported.path.endswith(".onnx"):
        pytest.skip("ONNX only")
    import onnx

    proto = onnx.load(exported.path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    assert (
        json.loads({p.key: p.value for p in proto.metadata_props}["retinanet_fl.json"])[
            "num_classes"
        ]
        == 3
    )


def test_rejects_other_files(tmp_path):
    with pytest.raises(ValueError, match="not an exported model: expected a file ending in"):
        ExportedDetector(str(tmp_path / "model.pth"))


def test_sample_image_read_in_input_format_and_resized(small_cfg, tmp_path):
    import numpy as np
    from PIL import Image

    from retinanet_fl.export import sample_input

    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # red in RGB
    Image.fromarray(pixels).save(tmp_path / "red.png")
    cfg = small_cfg("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100")
    sample = sample_input(cfg, str(tmp_path / "red.png"))
    assert sample.dtype == torch.uint8 and sample.shape == (3, 50, 100)
    assert sample[2].min() == 255 and sample[0].max() == 0  # BGR: red is the last channel


def test_bf16_pt2(small_model, tmp_path, monkeypatch, logged):
    """Exported anywhere (with a warning where the CPU lacks bf16), refused where it lacks it,
    and close to fp32 where it has it (emulated here)."""
    from detectron2.structures import Boxes, pairwise_iou

    from retinanet_fl.export import cpu

    model, config_file, weights = small_model
    logged("retinanet_fl.export.api")
    argv = ["--config-file", config_file, "--format", "pt2", "--precision", "bf16"]
    assert export_main(argv + ["--output", str(tmp_path), "MODEL.WEIGHTS", weights]) == 0
    path = str(tmp_path / "model.bf16.pt2")
    if not cpu.has_bf16():
        assert "This CPU has no native bfloat16" in logged("retinanet_fl.export.api")
        with pytest.raises(ValueError, match="This CPU has no native bfloat16"):
            ExportedDetector(path)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    detector = ExportedDetector(path)
    assert detector.metadata["precision"] == "bf16"
    image = random_image(96, 128, seed=9).to(torch.uint8)
    boxes, scores, classes = detector(image)
    with torch.no_grad():
        expected_boxes, expected_scores, expected_classes = ExportableDetector(model)(image)
    assert boxes.dtype == scores.dtype == torch.float32 and len(scores) > 0
    top = slice(0, 5)
    assert torch.equal(classes[top], expected_classes[top])
    assert pairwise_iou(Boxes(boxes[top]), Boxes(expected_boxes[top])).diag().min() > 0.9
    torch.testing.assert_close(scores[top], expected_scores[top], rtol=0, atol=2e-2)


def test_bf16_is_for_pt2_only(small_model, tmp_path, capsys):
    _, config_file, weights = small_model
    argv = ["--config-file", config_file, "--format", "onnx", "--precision", "bf16"]
    with pytest.raises(SystemExit):
        export_main(argv + ["--output", str(tmp_path), "MODEL.WEIGHTS", weights])
    assert "--precision bf16 runs in PyTorch: use --format pt2, not onnx" in capsys.readouterr().err
