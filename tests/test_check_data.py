"""The data check: image files, then boxes against the configured anchors, and suggestions."""

import json

import pytest
from detectron2.structures import BoxMode
from PIL import Image

from retinanet_fl.check_data import AnchorFit, main
from retinanet_fl.config import load_config
from retinanet_fl.model_zoo import get_config_file

CONFIG = get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml")


def one_box_image(box_xyxy, size=64):
    return {
        "height": size,
        "width": size,
        "annotations": [{"bbox": box_xyxy, "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 0}],
    }


def fit(*opts, records):
    cfg = load_config(CONFIG, ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", *opts])
    return AnchorFit(cfg, records)


def test_a_box_equal_to_an_anchor_has_iou_one():
    # ANCHOR_SCALE 2: P3's smallest square anchor is 16 px, centred on multiples of the stride 8.
    records = [one_box_image([24.0, 24.0, 40.0, 40.0])]
    assert fit(records=records).best_ious(anchor_scale=2.0) == pytest.approx([1.0])
    # Twice the input size: the box is 32 px, P3's 16 px anchors no longer match it exactly,
    # P4's 32 px anchors do.
    assert fit(records=records).best_ious(2.0, size_factor=2.0) == pytest.approx([1.0])
    assert fit(records=records).best_ious(anchor_scale=3.0)[0] < 1.0


def test_report_suggests_settings_when_anchors_are_too_large(own_coco, capsys):
    opts = ["DATASETS.TRAIN", f"('{own_coco['train']}',)", "DATASETS.TEST", "()"]
    main(["--config-file", CONFIG, *opts])  # the 64 px images resized to the config's 160 px
    report = capsys.readouterr().out
    assert "reach IoU >= 0.5" in report and "Settings that fit better" not in report

    main(["--config-file", CONFIG, *opts, "MODEL.RETINANET_FL.ANCHOR_SCALE", "8.0"])
    report = capsys.readouterr().out
    (fit_line,) = [line for line in report.splitlines() if line.startswith("Anchor fit:")]
    assert float(fit_line.split()[2]) < 90 and "Settings that fit better" in report
    (first_suggestion,) = [line for line in report.splitlines() if "ANCHOR_SCALE" in line][:1]
    # The suggestion is a valid override (a float) and fits better.
    assert "ANCHOR_SCALE 8.0" not in first_suggestion
    assert "100.0 % reach IoU >= 0.5" in first_suggestion


def test_image_problems_are_reported_then_the_anchor_fit(tmp_path, capsys):
    sizes = {f"{i}.png": (64, 64) for i in range(3)} | {"small.png": (48, 64)}
    for file_name, size in sizes.items():
        Image.new("RGB", size).save(tmp_path / file_name)
    (tmp_path / "text.png").write_text("not an image")
    images = [
        {"id": i, "file_name": name, "width": 64, "height": 64}
        for i, name in enumerate([*sizes, "text.png"], start=1)
    ]
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 32, 32], "area": 1024}
        for i in range(1, 6)
    ]
    categories = [{"id": 1, "name": "thing"}]
    json_file = tmp_path / "train.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    opts = ["DATASETS.TRAIN", f"('coco:{json_file}:{tmp_path}',)", "DATASETS.TEST", "()"]
    assert main(["--config-file", CONFIG, *opts]) == 1
    output = capsys.readouterr().out
    print(output)
    assert "Error (training would stop): Dataset 'coco:" in output
    assert "small.png' 64x64 in the annotations, 48x64 in the file" in output
    assert "1 of 5 images cannot be read: '" in output and "text.png' (not an image" in output
    # The anchor fit of the 3 usable images follows.
    assert "3 boxes in 3 images" in output and "Anchor fit: 100.0 % reach IoU >= 0.5" in output
