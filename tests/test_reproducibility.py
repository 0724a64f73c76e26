"""Training through the Trainer on a dataset with bad annotations: it runs, and with a fixed SEED
and DATALOADER.NUM_WORKERS 0 on the CPU two runs give identical losses iteration by iteration."""

import json
import math
import os
import uuid

import numpy as np
import pytest
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.env import seed_all_rng
from PIL import Image

import retinanet_fl  # noqa: F401  registers the model and the datasets
from retinanet_fl.config import load_config
from retinanet_fl.engine.trainer import Trainer

BASE_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "configs", "Base-RetinaNet-FL.yaml"
)
# Over 3 epochs of the 6 images: reshuffled batches, random flips, the negative image.
NUM_ITERATIONS = 10
LOSS_NAMES = ("total_loss", "loss_cls", "loss_box_reg")


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory):
    """
    Random-noise images (so that flips change the input), grey and RGBA among them, with good
    boxes, boxes to clip and to drop, an unknown category id, and an image without annotations.
    """
    root = tmp_path_factory.mktemp("messy")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, mode in enumerate(["RGB", "RGB", "L", "RGBA", "RGB", "RGB"], start=1):
        width, height = int(rng.integers(48, 80)), int(rng.integers(48, 80))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / "images" / f"{image_id}.png")
        images.append(
            {"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height}
        )
        if image_id == 6:  # a negative
            continue
        for _ in range(3):
            x, y = rng.uniform(0, width - 8), rng.uniform(0, height - 8)
            box = [x, y, rng.uniform(8, width - x), rng.uniform(8, height - y)]
            annotations.append(
                {"image_id": image_id, "category_id": int(rng.integers(1, 4)), "bbox": box}
            )
        annotations += [
            {
                "image_id": image_id,
                "category_id": 1,
                "bbox": [width - 10.0, 2.0, 30.0, 20.0],
            },  # clipped
            {"image_id": image_id, "category_id": 2, "bbox": [5.0, 5.0, 0.0, 9.0]},  # dropped
            {"image_id": image_id, "category_id": 42, "bbox": [5.0, 5.0, 9.0, 9.0]},  # dropped
        ]
    for annotation_id, annotation in enumerate(annotations, start=1):
        annotation.update(id=annotation_id, iscrowd=0, area=1.0)
    categories = [{"id": cat_id, "name": f"c{cat_id}"} for cat_id in (1, 2, 3)]
    json_file = root / "messy.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    name = f"test_reproducibility_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root / "images"))
    return name


def _train(dataset_name, output_dir, seed, num_iterations=NUM_ITERATIONS):
    """
    Train like train_net.py (which seeds through Detectron2's default_setup) and return each loss
    term's value at every iteration.
    """
    cfg = load_config(
        BASE_CONFIG,
        [
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            "MODEL.WEIGHTS",
            "",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RESNETS.NORM",
            "BN",  # from scratch
            "MODEL.FPN.OUT_CHANNELS",
            "32",
            "MODEL.RETINANET.NUM_CONVS",
            "1",
            "MODEL.RETINANET.NUM_CLASSES",
            "3",
            "DATASETS.TRAIN",
            f"('{dataset_name}',)",
            "DATASETS.TEST",
            "()",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
            "False",
            "INPUT.MIN_SIZE_TRAIN",
            "(32,)",
            "INPUT.MAX_SIZE_TRAIN",
            "48",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            str(num_iterations),
            "SOLVER.STEPS",
            "()",
            "SOLVER.BASE_LR",
            "0.002",
            "SOLVER.WARMUP_ITERS",
            "5",
            "SOLVER.CHECKPOINT_PERIOD",
            "1000",
            "SEED",
            str(seed),
            "OUTPUT_DIR",
            str(output_dir),
        ],
    )
    seed_all_rng(cfg.SEED)  # what default_setup does with cfg.SEED
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return {
        name: [value for value, _ in trainer.storage.history(name).values()] for name in LOSS_NAMES
    }


def test_fixed_seed_gives_identical_losses_and_another_seed_does_not(messy_dataset, tmp_path):
    first = _train(messy_dataset, tmp_path / "first", seed=7)
    second = _train(messy_dataset, tmp_path / "second", seed=7)
    other = _train(messy_dataset, tmp_path / "other", seed=8, num_iterations=1)

    assert all(len(first[name]) == NUM_ITERATIONS for name in LOSS_NAMES)
    assert all(math.isfinite(value) for values in first.values() for value in values)
    assert first == second  # bit for bit, every iteration and loss term
    assert first["total_loss"][0] != other["total_loss"][0]
