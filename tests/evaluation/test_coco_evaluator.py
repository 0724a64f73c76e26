"""Evaluation scores the ground truth that training reads: the sanitised boxes, whatever the test
JSON lacks; a JSON the sanitiser leaves as it is is scored exactly as Detectron2 scores it."""

import contextlib
import copy
import io
import json
import logging

import pytest
import torch
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinanet_fl.config import get_cfg
from retinanet_fl.data import load_dataset_dicts, prepare_dataset_dicts
from retinanet_fl.data.by_path import register_path_datasets
from retinanet_fl.engine.trainer import Trainer
from retinanet_fl.evaluation import ReportingCOCOEvaluator, SanitizedCOCOEvaluator

EVALUATOR_LOGGER = "retinanet_fl.evaluation.coco_evaluator"
SIZE = 64
CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
# (category id, [x, y, w, h], the JSON's area): one box per image.
BOXES = [
    (3, [4.0, 4.0, 20.0, 20.0], 300.0),  # area of its mask, not of its box: kept
    (7, [40.0, 40.0, 40.0, 40.0], 1600.0),  # partly outside: clipped to [40, 40, 24, 24]
    (3, [100.0, 100.0, 10.0, 10.0], 100.0),  # outside the image: dropped
    (7, [10.0, 10.0, -5.0, 5.0], 25.0),  # negative width: dropped
    (7, [8.0, 8.0, 30.0, 30.0], 900.0),
    (3, [30.0, 20.0, 12.0, 16.0], 192.0),
]
# What training reads of BOXES, as COCO ground truth (image id, category id, box, area).
SANITIZED = [
    (1, 3, [4.0, 4.0, 20.0, 20.0], 300.0),
    (2, 7, [40.0, 40.0, 24.0, 24.0], 576.0),
    (5, 7, [8.0, 8.0, 30.0, 30.0], 900.0),
    (6, 3, [30.0, 20.0, 12.0, 16.0], 192.0),
]
# (image id, contiguous class, [x0, y0, x1, y1], score)
PREDICTIONS = [
    (1, 0, [4.0, 4.0, 24.0, 24.0], 0.9),
    (1, 1, [30.0, 30.0, 50.0, 50.0], 0.5),
    (2, 1, [40.0, 40.0, 64.0, 64.0], 0.8),
    (3, 0, [50.0, 50.0, 60.0, 60.0], 0.7),
    (5, 1, [9.0, 8.0, 38.0, 39.0], 0.6),
    (6, 0, [31.0, 20.0, 42.0, 36.0], 0.4),
]


def write_dataset(tmp_path, annotation_fields=("area", "iscrowd"), boxes=BOXES):
    """6 images of 64 px and their COCO JSON, registered by path: (name, the JSON's content)."""
    images = []
    for image_id in range(1, 7):
        Image.new("RGB", (SIZE, SIZE), (90, 90, 90)).save(tmp_path / f"{image_id}.png")
        images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "width": SIZE, "height": SIZE}
        )
    annotations = []
    for image_id, (category_id, box, area) in enumerate(boxes, start=1):
        annotation = {"id": 40 + image_id, "image_id": image_id, "category_id": category_id}
        annotation.update(bbox=box, area=area, iscrowd=0)
        for field in {"area", "iscrowd"} - set(annotation_fields):
            del annotation[field]
        annotations.append(annotation)
    content = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    json_file = tmp_path / "test.json"
    json_file.write_text(json.dumps(content))
    name = f"coco:{json_file}"
    register_path_datasets([name])
    return name, content


def build_evaluator(name, tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return Trainer.build_evaluator(cfg, name)


def evaluate(evaluator):
    evaluator.reset()
    for image_id, label, box, score in PREDICTIONS:
        instances = Instances((SIZE, SIZE))
        instances.pred_boxes = Boxes(torch.tensor([box]))
        instances.scores = torch.tensor([score])
        instances.pred_classes = torch.tensor([label])
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]


def cocoeval_ap(ground_truth):
    """COCO's AP of PREDICTIONS on a COCO-format ground truth dict, by pycocotools alone."""
    results = [
        {
            "image_id": image_id,
            "category_id": CATEGORIES[label]["id"],
            "bbox": BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS),
            "score": score,
        }
        for image_id, label, box, score in PREDICTIONS
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(ground_truth)
        coco.createIndex()
        cocoeval = COCOeval(coco, coco.loadRes(results), "bbox")
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval.stats[0] * 100


def sanitized_ground_truth(content):
    annotations = [
        {"id": k, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": 0}
        for k, (i, c, b, a) in enumerate(SANITIZED, start=1)
    ]
    return dict(content, annotations=annotations)


def test_the_evaluator_scores_the_boxes_training_reads(tmp_path, caplog):
    name, _ = write_dataset(tmp_path)
    with caplog.at_level(logging.INFO, logger=EVALUATOR_LOGGER):
        evaluator = build_evaluator(name, tmp_path)
    assert isinstance(evaluator, SanitizedCOCOEvaluator)
    (line,) = [r.getMessage() for r in caplog.records if r.name == EVALUATOR_LOGGER]
    assert line == (
        f"Evaluating {name} on the ground truth that training reads (the sanitised dataset), not "
        "on test.json as it is: 2 boxes dropped; 1 boxes clipped to the image."
    )

    training = prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=False)
    trained = sorted(
        (record["image_id"], BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYWH_ABS))
        for record in training
        for a in record["annotations"]
    )
    scored = evaluator._coco_api.dataset["annotations"]
    assert sorted((a["image_id"], a["bbox"]) for a in scored) == trained
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in scored] == [
        (i, c, b, a) for i, c, b, a in SANITIZED
    ]  # the dataset's own category ids; the JSON's area unless clipped


def test_ap_is_cocoevals_on_the_sanitised_ground_truth(tmp_path):
    name, content = write_dataset(tmp_path)
    ap = evaluate(build_evaluator(name, tmp_path))["AP"]
    assert ap == pytest.approx(cocoeval_ap(sanitized_ground_truth(content)), abs=1e-9)
    # Scored on the JSON as it is, the dropped boxes would count as missed objects.
    assert cocoeval_ap(content) < ap - 1


def test_a_json_without_iscrowd_and_area_is_evaluated(tmp_path, caplog):
    boxes = [BOXES[0], BOXES[4], BOXES[5]] * 2  # none that the sanitiser changes
    name, _ = write_dataset(tmp_path, annotation_fields=(), boxes=boxes)
    with caplog.at_level(logging.INFO, logger=EVALUATOR_LOGGER):
        evaluator = build_evaluator(name, tmp_path)
    assert isinstance(evaluator, SanitizedCOCOEvaluator)
    assert any(
        "6 annotations without 'iscrowd'; 6 annotations without 'area'" in r.getMessage()
        for r in caplog.records
    )
    results = evaluate(evaluator)
    scored = evaluator._coco_api.dataset["annotations"]
    assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in scored)
    assert 0 < results["AP"] <= 100 and 0 < results["AP50"] <= 100


def test_a_complete_json_the_sanitiser_leaves_alone_is_scored_as_detectron2_does(tmp_path, caplog):
    complete = [BOXES[0], (7, [40.0, 40.0, 20.0, 20.0], 400.0), *BOXES[4:] * 2]
    name, content = write_dataset(tmp_path, boxes=complete)
    with caplog.at_level(logging.INFO, logger=EVALUATOR_LOGGER):
        evaluator = build_evaluator(name, tmp_path)
    # Detectron2's own __init__ read the JSON: the ground truth is the file as it is.
    assert type(evaluator) is ReportingCOCOEvaluator
    assert evaluator._coco_api.dataset == content
    assert any(
        "on " + str(tmp_path / "test.json") + " as it is" in r.getMessage() for r in caplog.records
    )
    assert evaluate(evaluator)["AP"] == pytest.approx(cocoeval_ap(content), abs=1e-9)
