"""
The evaluation report on hand-built detections: per-class AP equal to COCOEvaluator's, the
confusion matrix and per-image errors equal to a count by construction, TIDE equal to tidecv
reading the same data itself, a page whose files all exist, and the odd cases (no detections,
a class without ground truth, names with HTML characters).
"""

import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image
from pycocotools.coco import COCO

from retinanet_fl.data.by_path import register_path_datasets
from retinanet_fl.evaluation import ReportingCOCOEvaluator, score_thresholds_from_report
from retinanet_fl.evaluation.analysis import match_detections, tide_errors

SIZE = 64
# Non-contiguous ids; "<b>&" checks that names are escaped in the page.
CATEGORIES = {3: "cat", 7: "<b>&", 12: "kiwi"}
A, B, C = CATEGORIES
GT = {  # image id -> (category id, XYWH box)
    1: [(A, [5, 5, 20, 20]), (B, [35, 5, 20, 20]), (C, [5, 35, 20, 20])],
    2: [(A, [10, 10, 30, 30])],
    3: [],
}
# (image id, category id, XYWH box, score, what it is)
DETECTIONS = [
    (1, A, [5, 5, 20, 20], 0.9, "correct"),
    (1, A, [35, 5, 20, 20], 0.8, "wrong class (on B)"),
    (1, B, [35, 35, 20, 20], 0.7, "background"),
    (2, A, [10, 10, 30, 30], 0.95, "correct"),
    (2, A, [11, 10, 30, 30], 0.6, "duplicate: background"),
    (3, C, [20, 20, 10, 10], 0.5, "background"),
]


def _write_dataset(folder, gt) -> str:
    """A coco: dataset of the images and objects of ``gt``; returns its name."""
    images, annotations = [], []
    for image_id, objects in gt.items():
        file_name = f"{image_id}.png"
        Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": SIZE, "height": SIZE})
        for category_id, box in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": i, "name": name} for i, name in CATEGORIES.items()]
    json_file = folder / "val.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    name = f"coco:{json_file}"
    register_path_datasets([name])
    return name


@pytest.fixture
def dataset(tmp_path):
    return _write_dataset(tmp_path, GT)


def _evaluate(dataset, tmp_path, detections=DETECTIONS):
    report_dir = str(tmp_path / "report")
    evaluator = ReportingCOCOEvaluator(
        dataset, tasks=("bbox",), output_dir=str(tmp_path / "inference"), report_dir=report_dir
    )
    contiguous = {category_id: k for k, category_id in enumerate(sorted(CATEGORIES))}
    evaluator.reset()
    for image_id in GT:
        mine = [d for d in detections if d[0] == image_id]
        boxes = torch.tensor([d[2] for d in mine], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        instances = Instances(
            (SIZE, SIZE),
            pred_boxes=Boxes(boxes),
            scores=torch.tensor([d[3] for d in mine], dtype=torch.float32),
            pred_classes=torch.tensor([contiguous[d[1]] for d in mine], dtype=torch.int64),
        )
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    results = evaluator.evaluate()
    with open(os.path.join(report_dir, "report.json")) as f:
        return results["bbox"], json.load(f), report_dir


def test_per_class_ap_equals_coco_evaluators(dataset, tmp_path):
    results, report, _ = _evaluate(dataset, tmp_path)
    for entry in report["classes"]:
        assert entry["AP"] == pytest.approx(results[f"AP-{entry['name']}"], abs=1e-9)
    assert [entry["category_id"] for entry in report["classes"]] == sorted(CATEGORIES)
    assert [entry["num_gt"] for entry in report["classes"]] == [2, 1, 1]
    cat = report["classes"][0]
    # Both cats found at IoU 1 with the best scores: F1 = 1 at the lower one's score.
    assert cat["AP50"] == pytest.approx(100.0) and cat["f1_threshold"] == pytest.approx(0.9)
    assert cat["f1_precision"] == 1.0 and cat["f1_recall"] == 1.0


def test_confusion_matrix_and_image_errors_equal_the_construction(dataset):
    from detectron2.data import MetadataCatalog

    coco_gt = COCO(MetadataCatalog.get(dataset).json_file)
    detections = [
        {"image_id": i, "category_id": c, "bbox": box, "score": score}
        for i, c, box, score, _ in DETECTIONS
    ]
    matrix, images = match_detections(coco_gt, detections, dict.fromkeys(CATEGORIES, 0.0))
    # Rows: ground truth cat, <b>&, kiwi, background; columns: the predictions, then missed.
    assert matrix.tolist() == [
        [2, 0, 0, 0],  # both cats found as cats
        [1, 0, 0, 0],  # the <b>& taken for a cat
        [0, 0, 0, 1],  # the kiwi missed
        [1, 1, 1, 0],  # the cat duplicate, the <b>& and the kiwi on background
    ]
    by_id = {errors.image_id: errors for errors in images}
    assert (by_id[1].correct, by_id[1].wrong_class, by_id[1].missed, by_id[1].background) == (
        1, 1, 1, 1,
    )  # fmt: skip
    assert by_id[2].num_errors == 1 and by_id[3].num_errors == 1
    # Thresholds drop detections: above 0.85, only the two correct ones and the confused one.
    matrix, _ = match_detections(coco_gt, detections, dict.fromkeys(CATEGORIES, 0.75))
    assert matrix[3].sum() == 0 and matrix[0, 0] == 2 and matrix[1, 0] == 1


def test_tide_equals_tidecv_reading_the_files_itself(dataset, tmp_path):
    datasets = pytest.importorskip("tidecv.datasets")
    from detectron2.data import MetadataCatalog
    from tidecv import TIDE

    json_file = MetadataCatalog.get(dataset).json_file
    detections = [
        {"image_id": i, "category_id": c, "bbox": box, "score": score}
        for i, c, box, score, _ in DETECTIONS
    ]
    ours = tide_errors(COCO(json_file), detections)
    # tidecv's own COCO reader wants a segmentation: the box as a polygon.
    with open(json_file) as f:
        content = json.load(f)
    for annotation in content["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (tmp_path / "gt_with_masks.json").write_text(json.dumps(content))
    (tmp_path / "detections.json").write_text(json.dumps(detections))
    tide = TIDE()
    tide.evaluate(
        datasets.COCO(str(tmp_path / "gt_with_masks.json")),
        datasets.COCOResult(str(tmp_path / "detections.json")),
        mode=TIDE.BOX,
        name="reference",
    )
    reference = tide.get_main_errors()["reference"]
    assert ours == pytest.approx(reference)
    assert sum(ours.values()) > 0


def test_page_references_only_files_that_exist(dataset, tmp_path):
    _, report, report_dir = _evaluate(dataset, tmp_path)
    with open(os.path.join(report_dir, "index.html")) as f:
        page = f.read()
    sources = re.findall(r'src="([^"]+)"', page)
    assert "precision_recall.png" in sources and "confusion_matrix.png" in sources
    assert any(source.startswith("gallery/worst_") for source in sources)
    for source in sources:
        path = os.path.join(report_dir, source)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, source
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page
    assert report["worst_images"][0]["image_id"] == 1  # three errors


def test_no_detections(dataset, tmp_path):
    _, report, report_dir = _evaluate(dataset, tmp_path, detections=[])
    assert [entry["AP"] for entry in report["classes"]] == [0.0, 0.0, 0.0]
    assert report["tide"] is None
    assert report["confusion_matrix"]["counts"][0][-1] == 2  # both cats missed
    assert os.path.getsize(os.path.join(report_dir, "index.html")) > 0


def test_a_class_without_ground_truth(tmp_path):
    without_kiwi = {i: [o for o in objects if o[0] != C] for i, objects in GT.items()}
    dataset = _write_dataset(tmp_path, without_kiwi)
    _, report, report_dir = _evaluate(dataset, tmp_path, detections=DETECTIONS)
    kiwi = report["classes"][2]
    assert kiwi["num_gt"] == 0 and kiwi["AP"] is None  # undefined, not 0
    with open(os.path.join(report_dir, "index.html")) as f:
        assert "No ground truth in this set for: kiwi" in f.read()


def test_predict_thresholds_come_from_the_report(dataset, tmp_path):
    _, report, report_dir = _evaluate(dataset, tmp_path)
    thresholds = score_thresholds_from_report(report_dir)
    assert thresholds["cat"] == pytest.approx(0.9)
    with pytest.raises(FileNotFoundError, match="No evaluation report at"):
        score_thresholds_from_report(str(tmp_path / "nowhere"))
