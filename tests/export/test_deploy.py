"""
Deploying a briefly trained model from the command line: export int8 ONNX and its fp32 file in
one command (calibrated on the user's dataset given by path), evaluate the files as --eval-only
evaluates the checkpoint, predict with the int8 file.
"""

import json

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou

from retinanet_fl.config import load_config
from retinanet_fl.evaluate_exported import evaluate_exported
from retinanet_fl.evaluate_exported import main as evaluate_main
from retinanet_fl.export import ExportedDetector
from retinanet_fl.export.calibration import calibration_images, calibration_records
from retinanet_fl.predict import main as predict_main
from retinanet_fl.train_net import main as train_net_main

from ..conftest import OWN_CALIBRATION_IMAGES
from ..test_train_net import TINY_OPTS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _evaluate_exported(path, trained_model, output_dir):
    config, _, data = trained_model
    argv = ["--exported", str(path), "--config-file", config, "--output", str(output_dir)]
    return evaluate_main(argv + [*TINY_OPTS, *data])


def _eval_only(trained_model, output_dir):
    """train_net.py --eval-only of the checkpoint, in this process."""
    from detectron2.engine import default_argument_parser

    config, weights, data = trained_model
    args = default_argument_parser().parse_args(
        ["--config-file", config, "--eval-only", *TINY_OPTS, "MODEL.WEIGHTS", weights]
        + [*data, "OUTPUT_DIR", str(output_dir)]
    )
    return train_net_main(args)


def _results(output_dir):
    with open(output_dir / "inference" / "coco_instances_results.json") as f:
        return json.load(f)


def test_fp32_onnx_scores_exactly_what_eval_only_scores(own_deployed, trained_model, tmp_path):
    eager = _eval_only(trained_model, tmp_path / "eager")
    config, _, data = trained_model
    opts = [*TINY_OPTS, *data]
    exported = evaluate_exported(str(own_deployed[0]), config, opts, str(tmp_path / "onnx"))
    assert eager["bbox"]["AP50"] > 0
    # The same AP, every digit (nan: no object of that size).
    assert exported["bbox"] == pytest.approx(eager["bbox"], rel=0, abs=0, nan_ok=True)
    mine, theirs = _results(tmp_path / "onnx"), _results(tmp_path / "eager")
    assert [r["category_id"] for r in mine] == [r["category_id"] for r in theirs]
    for detection, expected in zip(mine, theirs):
        assert detection["bbox"] == pytest.approx(expected["bbox"], abs=1e-2)
        assert detection["score"] == pytest.approx(expected["score"], abs=1e-4)


def _detections(path, images):
    detector = ExportedDetector(str(path))
    return [detector(image) for image in images]


def test_int8_detections_agree_with_fp32(own_deployed, trained_model):
    """Each fp32 detection scoring above 0.5 has an int8 one of its class with IoU >= 0.9, for at
    least 90 % of them."""
    config, weights, data = trained_model
    cfg = load_config(config, [*TINY_OPTS, "MODEL.WEIGHTS", weights, *data])
    images = list(calibration_images(calibration_records(cfg, 16, None), cfg))
    matched = total = 0
    for (boxes, scores, classes), (boxes8, _, classes8) in zip(
        _detections(own_deployed[0], images), _detections(own_deployed[1], images)
    ):
        confident = scores > 0.5
        ious = pairwise_iou(Boxes(boxes[confident]), Boxes(boxes8))
        same_class = classes[confident][:, None] == classes8[None, :]
        best = (ious * same_class).max(dim=1).values if len(boxes8) else torch.zeros(len(ious))
        matched += int((best >= 0.9).sum())
        total += int(confident.sum())
    assert total >= 5, "too few confident fp32 detections to compare"
    assert matched >= 0.9 * total


def test_int8_quantizes_only_what_convolutions_read_or_write(own_deployed):
    """Each int8 tensor is a convolution's output or reaches a convolution: the anchors, the box
    decoding and the NMS stay fp32."""
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(own_deployed[1])).graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_conv(node) -> bool:
        seen, pending = set(), [node]
        while pending:
            node = pending.pop()
            if node.op_type == "Conv":
                return True
            if node.name not in seen:
                seen.add(node.name)
                pending += [c for output in node.output for c in consumers.get(output, [])]
        return False

    quantized = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert len(quantized) > 20
    for node in quantized:
        producer = producers.get(node.input[0])
        if producer is not None and producer.op_type != "Conv":
            assert reaches_conv(node), f"{producer.op_type} {producer.name}'s output is int8"


def test_int8_file_carries_classes_and_calibration(own_deployed):
    detector = ExportedDetector(str(own_deployed[1]))
    assert detector.metadata["precision"] == "int8"
    assert detector.metadata["calibration_images"] == OWN_CALIBRATION_IMAGES
    assert detector.metadata["class_names"] == ["apple", "kiwi", "plum", "fig", "lime", "pear"]
    # One command wrote both files, and no temporary file or folder is left beside them.
    written = sorted(p.name for p in own_deployed[1].parent.iterdir())
    assert written == ["model.int8.onnx", "model.onnx"]


def test_int8_evaluates_and_predicts(own_deployed, trained_model, own_coco, tmp_path):
    assert _evaluate_exported(own_deployed[1], trained_model, tmp_path / "eval") == 0
    assert _results(tmp_path / "eval")
    image_folder = own_coco["val"].split(":")[2]
    argv = ["--exported", str(own_deployed[1]), "--input", image_folder, "--output", str(tmp_path)]
    assert predict_main(argv + ["--confidence-threshold", "0.1"]) == 0
    with open(tmp_path / "predictions.json") as f:
        records = json.load(f)
    names = {d["class_name"] for record in records for d in record["detections"]}
    assert names and names <= {"apple", "kiwi", "plum", "fig", "lime", "pear"}
