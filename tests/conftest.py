"""
Fixtures shared by the test modules: a small config of our paper model on the CPU, a tiny
registered dataset, and the warnings of the config checks.
"""

import json
import logging
import os
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

import retinanet_fl  # noqa: F401  registers the model and the datasets
from retinanet_fl.config import load_config
from retinanet_fl.data.synthetic import SPLITS, generate_synthetic_coco
from retinanet_fl.engine import checks
from retinanet_fl.model_zoo import get_config_file

CLASSES = ("circle", "square", "star")
IMAGE_SIZE = 64


# `make test` runs two pytest-xdist workers, each given whole modules. The modules sharing the
# trained model of the session fixture `own_trained` go to one worker, which trains it once.
OWN_TRAINED_MODULES = ("tests/export/test_deploy.py", "tests/test_own_data.py")
# The slowest modules (compiling, exporting, training), started first so that neither worker is
# left with a long one at the end.
SLOWEST_MODULES = (
    "tests/modeling/test_speed_options.py",
    *OWN_TRAINED_MODULES,
    "tests/test_train_net.py",
    "tests/export/test_export.py",
    "tests/tools/test_benchmark.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return OWN_TRAINED_MODULES[0] if module in OWN_TRAINED_MODULES else module

    # In the collection's order (below), not xdist's default of the most tests first.
    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items):
    """The slowest modules first; each module's tests keep their order."""
    rank = {module: i for i, module in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))


def _small_cfg(*opts):
    """Our paper config on an R-18-FPN with a one-conv head, on the CPU, without datasets."""
    return load_config(
        get_config_file("Base-RetinaNet-FL.yaml"),
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            "MODEL.FPN.OUT_CHANNELS",
            "32",
            "MODEL.RETINANET.NUM_CONVS",
            "1",
            "MODEL.RETINANET.NUM_CLASSES",
            str(len(CLASSES)),
            "DATASETS.TRAIN",
            "()",
            "DATASETS.TEST",
            "()",
            *opts,
        ],
    )


def _train_cfg(dataset_name, output_dir, *opts):
    """``_small_cfg`` training 6 iterations of 2 images of ``IMAGE_SIZE`` px on a dataset."""
    return _small_cfg(
        "DATASETS.TRAIN",
        f"('{dataset_name}',)",
        "MODEL.RESNETS.NORM",
        "BN",  # from scratch
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.MIN_SIZE_TRAIN",
        f"({IMAGE_SIZE},)",
        "INPUT.MAX_SIZE_TRAIN",
        str(IMAGE_SIZE),
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        "6",
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "OUTPUT_DIR",
        str(output_dir),
        "SEED",
        "0",
        *opts,
    )


def _register_tiny(records, prefix="tiny"):
    """Register ``records`` as a dataset with ``CLASSES``; returns its unique name."""
    name = f"test_{prefix}_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [dict(record) for record in records])
    MetadataCatalog.get(name).set(thing_classes=list(CLASSES))
    return name


@pytest.fixture(scope="session")
def small_cfg():
    """``small_cfg(*opts)``: see ``_small_cfg``."""
    return _small_cfg


@pytest.fixture(scope="session")
def train_cfg():
    """``train_cfg(dataset_name, output_dir, *opts)``: see ``_train_cfg``."""
    return _train_cfg


@pytest.fixture(scope="session")
def register_tiny():
    """``register_tiny(records)``: see ``_register_tiny``."""
    return _register_tiny


@pytest.fixture
def check_warnings(caplog, monkeypatch):
    """The messages that retinanet_fl.engine.checks logs, whatever its loggers were set up to do."""
    logger = logging.getLogger(checks.__name__)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger=checks.__name__)
    yield lambda: [r.getMessage() for r in caplog.records if r.name == checks.__name__]
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory):
    """Four random images with one or two boxes each, as Detectron2 dataset dicts."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    records = []
    for image_id in range(4):
        file_name = str(root / f"{image_id}.png")
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(
            file_name
        )
        annotations = [
            {
                "bbox": [8.0 + 20 * k, 10.0, 24.0, 30.0],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": k,
            }
            for k in range(1 + image_id % 2)
        ]
        records.append(
            {
                "file_name": file_name,
                "image_id": image_id,
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
                "annotations": annotations,
            }
        )
    return root, records


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """A DETECTRON2_DATASETS folder with a tiny synthetic dataset (16 + 4 images of 64 px)."""
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_coco(str(root / "synthetic"), num_train=16, num_val=4, image_size=64, seed=3)
    return str(root)


# The dataset's own category ids (not 1..K) and names, in the synthetic classes' order.
OWN_CATEGORIES = {3: "apple", 7: "kiwi", 12: "plum", 20: "fig", 21: "lime", 40: "pear"}


def _write_own_coco(synthetic_root, out_dir, split):
    """Rewrite a synthetic split as a user's COCO JSON with ``OWN_CATEGORIES``; returns its
    ``coco:<json>:<image_root>`` name."""
    with open(os.path.join(synthetic_root, "annotations", f"instances_{split}.json")) as f:
        content = json.load(f)
    own_ids = list(OWN_CATEGORIES)
    content["categories"] = [{"id": i, "name": name} for i, name in OWN_CATEGORIES.items()]
    for annotation in content["annotations"]:
        annotation["category_id"] = own_ids[annotation["category_id"] - 1]
    json_file = os.path.join(out_dir, f"{split}.json")
    with open(json_file, "w") as f:
        json.dump(content, f)
    return f"coco:{json_file}:{os.path.join(synthetic_root, split)}"


@pytest.fixture(scope="session")
def own_coco(tmp_path_factory):
    """A user's COCO-format dataset (16 + 4 images of 64 px) with non-contiguous category ids and
    names of its own: split -> its ``coco:`` dataset name."""
    root = tmp_path_factory.mktemp("own_coco")
    generate_synthetic_coco(str(root / "images"), num_train=16, num_val=4, image_size=64, seed=5)
    return {split: _write_own_coco(str(root / "images"), str(root), split) for split in SPLITS}


def own_data_opts(own_coco) -> list:
    """Config overrides that train and test on ``own_coco``, given by path."""
    return [
        *("DATASETS.TRAIN", f"('{own_coco['train']}',)"),
        *("DATASETS.TEST", f"('{own_coco['val']}',)"),
    ]


# Training iterations of `own_trained`: enough for detections scoring above 0.5 (the int8 tests
# compare those).
OWN_TRAINED_ITERATIONS = 150


@pytest.fixture(scope="session")
def own_trained(own_coco, tmp_path_factory):
    """
    train_net.py on the user's dataset given by path (``own_coco``), with nothing under
    DETECTRON2_DATASETS: (output dir, log). One model for the own-data and deployment tests.
    """
    from .test_train_net import run_train_net

    output_dir = tmp_path_factory.mktemp("own_trained")
    empty_root = str(tmp_path_factory.mktemp("no_datasets"))
    opts = own_data_opts(own_coco)
    opts += ["SOLVER.MAX_ITER", str(OWN_TRAINED_ITERATIONS), "SOLVER.BASE_LR", "0.003"]
    return output_dir, run_train_net(empty_root, output_dir, opts=opts)


# Calibration images of `own_deployed`'s int8 file.
OWN_CALIBRATION_IMAGES = 8


@pytest.fixture(scope="session")
def own_deployed(own_trained, own_coco, tmp_path_factory):
    """
    ``own_trained`` exported by the command line with ``--quantize int8``, calibrated on the
    user's dataset given by path: (fp32 ``model.onnx``, int8 ``model.int8.onnx``).
    """
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from retinanet_fl.export.__main__ import main as export_main

    from .test_train_net import CONFIG, TINY_OPTS

    output_dir, _ = own_trained
    out = tmp_path_factory.mktemp("deployed")
    argv = ["--config-file", CONFIG, "--format", "onnx", "--output", str(out)]
    argv += ["--quantize", "int8", "--calibration-images", str(OWN_CALIBRATION_IMAGES)]
    opts = [*TINY_OPTS, "MODEL.WEIGHTS", str(output_dir / "model_final.pth")]
    opts += own_data_opts(own_coco)
    assert export_main(argv + opts) == 0
    return out / "model.onnx", out / "model.int8.onnx"
