import json
import os
import threading
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools.coco import COCO

import retinanet_fl  # noqa: F401  registers synthetic_train / synthetic_val
from retinanet_fl.data import synthetic
from retinanet_fl.data.synthetic import (
    SYNTHETIC_CLASSES,
    ensure_synthetic_coco,
    generate_synthetic_coco,
    is_synthetic_coco_complete,
    register_synthetic_coco,
    synthetic_split_paths,
)
from retinanet_fl.data.synthetic import generate as synthetic_generate
from retinanet_fl.data.synthetic import render as synthetic_render

TINY = dict(num_train=4, num_val=2, image_size=64, seed=3)


def _load_json(root, split="train"):
    with open(synthetic_split_paths(str(root), split)[0]) as f:
        return json.load(f)


def _read_images(root, split="train"):
    image_root = synthetic_split_paths(str(root), split)[1]
    return {
        name: cv2.imread(os.path.join(image_root, name)) for name in sorted(os.listdir(image_root))
    }


@pytest.fixture(scope="module")
def medium_dataset(tmp_path_factory):
    """60 full-size images: enough for size, count and occlusion statistics."""
    root = tmp_path_factory.mktemp("synthetic") / "medium"
    generate_synthetic_coco(str(root), num_train=60, num_val=5, image_size=160, seed=0)
    return root


def _unique_prefix():
    return f"test_synthetic_{uuid.uuid4().hex[:8]}"


def test_generation_is_deterministic(tmp_path):
    generate_synthetic_coco(str(tmp_path / "a"), **TINY)
    generate_synthetic_coco(str(tmp_path / "b"), **TINY)
    generate_synthetic_coco(str(tmp_path / "c"), **{**TINY, "seed": 4})
    for split in ("train", "val"):
        json_a, json_b = (synthetic_split_paths(str(tmp_path / r), split)[0] for r in "ab")
        with open(json_a, "rb") as fa, open(json_b, "rb") as fb:
            assert fa.read() == fb.read()
        images_a, images_b = (
            _read_images(tmp_path / "a", split),
            _read_images(tmp_path / "b", split),
        )
        assert sorted(images_a) == sorted(images_b)
        for name in images_a:
            np.testing.assert_array_equal(images_a[name], images_b[name])
    assert _load_json(tmp_path / "a") != _load_json(tmp_path / "c")


def test_json_loads_with_pycocotools(tmp_path):
    generate_synthetic_coco(str(tmp_path), **TINY)
    json_file, image_root = synthetic_split_paths(str(tmp_path), "train")
    coco = COCO(json_file)
    assert coco.getCatIds() == list(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
    assert len(coco.getImgIds()) == TINY["num_train"]
    for image in coco.loadImgs(coco.getImgIds()):
        assert (image["width"], image["height"]) == (64, 64)
        pixels = cv2.imread(os.path.join(image_root, image["file_name"]))
        assert pixels.shape == (64, 64, 3)
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) == len(coco.dataset["annotations"]) > 0
    assert all(ann["iscrowd"] == 0 for ann in coco.loadAnns(ann_ids))
    assert len(COCO(synthetic_split_paths(str(tmp_path), "val")[0]).getImgIds()) == TINY["num_val"]


def test_boxes_are_inside_images_with_positive_size(medium_dataset):
    dataset = _load_json(medium_dataset)
    sizes = {image["id"]: (image["width"], image["height"]) for image in dataset["images"]}
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert 0 < ann["area"] <= w * h
        assert 1 <= ann["category_id"] <= len(SYNTHETIC_CLASSES)


def test_sizes_counts_and_occlusion_are_varied(medium_dataset):
    dataset = _load_json(medium_dataset)
    boxes = np.array([ann["bbox"] for ann in dataset["annotations"]])
    sides = np.sqrt(boxes[:, 2] * boxes[:, 3])
    assert sides.min() < 14  # small objects for P3
    assert sides.max() > 0.4 * 160  # up to about half the image
    per_image = np.bincount(
        [ann["image_id"] for ann in dataset["annotations"]], minlength=len(dataset["images"]) + 1
    )[1:]
    assert (per_image == 0).any()  # some images have no object
    assert per_image.max() >= 8  # a long tail
    assert len({ann["category_id"] for ann in dataset["annotations"]}) == len(SYNTHETIC_CLASSES)
    # Occlusion: some objects of one image overlap, and some objects lost visible pixels.
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    image_ids = np.array([ann["image_id"] for ann in dataset["annotations"]])
    same_image = image_ids[:, None] == image_ids[None, :]
    overlap = (np.minimum(x1[:, None], x1) > np.maximum(x0[:, None], x0)) & (
        np.minimum(y1[:, None], y1) > np.maximum(y0[:, None], y0)
    )
    np.fill_diagonal(overlap, False)
    assert (overlap & same_image).any()


def _placed_object(mask, base_rgb, min_visible_fraction):
    return synthetic_render._PlacedObject(
        category_id=1,
        base_rgb=base_rgb,
        halo=mask,
        min_visible_pixels=min_visible_fraction * mask.sum(),
        visible=mask.copy(),
    )


def test_placement_keeps_objects_visible_and_apart_from_their_colour():
    rng = np.random.default_rng(0)
    red, yellow = (215, 35, 35), (235, 205, 35)
    everywhere = np.ones((32, 32), bool)
    # Any 16 px circle hides more than 10 % of an object covering the image.
    assert (
        synthetic_render._place(
            rng, "circle", yellow, 32, 16, [_placed_object(everywhere, red, 0.9)]
        )
        is None
    )
    mask = synthetic_render._place(
        rng, "circle", yellow, 32, 16, [_placed_object(everywhere, red, 0.5)]
    )
    assert mask is not None and 0 < mask.sum() < 0.5 * everywhere.sum()
    # The same colour may not touch it at all, whatever the occlusion allowance.
    assert (
        synthetic_render._place(rng, "circle", red, 32, 16, [_placed_object(everywhere, red, 0.0)])
        is None
    )


def test_rendered_objects_are_visible():
    rng = np.random.default_rng(0)
    num_objects = 0
    for _ in range(10):
        image, objects = synthetic_render.render_image(rng, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert all(visible.any() for _, visible in objects)
        num_objects += len(objects)
    assert num_objects >= 10


def test_registration_generates_on_first_use(tmp_path):
    root = tmp_path / "datasets" / "synthetic"
    prefix = _unique_prefix()
    names = register_synthetic_coco(str(root), prefix=prefix, **TINY)
    assert names == {"train": f"{prefix}_train", "val": f"{prefix}_val"}
    assert not root.exists()
    metadata = MetadataCatalog.get(names["val"])
    assert metadata.evaluator_type == "coco"
    assert metadata.thing_classes == list(SYNTHETIC_CLASSES)
    assert metadata.json_file == synthetic_split_paths(str(root), "val")[0]

    dicts = DatasetCatalog.get(names["train"])
    assert is_synthetic_coco_complete(str(root))
    assert len(dicts) == TINY["num_train"]
    assert len(DatasetCatalog.get(names["val"])) == TINY["num_val"]
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    annotations = [a for d in dicts for a in d["annotations"]]
    assert annotations and all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in annotations)
    # load_coco_json maps category ids 1..K to contiguous 0..K-1.
    assert {a["category_id"] for a in annotations} <= set(range(len(SYNTHETIC_CLASSES)))
    assert MetadataCatalog.get(names["train"]).thing_dataset_id_to_contiguous_id == {
        i + 1: i for i in range(len(SYNTHETIC_CLASSES))
    }
    # The generated data is the same as an explicit generation with the same arguments.
    generate_synthetic_coco(str(tmp_path / "explicit"), **TINY)
    assert _load_json(root) == _load_json(tmp_path / "explicit")


def test_registration_rejects_taken_names(tmp_path):
    prefix = _unique_prefix()
    register_synthetic_coco(str(tmp_path), prefix=prefix, **TINY)
    with pytest.raises(ValueError, match="already registered"):
        register_synthetic_coco(str(tmp_path), prefix=prefix, **TINY)


def test_default_datasets_are_registered():
    for split in ("train", "val"):
        name = f"synthetic_{split}"
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        json_file, _ = synthetic_split_paths(synthetic.default_synthetic_root(), split)
        assert metadata.json_file == json_file
        assert metadata.evaluator_type == "coco"
        assert metadata.thing_classes == list(SYNTHETIC_CLASSES)


def test_ensure_keeps_a_complete_dataset(tmp_path):
    generate_synthetic_coco(str(tmp_path / "ds"), **TINY)
    json_file = synthetic_split_paths(str(tmp_path / "ds"), "train")[0]
    before = os.stat(json_file).st_mtime_ns
    ensure_synthetic_coco(str(tmp_path / "ds"), **{**TINY, "seed": 9})
    assert os.stat(json_file).st_mtime_ns == before


def test_ensure_loses_a_race_gracefully(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    render = synthetic_generate._render_to_temp

    def render_while_another_process_publishes(*args, **kwargs):
        os.rename(render(*args, **kwargs), root)  # the other process wins
        return render(*args, **kwargs)

    monkeypatch.setattr(
        synthetic_generate, "_render_to_temp", render_while_another_process_publishes
    )
    ensure_synthetic_coco(root, **TINY)
    assert is_synthetic_coco_complete(root)
    assert os.listdir(tmp_path) == ["ds"]  # the loser's temporary folder is gone


def test_concurrent_ensure_publishes_one_dataset(tmp_path):
    root = str(tmp_path / "ds")
    barrier = threading.Barrier(3)
    errors = []

    def worker():
        barrier.wait()
        try:
            ensure_synthetic_coco(root, **TINY)
        except Exception as e:  # noqa: BLE001  reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(tmp_path) == ["ds"]
    assert sorted(os.listdir(root)) == ["annotations", "train", "val"]
    generate_synthetic_coco(str(tmp_path / "ref"), **TINY)
    assert _load_json(root, "val") == _load_json(tmp_path / "ref", "val")


def test_incomplete_folder_gives_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    (root / "train" / "000001.jpg").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no complete synthetic dataset.*Delete it"):
        ensure_synthetic_coco(str(root), **TINY)
    assert os.listdir(tmp_path) == ["ds"]


def test_generate_refuses_foreign_folders_and_bad_arguments(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="Refusing to replace.*notes.txt"):
        generate_synthetic_coco(str(tmp_path), **TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="image_size must be an integer >= 32"):
        generate_synthetic_coco(str(tmp_path / "ds"), **{**TINY, "image_size": 16})
    with pytest.raises(ValueError, match="num_val must be an integer >= 1"):
        generate_synthetic_coco(str(tmp_path / "ds"), **{**TINY, "num_val": 0})
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_generate_replaces_an_earlier_dataset(tmp_path):
    root = str(tmp_path / "ds")
    generate_synthetic_coco(root, **TINY)
    generate_synthetic_coco(root, **{**TINY, "num_train": 2})
    assert len(_load_json(root)["images"]) == 2
    assert sorted(os.listdir(os.path.join(root, "train"))) == ["000001.jpg", "000002.jpg"]
    assert os.listdir(tmp_path) == ["ds"]


def test_objects_and_distractors_per_image_set_the_regime(tmp_path):
    """The imbalance study's knobs: a fixed object count, and the clutter (distractors)."""
    generate_synthetic_coco(
        str(tmp_path / "two"), **{**TINY, "image_size": 96}, objects_per_image=(2, 2)
    )
    dataset = _load_json(tmp_path / "two")
    per_image = [
        sum(a["image_id"] == im["id"] for a in dataset["annotations"]) for im in dataset["images"]
    ]
    assert per_image == [2, 2, 2, 2]
    assert dataset["info"]["objects_per_image"] == [2, 2]

    # Without distractors, the only saturated colours in an image are the objects' own.
    rng = np.random.default_rng(5)
    for _ in range(5):
        image, objects = synthetic_render.render_image(rng, 96, (0, 1), 0.0)
        covered = np.zeros(image.shape[:2], bool)
        for _, visible in objects:
            covered |= visible
        spread = image.astype(int).max(axis=2) - image.astype(int).min(axis=2)
        assert np.count_nonzero((spread > 120) & ~covered) < 20
    with pytest.raises(ValueError, match="objects_per_image must be \\(min, max\\)"):
        generate_synthetic_coco(str(tmp_path / "bad"), **TINY, objects_per_image=3)
    with pytest.raises(ValueError, match="objects_per_image max must be an integer >= 3"):
        generate_synthetic_coco(str(tmp_path / "bad"), **TINY, objects_per_image=(3, 2))
    with pytest.raises(ValueError, match="distractors_per_image must be a number"):
        generate_synthetic_coco(str(tmp_path / "bad"), **TINY, distractors_per_image=-1.0)

    # A larger canvas with the objects' sizes kept.
    generate_synthetic_coco(
        str(tmp_path / "big"),
        **{**TINY, "image_size": 128},
        objects_per_image=(3, 3),
        max_object_size=20.0,
    )
    boxes = [a["bbox"] for a in _load_json(tmp_path / "big")["annotations"]]
    assert len(boxes) == 12 and max(max(w, h) for _, _, w, h in boxes) <= 21
    with pytest.raises(ValueError, match="max_object_size must be in \\[12, image_size = 64\\]"):
        generate_synthetic_coco(str(tmp_path / "bad"), **TINY, max_object_size=100.0)


def test_import_registers_the_default_dataset_only():
    # The tools generate the studies' variants and name them by path (tools/ablation.py).
    names = DatasetCatalog.list()
    assert {"synthetic_train", "synthetic_val"} <= set(names)
    assert not [n for n in names if n.startswith(("synthetic_obj", "synthetic_longtail"))]
