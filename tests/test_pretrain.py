"""The synthetic-pretrained backbone: recipe URLs, the cache, and loading it as MODEL.WEIGHTS."""

import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from retinanet_fl import pretrain
from retinanet_fl.data.synthetic.render import SYNTHETIC_CLASSES
from retinanet_fl.pretrain import NO_OBJECT, PretrainRecipe, render_classification_set
from tests.test_train_net import run_train_net

TINY = (
    "synthetic-pretrained://R-18/iters=2/num_images=16/num_val_images=8/batch_size=4/image_size=32"
)


def test_recipe_url_sets_fields_and_names_errors():
    recipe = PretrainRecipe.from_url("synthetic-pretrained://R-34/iters=300/base_lr=0.01")
    assert (recipe.depth, recipe.iters, recipe.base_lr) == (34, 300, 0.01)
    assert recipe.digest != PretrainRecipe(depth=34).digest
    with pytest.raises(ValueError, match="R-18"):
        PretrainRecipe.from_url("synthetic-pretrained://resnet18")
    with pytest.raises(ValueError, match="'iter=3'.*iters"):
        PretrainRecipe.from_url("synthetic-pretrained://R-18/iter=3")
    with pytest.raises(ValueError, match="depth=19"):
        PretrainRecipe.from_url("synthetic-pretrained://R-19")
    with pytest.raises(ValueError, match="image_size=16"):
        PretrainRecipe(image_size=16)


def test_classification_images_hold_their_labelled_object():
    images, labels = render_classification_set(PretrainRecipe(image_size=48), 40, seed=3)
    assert images.shape == (40, 3, 48, 48) and images.dtype == torch.uint8
    assert set(labels.tolist()) <= set(range(NO_OBJECT + 1))
    assert NO_OBJECT == len(SYNTHETIC_CLASSES)
    # Both kinds of image occur, and the draw is reproducible.
    assert (labels == NO_OBJECT).any() and (labels != NO_OBJECT).any()
    again, again_labels = render_classification_set(PretrainRecipe(image_size=48), 40, seed=3)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)


def test_weights_url_trains_once_then_loads_from_the_cache(small_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path))
    cfg = small_cfg("MODEL.RESNETS.NORM", "BN")
    model = build_model(cfg)
    pretrain.register_handler()
    DetectionCheckpointer(model).load(TINY)

    (cached,) = tmp_path.glob("synthetic_R-18_*.pth")
    summary = json.loads(cached.with_suffix(".json").read_text())
    assert 0.0 <= summary["val_accuracy"] <= 1.0 and summary["recipe"]["iters"] == 2
    state = torch.load(cached)["model"]
    bottom_up = model.backbone.bottom_up
    assert state.keys() >= {f"backbone.bottom_up.{k}" for k in bottom_up.state_dict()}
    for name, value in bottom_up.state_dict().items():
        assert torch.equal(value, state[f"backbone.bottom_up.{name}"]), name

    # Later uses read the file: training again would fail here.
    def no_training(recipe):
        raise AssertionError("pretrained again despite the cache")

    monkeypatch.setattr(pretrain, "pretrain_backbone", no_training)
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(TINY)
    loaded = fresh.backbone.bottom_up.res5[0].conv1.weight
    assert torch.equal(loaded, state["backbone.bottom_up.res5.0.conv1.weight"])


def test_train_net_reads_the_weights_url(datasets_root, tmp_path, monkeypatch):
    # A fresh process, where only the Trainer can have registered the URL scheme.
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    opts = ["MODEL.WEIGHTS", TINY, "MODEL.RESNETS.NORM", "BN", "DATASETS.TEST", "()"]
    output = run_train_net(datasets_root, tmp_path / "out", "--eval-only", opts=opts)
    (cached,) = (tmp_path / "cache").glob("synthetic_R-18_*.pth")
    assert f"[Checkpointer] Loading from {cached}" in output
