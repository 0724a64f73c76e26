"""tools/synthetic_pretrain.py: recipe URLs, the cache, and the backbone as a detector's weights."""

import json

import pytest
import synthetic_pretrain
import torch
from detectron2.modeling import build_model
from synthetic_pretrain import NO_OBJECT, PretrainRecipe, render_classification_set

from retinanet_fl.data.synthetic.render import SYNTHETIC_CLASSES
from retinanet_fl.engine.checkpoint import AtomicCheckpointer

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
    monkeypatch.setenv(synthetic_pretrain.CACHE_ENV, str(tmp_path))
    path = synthetic_pretrain.weights_file(TINY)

    (cached,) = tmp_path.glob("synthetic_R-18_*.pth")
    assert path == str(cached.resolve())
    summary = json.loads(cached.with_suffix(".json").read_text())
    assert 0.0 <= summary["val_accuracy"] <= 1.0 and summary["recipe"]["iters"] == 2
    # The detector's checkpointer loads it as the backbone's bottom_up, parameter for parameter.
    model = build_model(small_cfg("MODEL.RESNETS.NORM", "BN"))
    AtomicCheckpointer(model).load(path)
    state = torch.load(cached)["model"]
    bottom_up = model.backbone.bottom_up
    assert state.keys() >= {f"backbone.bottom_up.{k}" for k in bottom_up.state_dict()}
    for name, value in bottom_up.state_dict().items():
        assert torch.equal(value, state[f"backbone.bottom_up.{name}"]), name

    # Later uses read the file: training again would fail here.
    def no_training(recipe):
        raise AssertionError("pretrained again despite the cache")

    monkeypatch.setattr(synthetic_pretrain, "pretrain_backbone", no_training)
    assert synthetic_pretrain.weights_file(TINY) == path
    assert synthetic_pretrain.weights_file("model_final.pth") == "model_final.pth"


def test_command_line_prints_the_cached_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(synthetic_pretrain.CACHE_ENV, str(tmp_path))
    synthetic_pretrain.main([TINY[len(synthetic_pretrain.PREFIX) :]])
    (cached,) = tmp_path.glob("synthetic_R-18_*.pth")
    assert capsys.readouterr().out.strip() == str(cached)
    with pytest.raises(SystemExit):
        synthetic_pretrain.main(["resnet18"])
    assert "is not a synthetic-pretrained backbone" in capsys.readouterr().err
