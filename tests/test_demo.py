"""The demo end to end on the tiny synthetic dataset: training, evaluation, named pictures."""

import json

import cv2

from retinanet_fl import demo
from retinanet_fl.data.synthetic import SYNTHETIC_CLASSES

from .test_train_net import TINY_OPTS


def test_demo_trains_evaluates_and_draws_named_detections(
    datasets_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DETECTRON2_DATASETS", datasets_root)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    output_dir = tmp_path / "demo"
    demo.main(["--output-dir", str(output_dir), "--score-threshold", "0.01", *TINY_OPTS])
    printed = capsys.readouterr().out
    assert "[demo] pictures of detections scoring >= 0.01" in printed
    pictures = sorted((output_dir / "pictures").glob("*.jpg"))
    assert len(pictures) == 4  # the tiny validation set
    assert cv2.imread(str(pictures[0])).shape[:2] == (3 * 64, 3 * 64)  # upscaled 3x
    with open(output_dir / "pictures" / "predictions.json") as f:
        detections = [d for record in json.load(f) for d in record["detections"]]
    assert detections and {d["class_name"] for d in detections} <= set(SYNTHETIC_CLASSES)
    assert (output_dir / "inference" / "coco_instances_results.json").exists()
