"""
Detectron2's Python API on our configs: ``get_cfg()``, ``merge_from_file``, ``build_model`` and
``DefaultPredictor`` build every shipped model config as they build Detectron2's own, the number
of classes ("0": the data's) resolved from the config's datasets or its checkpoint.
"""

import glob
import os

import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from retinanet_fl.config import get_cfg
from retinanet_fl.data.synthetic import SYNTHETIC_CLASSES
from retinanet_fl.model_zoo import get_config_file

CONFIGS = os.path.dirname(get_config_file("Base-RetinaNet-FL.yaml"))
# Configs of a model (not the ablation grids), and the classes of the datasets they name.
MODEL_CONFIGS = {
    "Base-RetinaNet-FL.yaml": 80,
    "retinanet_R50_FPN.yaml": 80,
    "retinanet_R50_FPN_atss.yaml": 80,
    "retinanet_R50_FPN_atss_qfl.yaml": 80,
    "retinanet_R50_FPN_atss_vfl.yaml": 80,
    "retinanet_R101_FPN.yaml": 80,
    "ablations/Base-Ablation.yaml": 80,
    "synthetic/retinanet_R18_FPN_synthetic.yaml": len(SYNTHETIC_CLASSES),
}


def _merged(name: str, *opts: str):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_every_model_config_is_listed():
    shipped = {
        os.path.relpath(path, CONFIGS)
        for path in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
    }
    grids = {name for name in shipped if "table_" in name or "presets" in name}
    assert shipped - grids == set(MODEL_CONFIGS)


@pytest.mark.parametrize("name, num_classes", sorted(MODEL_CONFIGS.items()))
def test_build_model_from_a_shipped_config(name, num_classes):
    cfg = _merged(name)
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 0  # "the data's": resolved when the model is built
    model = build_model(cfg)
    assert model.num_classes == num_classes
    assert model.head.cls_score.out_channels == num_classes * model.head.num_anchors


def test_default_predictor_from_the_paper_config():
    cfg = _merged("retinanet_R50_FPN.yaml", "MODEL.WEIGHTS", "")
    predictor = DefaultPredictor(cfg)
    assert predictor.model.num_classes == 80
    image = torch.zeros(64, 80, 3, dtype=torch.uint8).numpy()
    assert predictor(image)["instances"].image_size == (64, 80)


def test_classes_of_a_dataset_by_path(own_coco):
    cfg = _merged(
        "synthetic/retinanet_R18_FPN_synthetic.yaml", "DATASETS.TRAIN", f"('{own_coco['train']}',)"
    )
    assert build_model(cfg).num_classes == 6


def test_classes_of_the_checkpoint_when_the_data_has_none(tmp_path):
    from retinanet_fl.data.classes import CHECKPOINT_KEY

    classes = ["a", "b", "c", "d"]
    path = str(tmp_path / "model.pth")
    torch.save({"model": {}, CHECKPOINT_KEY: {"thing_classes": classes}}, path)
    cfg = _merged(
        "synthetic/retinanet_R18_FPN_synthetic.yaml",
        *("DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.WEIGHTS", path),
    )
    assert build_model(cfg).num_classes == len(classes)


def test_no_source_of_classes_names_the_ways_out():
    cfg = _merged(
        "synthetic/retinanet_R18_FPN_synthetic.yaml",
        *("DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.WEIGHTS", ""),
    )
    with pytest.raises(ValueError) as error:
        build_model(cfg)
    message = str(error.value)
    assert "NUM_CLASSES is 0" in message
    for way_out in ("Set MODEL.RETINANET.NUM_CLASSES", "coco:path/to/train.json", "MODEL.WEIGHTS"):
        assert way_out in message
