"""Pascal VOC folders given by path: their own classes, checked XML files, and COCO AP on the ground
truth that training reads (no <difficult>, <pose> or <truncated> needed)."""

import logging
import xml.etree.ElementTree as ET

import pytest
import torch
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from retinanet_fl.config import get_cfg, load_config
from retinanet_fl.data import load_dataset_dicts, prepare_dataset_dicts
from retinanet_fl.data.by_path import register_path_datasets
from retinanet_fl.data.classes import known_classes
from retinanet_fl.engine.trainer import Trainer
from retinanet_fl.evaluation import SanitizedCOCOEvaluator
from retinanet_fl.model_zoo import get_config_file

SIZE = 64
XYXY = BoxMode.XYXY_ABS  # Detectron2's VOC loader's boxes
SPLITS = {"train": ["a", "b", "c", "d"], "val": ["e", "f"]}


def write_voc(root, names=("cat", "dog"), edit=None):
    """A Pascal VOC folder of 6 images of 64 px, one object each (a name of ``names`` in turn),
    without <pose>, <truncated> or <difficult>; ``edit(file_id, annotation)`` may change an XML."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    file_ids = [file_id for ids in SPLITS.values() for file_id in ids]
    for index, file_id in enumerate(file_ids):
        Image.new("RGB", (SIZE, SIZE), (100, 50, 0)).save(root / "JPEGImages" / f"{file_id}.jpg")
        annotation = ET.Element("annotation")
        size = ET.SubElement(annotation, "size")
        ET.SubElement(size, "width").text = str(SIZE)
        ET.SubElement(size, "height").text = str(SIZE)
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = names[index % len(names)]
        box = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (5 + index, 9, 30 + index, 40)):
            ET.SubElement(box, key).text = str(value)
        if edit is not None:
            edit(file_id, annotation)
        ET.ElementTree(annotation).write(root / "Annotations" / f"{file_id}.xml")
    for split, ids in SPLITS.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_a_folder_of_some_voc_classes_has_its_own_classes(tmp_path):
    folder = write_voc(tmp_path / "VOC2007")
    cfg = load_config(
        get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml"),
        ["DATASETS.TRAIN", f"('voc:{folder}:train',)", "DATASETS.TEST", "()"],
    )
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 2  # not VOC's 20
    dataset_dicts, _ = load_dataset_dicts(f"voc:{folder}:train")
    assert [a["category_id"] for r in dataset_dicts for a in r["annotations"]] == [0, 1, 0, 1]


def add_objects(names):
    """An edit for ``write_voc`` that adds objects of ``names`` to image "a"."""

    def edit(file_id, annotation):
        for name in names if file_id == "a" else ():
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = name
            box = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (2, 2, 20, 20)):
                ET.SubElement(box, key).text = str(value)

    return edit


@pytest.mark.parametrize("num_voc_classes", [20, 19])
def test_voc_order_only_for_exactly_vocs_20_classes(tmp_path, num_voc_classes):
    names = [name for name in VOC_CLASS_NAMES if name not in ("cat", "dog")]
    folder = write_voc(tmp_path / "voc", edit=add_objects(names[: num_voc_classes - 2]))
    register_path_datasets([f"voc:{folder}:train"])
    expected = (
        list(VOC_CLASS_NAMES) if num_voc_classes == 20 else sorted(names[:17] + ["cat", "dog"])
    )
    assert known_classes(f"voc:{folder}:train") == expected


def predict(evaluator, dataset_dicts):
    """Feed the evaluator one prediction per image: its ground-truth box, moved by a pixel."""
    evaluator.reset()
    for record in dataset_dicts:
        instances = Instances((SIZE, SIZE))
        (annotation,) = record["annotations"]
        box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
        instances.pred_boxes = Boxes(torch.tensor([box]) + 1)
        instances.scores = torch.tensor([0.9])
        instances.pred_classes = torch.tensor([annotation["category_id"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()


def test_a_voc_split_without_difficult_is_scored_with_coco_ap(tmp_path, caplog):
    folder = write_voc(tmp_path / "VOC2007")
    name = f"voc:{folder}:val"
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    with caplog.at_level(logging.INFO):
        register_path_datasets([name])
        evaluator = Trainer.build_evaluator(cfg, name)
    assert isinstance(evaluator, SanitizedCOCOEvaluator)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no <difficult> warning
    assert any(
        r.getMessage().endswith("(the sanitised dataset): the dataset has no COCO JSON.")
        for r in caplog.records
    )
    dataset_dicts = prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=False)
    scored = evaluator._coco_api.dataset["annotations"]
    assert [(a["image_id"], a["bbox"]) for a in scored] == [
        (r["image_id"], BoxMode.convert(r["annotations"][0]["bbox"], XYXY, BoxMode.XYWH_ABS))
        for r in dataset_dicts
    ]
    results = predict(evaluator, dataset_dicts)["bbox"]
    assert results["AP50"] == pytest.approx(100.0) and 0 < results["AP"] < 100


def test_detectron2s_registered_voc_datasets_keep_its_evaluator():
    evaluator = Trainer.build_evaluator(get_cfg(), "voc_2007_test")
    assert type(evaluator) is PascalVOCDetectionEvaluator


def drop(path):
    def edit(file_id, annotation):
        if file_id == "b":
            element = annotation.find(path.rsplit("/", 1)[0]) if "/" in path else annotation
            element.remove(element.find(path.rsplit("/", 1)[-1]))

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (drop("size/width"), r"b.xml has no <size><width> and <height>. Detectron2's Pascal VOC"),
        (drop("object/bndbox"), r"b.xml: <object> 0 has no <name> or no <bndbox> with <xmin>"),
        (drop("object/name"), r"b.xml: <object> 0 has no <name> or no <bndbox>"),
    ],
)
def test_an_xml_without_what_detectron2_reads_stops_registration(tmp_path, edit, message):
    folder = write_voc(tmp_path / "voc", edit=edit)
    with pytest.raises(ValueError, match=message):
        register_path_datasets([f"voc:{folder}:train"])


def test_a_split_listing_an_image_without_annotation_stops_registration(tmp_path):
    folder = write_voc(tmp_path / "voc")
    (folder / "Annotations" / "c.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.txt lists 1 images without an Anno"):
        register_path_datasets([f"voc:{folder}:train"])
    (folder / "ImageSets" / "Main" / "one.txt").write_text("a\n")
    with pytest.raises(ValueError, match="one.txt lists one image: Detectron2's Pascal VOC"):
        register_path_datasets([f"voc:{folder}:one"])
