"""The demo's threshold choice and pictures (retinanet_fl.visualize, demo.report)."""

import json
import uuid

import cv2
import pytest
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from retinanet_fl import demo
from retinanet_fl.config import load_config
from retinanet_fl.data.synthetic import register_synthetic_coco
from retinanet_fl.engine import AtomicCheckpointer
from retinanet_fl.model_zoo import get_config_file
from retinanet_fl.visualize import (
    TITLE_HEIGHT,
    f1_optimal_threshold,
)


def _record(image_id, boxes):
    return {
        "image_id": image_id,
        "annotations": [
            {"bbox": list(b), "bbox_mode": BoxMode.XYWH_ABS, "category_id": c, "iscrowd": 0}
            for c, b in boxes
        ],
    }


def _det(image_id, category, box, score):
    return {"image_id": image_id, "category_id": category, "bbox": list(box), "score": score}


def test_f1_optimal_threshold():
    records = [
        _record(1, [(0, (0, 0, 10, 10)), (1, (20, 20, 10, 10))]),
        _record(2, [(0, (5, 5, 10, 10))]),
    ]
    detections = [
        _det(1, 1, (0, 0, 10, 10), 0.9),  # true positive (class 0 in the dataset's ids: 1)
        _det(1, 1, (0, 0, 10, 10), 0.8),  # duplicate of a matched box: false positive
        _det(2, 1, (5, 5, 10, 10), 0.7),  # true positive
        _det(1, 2, (21, 21, 10, 10), 0.3),  # true positive (IoU .68), late
        _det(2, 2, (5, 5, 10, 10), 0.2),  # wrong class: false positive
        _det(9, 1, (0, 0, 5, 5), 0.99),  # an image not in the set: ignored
    ]
    choice = f1_optimal_threshold(records, detections, {1: 0, 2: 1})
    # Kept at 0.9 / 0.8 / 0.7 / 0.3 / 0.2: TP 1,1,2,3,3 → F1 .5, .4, .67, .86, .75.
    assert choice.threshold == 0.3 and choice.num_detections == 4 and choice.num_gt == 3
    assert choice.precision == pytest.approx(0.75) and choice.recall == pytest.approx(1.0)
    assert choice.f1 == pytest.approx(2 * 0.75 / 1.75)
    # A stricter IoU turns the late detection into a false positive.
    strict = f1_optimal_threshold(records, detections, {1: 0, 2: 1}, iou_threshold=0.9)
    assert strict.threshold == 0.7 and strict.recall == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="No ground-truth boxes"):
        f1_optimal_threshold([_record(1, [])], detections, {1: 0, 2: 1})


def test_demo_report_draws_ground_truth_beside_detections(tmp_path, capsys):
    prefix = f"test_demo_{uuid.uuid4().hex[:8]}"
    names = register_synthetic_coco(
        str(tmp_path / "ds"),
        prefix=prefix,
        num_train=1,
        num_val=2,
        image_size=96,
        seed=2,
        objects_per_image=(2, 2),
    )
    cfg = load_config(
        get_config_file(demo.DEMO_CONFIG_NAME),
        ["DATASETS.TEST", f"('{names['val']}',)", "INPUT.MIN_SIZE_TEST", 96, "MODEL.DEVICE", "cpu"],
    )
    run = tmp_path / "run"
    run.mkdir()
    AtomicCheckpointer(build_model(cfg), save_dir=str(run)).save("model_final")
    # The evaluator's results: every ground-truth box found, with a score of .6.
    records = DatasetCatalog.get(names["val"])
    detections = [
        _det(r["image_id"], a["category_id"] + 1, a["bbox"], 0.6)
        for r in records
        for a in r["annotations"]
    ]
    (run / "inference").mkdir()
    (run / "inference" / "coco_instances_results.json").write_text(json.dumps(detections))

    threshold = demo.report(cfg, str(run), num_pictures=2)
    printed = capsys.readouterr().out
    assert threshold == 0.6 and "score threshold 0.600: the F1-optimal one" in printed
    assert "precision 1.000, recall 1.000" in printed
    pictures = sorted((run / "pictures").iterdir())
    assert [p.name for p in pictures] == ["000001.jpg", "000002.jpg"]
    picture = cv2.imread(str(pictures[0]))
    # A title band over two 3x panels (288 px each) and the gap between them.
    assert picture.shape[0] == TITLE_HEIGHT + 288 and picture.shape[1] == 2 * 288 + 12
    # The left panel is the ground truth: boxes drawn, so it differs from the plain upscaled image.
    image = cv2.imread(records[0]["file_name"])
    plain = cv2.resize(image, (288, 288), interpolation=cv2.INTER_LINEAR)
    assert abs(picture[TITLE_HEIGHT:, :288].astype(int) - plain.astype(int)).mean() > 1.0
