"""A user's own COCO-format dataset from the command line, with no Python registration: train,
evaluate, predict and export keep the dataset's category ids and names; a VOC folder without
<pose>, <truncated> or <difficult> trains and is evaluated."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from .conftest import OWN_CATEGORIES, own_data_opts
from .test_train_net import CONFIG, TINY_OPTS, parse_box_ap, run_train_net


def run_module(module, *args):
    """Run ``python -m module args`` in a fresh process; return its combined output."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout + completed.stderr


def image_folder(own_coco):
    return own_coco["val"].split(":")[2]


def assert_named_with_own_ids(detections):
    assert detections, "the model detected nothing to check"
    for detection in detections:
        assert OWN_CATEGORIES[detection["category_id"]] == detection["class_name"]
        assert list(OWN_CATEGORIES)[detection["class_id"]] == detection["category_id"]


def test_training_reads_classes_from_the_json(own_trained):
    output_dir, log = own_trained
    with open(output_dir / "config.yaml") as f:
        assert "NUM_CLASSES: 6" in f.read()  # 0 in the config: taken from the JSON
    checkpoint = torch.load(output_dir / "model_final.pth", weights_only=True)
    assert checkpoint["class_metadata"] == {
        "thing_classes": list(OWN_CATEGORIES.values()),
        "thing_dataset_id_to_contiguous_id": {i: k for k, i in enumerate(OWN_CATEGORIES)},
        "input_format": "BGR",
    }
    # Nothing a user cannot act on: torch's deprecation and meshgrid warnings are gone.
    assert "torch.jit.script" not in log and "meshgrid" not in log
    assert "Category ids in annotations are not in" not in log


def test_eval_only_reports_the_datasets_category_ids(own_trained, own_coco, tmp_path):
    output_dir, _ = own_trained
    weights = str(output_dir / "model_final.pth")
    log = run_train_net(
        str(tmp_path),
        tmp_path,
        "--eval-only",
        opts=[*own_data_opts(own_coco), "MODEL.WEIGHTS", weights],
    )
    assert len(parse_box_ap(log)) == 6
    with open(tmp_path / "inference" / "coco_instances_results.json") as f:
        results = json.load(f)
    assert results and {r["category_id"] for r in results} <= set(OWN_CATEGORIES)


def test_eval_only_needs_no_training_data(own_trained, own_coco, tmp_path):
    output_dir, _ = own_trained
    opts = [
        *("DATASETS.TRAIN", f"('coco:{tmp_path / 'gone' / 'train.json'}',)"),
        *("DATASETS.TEST", f"('{own_coco['val']}',)"),
        *("MODEL.WEIGHTS", str(output_dir / "model_final.pth")),
    ]
    log = run_train_net(str(tmp_path), tmp_path, "--eval-only", opts=opts)
    assert len(parse_box_ap(log)) == 6


def test_eval_only_on_data_of_other_classes_is_an_error(own_trained, own_coco, tmp_path):
    output_dir, _ = own_trained
    _, json_file, image_root = own_coco["val"].split(":")
    with open(json_file) as f:
        content = json.load(f)
    content["categories"][1]["name"] = "blue"  # kiwi's id now says "blue"
    renamed = tmp_path / "val_renamed.json"
    renamed.write_text(json.dumps(content))
    weights = str(output_dir / "model_final.pth")
    opts = [
        *("DATASETS.TRAIN", "()", "DATASETS.TEST", f"('coco:{renamed}:{image_root}',)"),
        *("MODEL.WEIGHTS", weights),
    ]
    with pytest.raises(AssertionError) as error:
        run_train_net(str(tmp_path), tmp_path / "eval", "--eval-only", opts=opts)
    message = str(error.value)
    assert f"The model ({weights}) was trained on the classes" in message
    assert "'blue'" in message and "wrong class names" in message


def test_predict_names_detections_without_the_dataset(own_trained, own_coco, tmp_path):
    output_dir, _ = own_trained
    # The config's own datasets are the synthetic ones: names come from the checkpoint.
    log = run_module(
        "retinanet_fl.predict",
        "--config-file", CONFIG,
        "--input", image_folder(own_coco),
        "--output", str(tmp_path),
        "--confidence-threshold", "0.01",
        *TINY_OPTS,
        "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
    )  # fmt: skip
    assert "carries no class names" not in log
    with open(tmp_path / "predictions.json") as f:
        records = json.load(f)
    assert len(records) == 4
    assert_named_with_own_ids([d for record in records for d in record["detections"]])


def test_predict_with_the_reports_per_class_thresholds(own_trained, own_coco, tmp_path):
    output_dir, _ = own_trained
    with open(output_dir / "report" / "report.json") as f:
        thresholds = {c["name"]: c["f1_threshold"] or 0.5 for c in json.load(f)["classes"]}
    log = run_module(
        "retinanet_fl.predict",
        "--config-file", CONFIG,
        "--input", image_folder(own_coco),
        "--output", str(tmp_path),
        "--confidence-threshold", "auto",
        *TINY_OPTS,
        "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
    )  # fmt: skip
    assert f"Per-class score thresholds from {output_dir / 'report'}" in log
    with open(tmp_path / "predictions.json") as f:
        detections = [d for record in json.load(f) for d in record["detections"]]
    assert all(d["score"] >= round(thresholds[d["class_name"]], 4) for d in detections)


def test_exported_onnx_carries_names_and_ids(own_deployed, own_coco, tmp_path):
    run_module(
        "retinanet_fl.predict",
        "--exported", str(own_deployed[0]),
        "--input", image_folder(own_coco),
        "--output", str(tmp_path / "predicted"),
        "--confidence-threshold", "0.01",
    )  # fmt: skip
    with open(tmp_path / "predicted" / "predictions.json") as f:
        records = json.load(f)
    assert_named_with_own_ids([d for record in records for d in record["detections"]])


def write_voc_folder(own_coco, root):
    """The user's COCO dataset rewritten as a Pascal VOC folder (train and val splits)."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(root / sub, exist_ok=True)
    for split in ("train", "val"):
        _, json_file, image_root = own_coco[split].split(":")
        with open(json_file) as f:
            content = json.load(f)
        ids = []
        for image in content["images"]:
            file_id = f"{split}_{image['id']:04d}"
            ids.append(file_id)
            os.link(
                os.path.join(image_root, image["file_name"]), root / "JPEGImages" / f"{file_id}.jpg"
            )
            annotation = ET.Element("annotation")
            size = ET.SubElement(annotation, "size")
            ET.SubElement(size, "width").text = str(image["width"])
            ET.SubElement(size, "height").text = str(image["height"])
            for a in content["annotations"]:
                if a["image_id"] != image["id"]:
                    continue
                obj = ET.SubElement(annotation, "object")
                ET.SubElement(obj, "name").text = OWN_CATEGORIES[a["category_id"]]
                box = ET.SubElement(obj, "bndbox")
                x, y, w, h = a["bbox"]
                # VOC boxes are 1-based inclusive pixel indices
                for key, value in zip(
                    ("xmin", "ymin", "xmax", "ymax"), (x + 1, y + 1, x + w, y + h)
                ):
                    ET.SubElement(box, key).text = str(int(round(value)))
            ET.ElementTree(annotation).write(root / "Annotations" / f"{file_id}.xml")
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def test_voc_folder_trains_and_evaluates(own_coco, tmp_path):
    write_voc_folder(own_coco, tmp_path / "voc")
    folder = tmp_path / "voc"
    opts = ["DATASETS.TRAIN", f"('voc:{folder}:train',)", "DATASETS.TEST", f"('voc:{folder}:val',)"]
    log = run_train_net(str(tmp_path), tmp_path / "out", opts=[*opts, "SOLVER.MAX_ITER", "4"])
    # COCO's evaluator on the ground truth that training reads (no <difficult> needed)
    assert f"Evaluating voc:{folder}:val on the ground truth that training reads" in log
    assert "AP50" in log and "APs" in log
    checkpoint = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    assert checkpoint["class_metadata"]["thing_classes"] == sorted(OWN_CATEGORIES.values())
