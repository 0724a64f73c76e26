"""The image headers checked before training: unreadable files and sizes other than annotated."""

import json
import logging
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

from retinanet_fl.config import get_cfg
from retinanet_fl.data import RobustDatasetMapper
from retinanet_fl.data.image_check import read_image_header
from retinanet_fl.data.mapper import read_image
from retinanet_fl.engine.trainer import Trainer

SIZE = 64
# EXIF orientation 6: the camera was turned; viewers rotate the stored pixels by 90 degrees.
ROTATED = 6
UNREADABLE_CONTENTS = {
    "text.png": b"not an image",
    "empty.jpg": b"",
    "cut_header.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHD",  # PNG signature, IHDR cut short
}


def _rotated_jpeg(path, width, height):
    """A JPEG of width x height stored pixels with EXIF orientation 6 (shown height x width)."""
    exif = Image.Exif()
    exif[0x0112] = ROTATED
    Image.new("RGB", (width, height), (90, 10, 200)).save(path, exif=exif)


def _register(tmp_path, files):
    """
    Write images and a COCO json under tmp_path and register it (Detectron2's
    register_coco_instances) under a unique name.

    Args:
        files: file name -> (bytes to write, or (width, height) of an image to write, or a
            function writing it), then the (width, height) the json gives.
    """
    image_root = tmp_path / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (file_name, (content, (width, height))) in enumerate(files.items(), start=1):
        path = image_root / file_name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif callable(content):
            content(path)
        else:
            Image.new("RGB", content, (120, 60, 30)).save(path)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        annotations.append(
            {"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [4, 4, 20, 20]}
            | {"area": 400.0, "iscrowd": 0}
        )
    json_file = tmp_path / f"{uuid.uuid4().hex[:6]}.json"
    categories = [{"id": 1, "name": "thing"}]
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    name = f"test_image_check_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name


def _good(count):
    return {f"{i}.png": ((SIZE, SIZE), (SIZE, SIZE)) for i in range(count)}


def _cfg(train_name, *opts):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.MODEL.RETINANET.NUM_CLASSES = 1
    cfg.merge_from_list(list(opts))
    return cfg


def test_header_size_is_the_size_read_image_gives(tmp_path):
    writers = {
        "plain.png": lambda p: Image.new("L", (40, 24)).save(p),
        "rotated.jpg": lambda p: _rotated_jpeg(p, 40, 24),
        "grey16.tif": lambda p: Image.fromarray(np.zeros((24, 40), np.uint16)).save(p),
        "photo.webp": lambda p: Image.new("RGB", (40, 24)).save(p),
    }
    for file_name, write in writers.items():
        write(tmp_path / file_name)
        header = read_image_header(str(tmp_path / file_name))
        height, width = read_image(str(tmp_path / file_name), "BGR").shape[:2]
        assert (header.width, header.height) == (width, height), file_name
    assert read_image_header(str(tmp_path / "rotated.jpg")).orientation == ROTATED


def test_unreadable_training_images_beyond_the_fraction_stop_before_training(tmp_path):
    unreadable = {name: (content, (SIZE, SIZE)) for name, content in UNREADABLE_CONTENTS.items()}
    files = _good(1) | unreadable
    name = _register(tmp_path, files)
    with pytest.raises(ValueError) as error:
        Trainer.build_train_dataset(_cfg(name))
    message = str(error.value)
    print(message)
    assert f"Dataset '{name}': 3 of 4 images cannot be read" in message
    assert "text.png' (not an image Pillow can read" in message
    assert "empty.jpg' (empty file)" in message and "cut_header.png' (not an image" in message
    assert "more than DATALOADER.MAX_UNREADABLE_FRACTION = 0.01" in message
    # With skipping turned off, one unreadable image is already an error.
    name = _register(tmp_path / "one", _good(3) | {"text.png": (b"no", (SIZE, SIZE))})
    with pytest.raises(ValueError, match="1 of 4 images cannot be read.*SKIP_UNREADABLE_IMAGES"):
        Trainer.build_train_dataset(_cfg(name, "DATALOADER.SKIP_UNREADABLE_IMAGES", "False"))


def test_unreadable_training_images_within_the_fraction_are_removed_with_a_warning(
    tmp_path, caplog
):
    name = _register(tmp_path, _good(3) | {"text.png": (b"not an image", (SIZE, SIZE))})
    cfg = _cfg(name, "DATALOADER.MAX_UNREADABLE_FRACTION", "0.25")
    with caplog.at_level(logging.WARNING, logger="retinanet_fl.data.image_check"):
        dataset = Trainer.build_train_dataset(cfg)
    assert sorted(record["file_name"].rsplit("/", 1)[1] for record in dataset) == [
        "0.png",
        "1.png",
        "2.png",
    ]
    (warning,) = [r.getMessage() for r in caplog.records if r.name.endswith("image_check")]
    print(warning)
    assert f"Dataset '{name}': 1 of 4 images cannot be read: '" in warning
    assert "text.png' (not an image" in warning and "Training leaves them out" in warning


def test_unreadable_test_image_is_an_error(tmp_path):
    name = _register(tmp_path, _good(2) | {"empty.jpg": (b"", (SIZE, SIZE))})
    with pytest.raises(ValueError, match=r"1 of 3 images cannot be read.*empty.jpg' \(empty file"):
        Trainer.build_test_loader(_cfg(name), name)


def test_sizes_other_than_annotated_stop_before_training(tmp_path):
    files = _good(2) | {
        "small.png": ((48, SIZE), (SIZE, SIZE)),
        "turned.jpg": (lambda p: _rotated_jpeg(p, SIZE, 48), (SIZE, 48)),  # stored size in json
        "turned_right.jpg": (lambda p: _rotated_jpeg(p, SIZE, 48), (48, SIZE)),  # as displayed
    }
    name = _register(tmp_path, files)
    with pytest.raises(ValueError) as error:
        Trainer.build_train_dataset(_cfg(name))
    message = str(error.value)
    print(message)
    assert f"Dataset '{name}': 2 of 5 images are not the size their annotations give" in message
    assert "small.png' 64x64 in the annotations, 48x64 in the file;" in message
    rotated = "turned.jpg' 64x48 in the annotations, 48x64 in the file after its EXIF orientation 6"
    assert rotated in message
    assert "turned_right" not in message
    assert 'Set each image\'s "width" and "height" in the annotations' in message
    # The image annotated as displayed is read without Detectron2's SizeMismatchError, upright.
    (record,) = [r for r in DatasetCatalog.get(name) if r["file_name"].endswith("turned_right.jpg")]
    height, width = RobustDatasetMapper(_cfg(name), is_train=False)(record)["image"].shape[1:]
    assert height > width
