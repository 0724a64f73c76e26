"""Datasets given by path: registration, classes from the data, and a clear error or warning for
each kind of bad input."""

import copy
import json
import logging
import os
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from retinanet_fl.config import load_config
from retinanet_fl.data import load_dataset_dicts, prepare_dataset_dicts
from retinanet_fl.data.by_path import (
    canonical_dataset_name,
    check_registered,
    register_path_datasets,
)
from retinanet_fl.data.classes import ClassMetadataState, metadata_for_inference
from retinanet_fl.data.synthetic import SYNTHETIC_CLASSES
from retinanet_fl.model_zoo import get_config_file

from ..conftest import OWN_CATEGORIES

CONFIG = get_config_file("synthetic/retinanet_R18_FPN_synthetic.yaml")


def split_of(name):
    """``coco:<json>:<images>`` -> (json, images)."""
    _, json_file, image_root = name.split(":")
    return json_file, image_root


def write_variant(own_coco, tmp_path, edit, split="train"):
    """The user's split with ``edit(content)`` applied, written beside its images; its name."""
    json_file, image_root = split_of(own_coco[split])
    with open(json_file) as f:
        content = json.load(f)
    edited = edit(copy.deepcopy(content))
    path = tmp_path / f"{split}_edited.json"
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    return f"coco:{path}:{image_root}"


def load_with_train(name, *opts):
    return load_config(CONFIG, ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", *opts])


def test_classes_and_non_contiguous_ids_come_from_the_json(own_coco):
    cfg = load_with_train(own_coco["train"])
    assert cfg.MODEL.RETINANET.NUM_CLASSES == len(OWN_CATEGORIES)
    metadata = MetadataCatalog.get(own_coco["train"])
    assert metadata.thing_classes == list(OWN_CATEGORIES.values())
    assert metadata.thing_dataset_id_to_contiguous_id == {
        category_id: index for index, category_id in enumerate(OWN_CATEGORIES)
    }
    dataset_dicts, _ = load_dataset_dicts(own_coco["train"])
    labels = {a["category_id"] for record in dataset_dicts for a in record["annotations"]}
    assert labels <= set(range(len(OWN_CATEGORIES))) and len(labels) > 1


def test_an_explicit_num_classes_that_differs_is_an_error(own_coco, small_cfg):
    from retinanet_fl.engine.checks import check_num_classes

    cfg = load_with_train(own_coco["train"], "MODEL.RETINANET.NUM_CLASSES", "4")
    with pytest.raises(ValueError, match="NUM_CLASSES = 4 does not match the 6 categories"):
        check_num_classes(cfg, cfg.DATASETS.TRAIN)


def test_num_classes_from_data_without_known_classes_is_an_error(small_cfg):
    from retinanet_fl.engine.checks import check_num_classes

    cfg = small_cfg("MODEL.RETINANET.NUM_CLASSES", "0")
    with pytest.raises(ValueError, match="NUM_CLASSES is 0 .* no dataset"):
        check_num_classes(cfg, [])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: "{not json", "is not valid JSON"),
        (lambda c: c["images"], "its top level is a list"),
        (lambda c: {"images": c["images"]}, "it has no 'annotations', 'categories'"),
        (lambda c: dict(c, categories=[]), "'categories' is empty"),
        (lambda c: dict(c, categories=[{"id": 1}]), r"categories\[0\] = .* integer 'id' and a"),
        (
            lambda c: dict(c, categories=c["categories"] + [{"id": 3, "name": "x"}]),
            r"category ids \[3\] are used by more than one",
        ),
        (
            lambda c: dict(c, categories=c["categories"] + [{"id": 99, "name": "kiwi"}]),
            r"category names \['kiwi'\] are used by more than one",
        ),
        (lambda c: dict(c, images=[], annotations=[]), "lists no images: the split is empty"),
    ],
)
def test_a_json_that_is_not_usable_coco_stops_naming_the_file(own_coco, tmp_path, edit, message):
    name = write_variant(own_coco, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as error:
        load_with_train(name)
    assert "train_edited.json" in str(error.value)


def test_a_missing_json_names_the_file_and_the_form(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json does not exist. Give datasets"):
        load_with_train(f"coco:{tmp_path}/nowhere.json:{tmp_path}")


def test_a_malformed_name_says_the_form():
    with pytest.raises(ValueError, match="is not of the form 'coco:<path>"):
        load_with_train("coco:")


def test_a_json_path_without_prefix_suggests_the_prefix():
    with pytest.raises(ValueError, match="did you mean 'coco:data/train.json'"):
        load_dataset_dicts("data/train.json")


def test_images_listed_but_missing_stop_naming_them(own_coco, tmp_path):
    def add_missing(content):
        content["images"].append(dict(content["images"][0], id=999, file_name="gone.jpg"))
        return content

    name = write_variant(own_coco, tmp_path, add_missing)
    load_with_train(name)
    with pytest.raises(FileNotFoundError, match=r"1 of 17 image files do not exist: '.*gone.jpg'"):
        prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=False)


def test_missing_images_of_a_dataset_by_path_say_how_to_give_the_image_root(own_coco, tmp_path):
    def move_images(content):
        for image in content["images"]:
            image["file_name"] = "elsewhere/" + image["file_name"]
        return content

    json_file = tmp_path / "train_edited.json"
    name = write_variant(own_coco, tmp_path, move_images)
    load_with_train(name)
    with pytest.raises(FileNotFoundError) as error:
        prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=False)
    _, image_root = split_of(name)
    assert (
        f"The file_name of each image in {json_file} is read relative to the image root "
        f"'{image_root}' (the JSON's folder unless the dataset's name gives one): if the images "
        f"are elsewhere, name their folder last, 'coco:{json_file}:<image_root>'."
    ) in str(error.value)
    assert "register_coco_instances" not in str(error.value)


def test_bad_boxes_are_dropped_or_clipped_with_a_warning_naming_the_file(
    own_coco, tmp_path, caplog
):
    def break_boxes(content):
        content["annotations"][0]["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero width
        content["annotations"][1]["bbox"] = [500.0, 500.0, 5.0, 5.0]  # outside the 64 px image
        content["annotations"][2]["bbox"] = [50.0, 50.0, 40.0, 40.0]  # partly outside
        return content

    name = write_variant(own_coco, tmp_path, break_boxes)
    load_with_train(name)
    with caplog.at_level(logging.WARNING, logger="retinanet_fl.data.sanitize"):
        dataset_dicts = prepare_dataset_dicts([load_dataset_dicts(name)], filter_empty=False)
    (summary,) = [r.getMessage() for r in caplog.records if "train_edited.json" in r.getMessage()]
    assert "1 boxes with zero or negative width or height" in summary
    assert "1 boxes entirely outside the image" in summary
    assert "clipped 1 boxes to the image" in summary
    # The entries, as the user finds them in the JSON (their ids), and what to do.
    with open(split_of(name)[0]) as f:
        first_id = json.load(f)["annotations"][0]["id"]
    assert f"with zero or negative width or height: annotation {first_id} bbox" in summary
    assert "(no id)" not in summary
    assert "bbox [10.0, 10.0, 0.0, 5.0] of " in summary and "fix them in the annotations" in summary
    num_boxes = sum(len(record["annotations"]) for record in dataset_dicts)
    original = sum(len(record["annotations"]) for record in load_dataset_dicts(name)[0])
    assert num_boxes == original - 2


def test_train_and_val_with_different_classes_stop_naming_both(own_coco, tmp_path):
    def rename(content):
        content["categories"][0]["name"] = "banana"
        return content

    val = write_variant(own_coco, tmp_path, rename, split="val")
    with pytest.raises(ValueError, match="have different classes") as error:
        load_config(
            CONFIG, ["DATASETS.TRAIN", f"('{own_coco['train']}',)", "DATASETS.TEST", f"('{val}',)"]
        )
    assert own_coco["train"] in str(error.value) and val in str(error.value)


def test_predict_needs_no_dataset_file(own_coco, tmp_path):
    missing = f"coco:{tmp_path}/moved.json:{tmp_path}"
    cfg = load_config(CONFIG, ["DATASETS.TEST", f"('{missing}',)"], for_inference=True)
    assert missing not in DatasetCatalog.list()
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 6  # the config's synthetic_train


def checkpoint_with(tmp_path, class_metadata):
    path = str(tmp_path / "model.pth")
    torch.save(
        {"model": {}, **({"class_metadata": class_metadata} if class_metadata else {})}, path
    )
    return path


def test_inference_takes_the_checkpoints_classes_first(tmp_path):
    own = {
        "thing_classes": ["apple", "kiwi"],
        "thing_dataset_id_to_contiguous_id": {3: 0, 7: 1},
        "input_format": "BGR",
    }
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", checkpoint_with(tmp_path, own)], for_inference=True)
    assert cfg.MODEL.RETINANET.NUM_CLASSES == 2  # not the config's 6 synthetic classes
    metadata = metadata_for_inference(cfg)
    assert metadata.thing_classes == ["apple", "kiwi"]
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    cfg.MODEL.RETINANET.NUM_CLASSES = 6
    with pytest.raises(ValueError, match="trained on 2 classes .* Set it to 0"):
        metadata_for_inference(cfg)


def test_a_checkpoint_without_classes_loads_with_one_warning(tmp_path, caplog):
    weights = checkpoint_with(tmp_path, None)
    cfg = load_config(
        "", ["MODEL.WEIGHTS", weights, "MODEL.RETINANET.NUM_CLASSES", "3"], for_inference=True
    )
    with caplog.at_level(logging.WARNING, logger="retinanet_fl.data.classes"):
        metadata = metadata_for_inference(cfg)
    assert metadata.get("thing_classes") is None
    assert sum("carries no class names" in r.getMessage() for r in caplog.records) == 1
    # With datasets in the config, their names, said in the warning.
    caplog.clear()
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", weights], for_inference=True)
    with caplog.at_level(logging.WARNING, logger="retinanet_fl.data.classes"):
        metadata = metadata_for_inference(cfg)
    assert metadata.thing_classes == list(SYNTHETIC_CLASSES)
    (warning,) = [
        r.getMessage() for r in caplog.records if "carries no class names" in r.getMessage()
    ]
    assert "naming its classes after the config's datasets" in warning


def test_resuming_with_other_classes_is_an_error():
    state = ClassMetadataState({"thing_classes": ["a", "b"]})
    state.load_state_dict({"thing_classes": ["a", "b"]})  # the same classes: fine
    with pytest.raises(ValueError, match=r"trained on classes \['a', 'c'\]"):
        state.load_state_dict({"thing_classes": ["a", "c"]})
    assert os.path.basename(CONFIG) == "retinanet_R18_FPN_synthetic.yaml"


def test_paths_with_colons_are_read_as_paths(own_coco, tmp_path):
    json_file, image_root = split_of(own_coco["val"])
    folder = tmp_path / "a:b"
    folder.mkdir()
    shutil.copy(json_file, folder / "val.json")
    os.symlink(image_root, tmp_path / "im:ages")
    with_root = f"coco:{folder}/val.json:{tmp_path}/im:ages"
    load_with_train(with_root)
    dataset_dicts, _ = load_dataset_dicts(with_root)
    assert MetadataCatalog.get(with_root).json_file == str(folder / "val.json")
    assert dataset_dicts[0]["file_name"].startswith(f"{tmp_path}/im:ages/")
    # Without an image root: the JSON's folder, colon and all.
    load_with_train(f"coco:{folder}/val.json")
    assert MetadataCatalog.get(f"coco:{folder}/val.json").image_root == str(folder)


@pytest.mark.parametrize(
    "name, missing",
    [
        ("coco:C:\\data\\train.json:C:\\data\\images", "Annotation file C:\\data\\train.json "),
        ("coco:C:/data/train.json", "Annotation file C:/data/train.json "),
        ("coco:D:\\data\\annotations", "Annotation file D:\\data\\annotations "),
        ("voc:C:\\data\\VOC2007", "C:\\data\\VOC2007 is not a Pascal VOC folder"),
    ],
)
def test_a_windows_drive_letter_is_part_of_the_path(name, missing):
    with pytest.raises(FileNotFoundError) as error:
        register_path_datasets([name])
    assert str(error.value).startswith(missing)


def test_canonical_names_have_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voc:2007").mkdir()
    assert canonical_dataset_name("coco:a.json") == f"coco:{tmp_path}/a.json"
    assert canonical_dataset_name("coco:./a.json") == f"coco:{tmp_path}/a.json"
    assert (
        canonical_dataset_name("coco:sub/../a.json:img") == f"coco:{tmp_path}/a.json:{tmp_path}/img"
    )
    assert canonical_dataset_name("voc:VOC:test") == f"voc:{tmp_path}/VOC:test"
    assert canonical_dataset_name("voc:voc:2007") == f"voc:{tmp_path}/voc:2007"  # a folder
    assert canonical_dataset_name("voc:x:a/b") == f"voc:{tmp_path}/x:a/b"  # not a split
    for name in ("synthetic_train", "coco_2017_val", "COCO:a.json"):
        assert canonical_dataset_name(name) == name


def test_a_canonical_name_works_from_another_directory(own_coco, tmp_path, monkeypatch):
    json_file, image_root = split_of(own_coco["val"])
    monkeypatch.chdir(os.path.dirname(json_file))
    name = canonical_dataset_name(
        f"coco:./{os.path.basename(json_file)}:{os.path.relpath(image_root)}"
    )
    monkeypatch.chdir(tmp_path)
    load_with_train(name)
    assert len(load_dataset_dicts(name)[0]) == 4


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("data/train.json", "'coco:data/train.json'"),
        ("COCO:data/train.json", "'coco:data/train.json'"),
        ("Voc:data/VOC2007:test", "'voc:data/VOC2007:test'"),
        ("synthetic_trian", "'synthetic_train'"),
    ],
)
def test_an_unregistered_name_is_named_with_a_suggestion(name, suggestion):
    with pytest.raises(ValueError) as error:
        check_registered(["synthetic_val", name, "also_unknown"])
    message = str(error.value)
    assert message.startswith(f"Dataset {name!r} is not registered (did you mean {suggestion}")
    assert "?). Give datasets by path as DATASETS.TRAIN" in message


def test_a_voc_folder_without_prefix_suggests_voc(tmp_path):
    (tmp_path / "VOC2007" / "Annotations").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"did you mean 'voc:{tmp_path}/VOC2007'"):
        load_dataset_dicts(str(tmp_path / "VOC2007"))
    check_registered(["synthetic_train", "coco:anything.json", "voc:any_folder"])  # no error
