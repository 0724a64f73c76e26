import importlib.metadata
import os

import retinanet_fl
from retinanet_fl.config import add_retinanet_fl_config, get_cfg


def test_get_cfg_has_detectron2_and_our_keys():
    cfg = get_cfg()
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 80
    assert cfg.MODEL.RETINANET_FL.CLS_LOSS == "focal"


def test_add_config_is_idempotent():
    cfg = get_cfg()
    cfg.MODEL.RETINANET_FL.CLS_LOSS = "ce"
    add_retinanet_fl_config(cfg)
    assert cfg.MODEL.RETINANET_FL.CLS_LOSS == "ce"
    assert cfg == add_retinanet_fl_config(cfg.clone())


def test_our_keys_survive_dump_and_merge(tmp_path):
    cfg = get_cfg()
    cfg.MODEL.RETINANET_FL.CLS_LOSS = "ohem"
    cfg.MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE = 256
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    loaded = get_cfg()
    loaded.merge_from_file(str(path))
    assert loaded.MODEL.RETINANET_FL.CLS_LOSS == "ohem"
    assert loaded.MODEL.RETINANET_FL.OHEM_BATCH_SIZE_PER_IMAGE == 256
    assert loaded.MODEL.RETINANET_FL == cfg.MODEL.RETINANET_FL


def test_package_version_is_the_installed_distributions():
    assert retinanet_fl.__version__ == importlib.metadata.version("retinanet_fl")


def test_load_config_names_an_unregistered_dataset_before_the_classes():
    import pytest

    from retinanet_fl.config import load_config
    from retinanet_fl.model_zoo import get_config_file

    config = get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml")
    for name, suggestion in (("train.json", "coco:train.json"), ("COCO:t.json", "coco:t.json")):
        with pytest.raises(ValueError) as error:
            load_config(config, ["DATASETS.TRAIN", f"('{name}',)"])
        assert f"Dataset '{name}' is not registered (did you mean '{suggestion}'" in str(
            error.value
        )
        assert "NUM_CLASSES" not in str(error.value)


def test_load_config_makes_dataset_paths_absolute(own_coco, tmp_path, monkeypatch):
    from retinanet_fl.config import load_config
    from retinanet_fl.model_zoo import get_config_file

    _, json_file, image_root = own_coco["train"].split(":")
    monkeypatch.chdir(os.path.dirname(json_file))
    relative = f"coco:./{os.path.basename(json_file)}:{os.path.relpath(image_root)}"
    cfg = load_config(
        get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml"),
        ["DATASETS.TRAIN", f"('{relative}',)", "DATASETS.TEST", "()"],
    )
    assert cfg.DATASETS.TRAIN == (f"coco:{json_file}:{image_root}",)
    # The saved config loads from another directory.
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    monkeypatch.chdir(tmp_path)
    assert load_config(str(saved)).MODEL.RETINANET.NUM_CLASSES == 6
