import importlib.metadata

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
