"""The data pipeline on what real datasets contain: bad boxes, unknown categories, empty and
missing images, unusual image modes, very wide images, many boxes."""

import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode
from PIL import Image

import retinanet_fl  # noqa: F401  registers the datasets and the model
from retinanet_fl.config import get_cfg
from retinanet_fl.data import RobustDatasetMapper, load_dataset_dicts, prepare_dataset_dicts
from retinanet_fl.data.sanitize import DROP_NO_BOX, DatasetReport, sanitize_dataset_dicts
from retinanet_fl.engine.trainer import Trainer

SANITIZE_LOGGER = "retinanet_fl.data.sanitize"


def _register_coco(tmp_path, images, annotations, categories=((1, "a"), (2, "b"))):
    """
    Write a COCO json (and the images given as PIL images; None: no file) under tmp_path and
    register it with Detectron2's register_coco_instances under a unique name.

    Args:
        images: (file_name, PIL image or None, width, height) per image; ids are 1, 2, ...
        annotations: (image id, category id, [x, y, w, h]) or dicts of extra fields.
    """
    image_root = tmp_path / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    coco_images = []
    for image_id, (file_name, image, width, height) in enumerate(images, start=1):
        if image is not None:
            image.save(image_root / file_name)
        coco_images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
    coco_annotations = []
    for annotation_id, (image_id, category_id, bbox, *extra) in enumerate(annotations, start=1):
        annotation = {"id": annotation_id, "image_id": image_id, "category_id": category_id}
        annotation.update(bbox=bbox, area=1.0, iscrowd=0)
        annotation.update(*extra)
        coco_annotations.append(annotation)
    coco = {
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": [{"id": cat_id, "name": name} for cat_id, name in categories],
    }
    json_file = tmp_path / f"{uuid.uuid4().hex[:6]}.json"
    json_file.write_text(json.dumps(coco))
    name = f"test_data_robustness_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name


def _rgb(width, height, color=(120, 60, 30)):
    return Image.new("RGB", (width, height), color)


def _small_cfg(train_names):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = tuple(train_names)
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def test_bad_boxes_are_clipped_or_dropped_and_counted(tmp_path, caplog):
    good, partly_outside = [10, 10, 20, 15], [50, 40, 30, 20]  # the image is 64 x 48
    name = _register_coco(
        tmp_path,
        [("a.png", _rgb(64, 48), 64, 48)],
        [
            (1, 1, good),
            (1, 2, partly_outside),
            (1, 1, [5, 5, 0, 10]),  # zero width
            (1, 1, [5, 5, 10, 0]),  # zero height
            (1, 1, [30, 30, -4, 5]),  # negative width
            (1, 2, [70, 10, 10, 10]),  # entirely right of the image
            (1, 2, [-20, -20, 15, 15]),  # entirely above and left of it
            (1, 1, [float("nan"), 1, 2, 3]),
            (1, 1, [1, 1, 30, 30], {"iscrowd": 1}),
        ],
    )
    caplog.set_level(logging.INFO, logger=SANITIZE_LOGGER)
    dataset_dicts = prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=True)

    (record,) = dataset_dicts
    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in record["annotations"]
        if not a["iscrowd"]
    ]
    assert np.allclose(boxes, [[10, 10, 30, 25], [50, 40, 64, 48]])
    assert [a["category_id"] for a in record["annotations"]] == [0, 1, 0]  # the crowd one is kept
    (message,) = [r.getMessage() for r in caplog.records if r.name == SANITIZE_LOGGER]
    assert message.startswith(f"{name}: 1 images, 8 boxes")
    for expected in (
        "3 boxes with zero or negative width or height",
        "2 boxes entirely outside the image",
        "1 boxes with non-finite coordinates",
        "clipped 1 boxes to the image",
        "1 crowd annotations ignored",
    ):
        assert expected in message


def test_unknown_category_ids_are_dropped_with_a_warning(tmp_path, caplog):
    name = _register_coco(
        tmp_path,
        [("a.png", _rgb(32, 32), 32, 32), ("b.png", _rgb(32, 32), 32, 32)],
        [
            (1, 1, [1, 1, 10, 10]),
            (1, 99, [2, 2, 10, 10]),
            (2, 99, [3, 3, 5, 5]),
            (2, 7, [1, 1, 4, 4]),
            (2, 2, [4, 4, 8, 8]),
        ],
        categories=((1, "a"), (2, "b")),
    )
    # Detectron2 alone refuses the whole dataset.
    with pytest.raises(KeyError, match="category_id=99"):
        DatasetCatalog.get(name)

    caplog.set_level(logging.INFO, logger=SANITIZE_LOGGER)
    dataset_dicts = prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=False)

    assert [[a["category_id"] for a in r["annotations"]] for r in dataset_dicts] == [[0], [1]]
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    assert MetadataCatalog.get(name).thing_classes == ["a", "b"]
    (record,) = [r for r in caplog.records if r.name == SANITIZE_LOGGER]
    assert record.levelno == logging.WARNING
    assert "3 boxes with category ids not in the dataset (99 x2, 7 x1)" in record.getMessage()


def test_out_of_range_contiguous_category_ids_are_dropped():
    records = [
        {
            "file_name": "x.png",
            "height": 20,
            "width": 20,
            "image_id": 0,
            "annotations": [
                {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category_id}
                for category_id in (0, 2, -1, 3, np.int64(1))
            ],
        }
    ]
    report = DatasetReport("custom")
    (record,) = sanitize_dataset_dicts(records, report, num_classes=3)
    assert [a["category_id"] for a in record["annotations"]] == [0, 2, 1]
    assert report.unknown_category_ids == {-1: 1, 3: 1}
    assert len(records[0]["annotations"]) == 5  # the input is left as it was


def test_annotation_without_a_box_is_dropped_and_boxes_are_clipped_at_0_without_image_size():
    records = [
        {
            "file_name": "x.png",
            "image_id": 0,
            "annotations": [
                {"category_id": 0},
                {"bbox": [-5, -5, 500, 500], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
            ],
        }
    ]
    report = DatasetReport("custom")
    (record,) = sanitize_dataset_dicts(records, report, num_classes=1)
    assert report.dropped == {DROP_NO_BOX: 1}
    # Only the lower bound is known; the mapper clips to the image's size once it has read it.
    assert record["annotations"][0]["bbox"] == [0, 0, 500, 500]
    assert report.num_clipped == 1


@pytest.mark.parametrize("filter_empty", [False, True])
def test_images_without_annotations_are_counted_and_kept_as_negatives_unless_filtered(
    tmp_path, caplog, filter_empty
):
    name = _register_coco(
        tmp_path,
        [(file_name, _rgb(40, 40), 40, 40) for file_name in ("a.png", "b.png", "c.png")],
        [(1, 1, [1, 1, 10, 10]), (3, 1, [1, 1, 0, 10])],  # b: no annotations; c: only a bad box
    )
    caplog.set_level(logging.INFO, logger=SANITIZE_LOGGER)
    loaded = load_dataset_dicts(name)
    dataset_dicts = prepare_dataset_dicts([loaded], filter_empty=filter_empty)

    report = loaded[1]
    assert (report.num_images_without_annotations, report.num_images_emptied) == (1, 1)
    message = [r.getMessage() for r in caplog.records if r.name == SANITIZE_LOGGER][0]
    assert "1 images without annotations" in message
    assert "1 images left without annotations by the drops" in message
    if filter_empty:
        assert [r["file_name"].rsplit("/", 1)[-1] for r in dataset_dicts] == ["a.png"]
        assert "removed 2 images without annotations" in message
        return
    assert len(dataset_dicts) == 3
    mapper = RobustDatasetMapper(_small_cfg([name]), is_train=True)
    instances = [len(mapper(record)["instances"]) for record in dataset_dicts]
    assert instances == [1, 0, 0]


@pytest.mark.parametrize("filter_empty", [False, True])
def test_a_training_set_without_boxes_is_an_error_naming_its_datasets(tmp_path, filter_empty):
    images = [(f"{i}.png", _rgb(20, 20), 20, 20) for i in range(6)]
    empty = _register_coco(tmp_path / "empty", images, [])
    emptied = _register_coco(tmp_path / "emptied", images[:1], [(1, 1, [1, 1, 0, 5])])
    loaded = [load_dataset_dicts(empty), load_dataset_dicts(emptied)]
    with pytest.raises(ValueError, match="^No boxes to train on: ") as error:
        prepare_dataset_dicts(loaded, filter_empty=filter_empty, is_train=True)
    assert f"'{empty}' has 6 images and 0 boxes; '{emptied}' has 1 images and 1 boxes, all 1 " in (
        str(error.value)
    )
    assert "A split without annotations can only be a test set." in str(error.value)
    # A test set may have none.
    test_dicts = prepare_dataset_dicts([load_dataset_dicts(empty)], filter_empty=False)
    assert len(test_dicts) == 6


def test_missing_image_file_is_a_clear_error(tmp_path):
    name = _register_coco(
        tmp_path,
        [("here.png", _rgb(20, 20), 20, 20), ("gone.png", None, 20, 20)],
        [(1, 1, [1, 1, 5, 5]), (2, 1, [1, 1, 5, 5])],
    )
    image_root = str(tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="gone.png") as error:
        Trainer.build_train_loader(_small_cfg([name]))
    assert image_root in str(error.value) and name in str(error.value)
    assert "here.png" not in str(error.value)
    assert "DETECTRON2_DATASETS" not in str(error.value)  # not mistaken for a missing dataset

    # An image deleted after the dataset was checked: the mapper names it too (and, when it
    # skips unreadable images, counts it as one).
    record = [r for r in DatasetCatalog.get(name) if r["file_name"].endswith("gone.png")][0]
    cfg = _small_cfg([name])
    cfg.DATALOADER.SKIP_UNREADABLE_IMAGES = False
    with pytest.raises(FileNotFoundError, match="gone.png.*image_root"):
        RobustDatasetMapper(cfg, is_train=True)(record)
    assert RobustDatasetMapper(_small_cfg([name]), True, dataset_size=200)(record) is None


def test_missing_json_still_explains_where_datasets_live(tmp_path):
    name = f"test_data_robustness_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(tmp_path / "absent.json"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        Trainer.build_train_loader(_small_cfg([name]))


def test_unreadable_image_is_a_clear_error_when_not_skipped(tmp_path):
    name = _register_coco(tmp_path, [("broken.png", None, 20, 20)], [(1, 1, [1, 1, 5, 5])])
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    (record,) = DatasetCatalog.get(name)
    cfg = _small_cfg([name])
    cfg.DATALOADER.SKIP_UNREADABLE_IMAGES = False
    with pytest.raises(OSError, match="broken.png.*cannot be read as an image"):
        RobustDatasetMapper(cfg, is_train=True)(record)
    # Evaluation never skips: every image must be scored.
    with pytest.raises(OSError, match="broken.png"):
        RobustDatasetMapper(_small_cfg([name]), is_train=False)(record)


def test_unreadable_training_images_are_skipped_up_to_the_stated_share(tmp_path, caplog):
    files = [(f"{i}.png", _rgb(20, 20), 20, 20) for i in range(200)]
    name = _register_coco(tmp_path, files, [(i + 1, 1, [1, 1, 5, 5]) for i in range(200)])
    records = DatasetCatalog.get(name)
    for record in records[:3]:
        with open(record["file_name"], "wb") as f:
            f.write(b"not a png")
    cfg = _small_cfg([name])
    assert cfg.DATALOADER.SKIP_UNREADABLE_IMAGES and cfg.DATALOADER.MAX_UNREADABLE_FRACTION == 0.01
    mapper = RobustDatasetMapper(cfg, True, dataset_size=len(records))
    with caplog.at_level(logging.WARNING):
        assert mapper(records[0]) is None and mapper(records[1]) is None
        assert mapper(records[0]) is None  # the same file again counts once
        assert mapper(records[5])["image"].shape[0] == 3
    skipped = [r.getMessage() for r in caplog.records if "Skipped an unreadable" in r.getMessage()]
    assert len(skipped) == 3 and "0.png" in skipped[0] and "(2 so far)" in skipped[1]
    # 3 of 200 images is more than 1%: training stops, naming the key.
    with pytest.raises(
        RuntimeError, match=r"^3 images .*MAX_UNREADABLE_FRACTION = 0.01 of its 200"
    ):
        mapper(records[2])


def _16_bit_grey(width, height, value):
    return Image.fromarray(np.full((height, width), value, dtype=np.uint16))


@pytest.mark.parametrize(
    "file_name, image, expected_rgb",
    [
        ("grey.png", Image.new("L", (24, 16), 100), (100, 100, 100)),
        ("grey_alpha.png", Image.new("LA", (24, 16), (90, 0)), (90, 90, 90)),
        ("rgba.png", Image.new("RGBA", (24, 16), (10, 20, 30, 0)), (10, 20, 30)),
        (
            "palette.png",
            _rgb(24, 16, (200, 0, 50)).convert("P", palette=Image.ADAPTIVE),
            (200, 0, 50),
        ),
        ("grey16.png", _16_bit_grey(24, 16, 128 * 257), (128, 128, 128)),
        ("cmyk.jpg", Image.new("CMYK", (24, 16), (0, 255, 255, 0)), (255, 0, 0)),
        ("binary.png", Image.new("1", (24, 16), 1), (255, 255, 255)),
    ],
)
@pytest.mark.parametrize("image_format", ["BGR", "RGB"])
def test_image_modes_are_converted_to_input_format(
    tmp_path, file_name, image, expected_rgb, image_format
):
    name = _register_coco(tmp_path, [(file_name, image, 24, 16)], [(1, 1, [2, 2, 8, 8])])
    (record,) = DatasetCatalog.get(name)
    mapper = RobustDatasetMapper(
        is_train=True, augmentations=[T.ResizeShortestEdge(16, 24)], image_format=image_format
    )
    output = mapper(record)["image"]
    assert output.shape == (3, 16, 24) and output.dtype == torch.uint8
    expected = expected_rgb[::-1] if image_format == "BGR" else expected_rgb
    # JPEG's chroma compression moves CMYK colours by a few levels.
    tolerance = 8 if file_name.endswith(".jpg") else 0
    difference = (
        output.reshape(3, -1).float() - torch.tensor(expected, dtype=torch.float32)[:, None]
    )
    assert difference.abs().max() <= tolerance


def test_4000_px_wide_image_is_resized_within_max_size(tmp_path, caplog):
    width, height = 4000, 200
    name = _register_coco(
        tmp_path,
        [("wide.png", _rgb(width, height), width, height)],
        [(1, 1, [3000, 50, 800, 100]), (1, 2, [10, 10, 3e-5, 40])],  # the second shrinks to nothing
    )
    dataset_dicts = prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=True)
    caplog.set_level(logging.WARNING, logger="retinanet_fl.data.mapper")
    output = RobustDatasetMapper(_small_cfg([name]), is_train=True)(dataset_dicts[0])

    new_height = round(height * 128 / width)  # MAX_SIZE_TRAIN bounds the long edge
    assert tuple(output["image"].shape) == (3, new_height, 128)
    (box,) = output["instances"].gt_boxes.tensor.tolist()
    scale_x, scale_y = 128 / width, new_height / height
    assert box == pytest.approx([3000 * scale_x, 50 * scale_y, 3800 * scale_x, 150 * scale_y])
    assert any(
        "1 of 2 boxes" in r.getMessage() and "wide.png" in r.getMessage() for r in caplog.records
    )


def test_1000_boxes_in_one_image(tmp_path):
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 140, size=(1000, 2))
    sizes = rng.uniform(1, 20, size=(1000, 2))
    annotations = [
        (1, int(rng.integers(1, 3)), [*corner.tolist(), *size.tolist()])
        for corner, size in zip(corners, sizes)
    ]
    name = _register_coco(tmp_path, [("many.png", _rgb(160, 160), 160, 160)], annotations)
    cfg = _small_cfg([name])
    cfg.SOLVER.IMS_PER_BATCH = 1
    batch = next(iter(Trainer.build_train_loader(cfg)))

    (sample,) = batch
    instances = sample["instances"]
    assert len(instances) == 1000
    expected = np.concatenate([corners, corners + sizes], axis=1) * (64 / 160)  # MIN_SIZE_TRAIN
    assert np.allclose(instances.gt_boxes.tensor.numpy(), expected, atol=1e-3)


def test_train_and_test_loaders_on_a_dataset_with_every_problem(tmp_path, caplog):
    name = _register_coco(
        tmp_path,
        [
            ("rgb.png", _rgb(96, 64), 96, 64),
            ("grey.png", Image.new("L", (64, 96), 77), 64, 96),
            ("rgba.png", Image.new("RGBA", (80, 80), (1, 2, 3, 4)), 80, 80),
            ("negative.png", _rgb(64, 64), 64, 64),
        ],
        [
            (1, 1, [10, 10, 30, 30]),
            (1, 2, [80, 50, 40, 40]),
            (2, 1, [0, 0, 0, 5]),
            (2, 99, [5, 5, 5, 5]),
            (3, 2, [200, 200, 5, 5]),
            (3, 1, [math.inf, 0, 1, 1]),
            (3, 1, [5, 5, 50, 50]),
        ],
    )
    caplog.set_level(logging.INFO, logger=SANITIZE_LOGGER)
    cfg = _small_cfg([name])
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False  # one batch of the 4 images, whatever their shapes
    cfg.SOLVER.IMS_PER_BATCH = 4
    batch = next(iter(Trainer.build_train_loader(cfg)))

    assert len(batch) == 4
    assert sorted(len(sample["instances"]) for sample in batch) == [0, 0, 1, 2]
    for sample in batch:
        assert sample["image"].shape[0] == 3 and max(sample["image"].shape[1:]) <= 128
        boxes = sample["instances"].gt_boxes.tensor
        height, width = sample["image"].shape[1:]
        assert torch.all(boxes[:, 2:] <= torch.tensor([width, height])) and torch.all(boxes >= 0)
    message = [r.getMessage() for r in caplog.records if r.name == SANITIZE_LOGGER][0]
    assert "4 images, 7 boxes" in message
    assert "1 boxes with zero or negative width or height" in message
    assert "1 boxes entirely outside the image" in message and "1 boxes with non-finite" in message
    assert "(99 x1)" in message and "clipped 1 boxes" in message

    test_batches = list(Trainer.build_test_loader(cfg, name))
    assert len(test_batches) == 4 and all("instances" not in b[0] for b in test_batches)
