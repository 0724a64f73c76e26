#!/usr/bin/env python
"""
A backbone pretrained on the synthetic objects, the lab's CPU counterpart of the paper's ImageNet
initialisation: a ResNet trained once to classify small images holding one synthetic object (or
none) and shared by every run that starts from it.

A study names it as ``MODEL.WEIGHTS "synthetic-pretrained://R-18"``; ``tools/ablation.py`` hashes
that URL into the run's digest and hands train_net the cached file (:func:`weights_file`). The first
use trains it (minutes on the CPU) and caches it under ``output/pretrained/``
(``$RETINANET_FL_PRETRAINED_CACHE`` to change); later uses read the file. Path segments change the
recipe, e.g. ``synthetic-pretrained://R-18/iters=300``.

    python tools/synthetic_pretrain.py R-18    # build it ahead of time and print its path

The recipe assumes the detector's input as the shipped configs have it: BGR images normalised with
Detectron2's default ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, and ``MODEL.RESNETS.NORM "BN"``.
"""

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from torch import Tensor, nn

from retinanet_fl.config import get_cfg
from retinanet_fl.data.synthetic.render import SYNTHETIC_CLASSES, render_image

logger = logging.getLogger("synthetic_pretrain")

PREFIX = "synthetic-pretrained://"
CACHE_ENV = "RETINANET_FL_PRETRAINED_CACHE"
DEFAULT_CACHE_DIR = os.path.join("output", "pretrained")
NO_OBJECT = len(SYNTHETIC_CLASSES)  # the label of an image without an object


@dataclass(frozen=True)
class PretrainRecipe:
    """
    How the backbone is pretrained: a (K + 1)-way classification (K synthetic classes, or no object)
    of ``image_size`` px images with one object of up to ``max_object_fraction`` of the side among
    distractors; AdamW with a cosine schedule. Every field is part of the cache key.
    """

    depth: int = 18
    image_size: int = 64
    max_object_fraction: float = 0.6
    num_images: int = 8000
    num_val_images: int = 500
    iters: int = 600
    batch_size: int = 32
    base_lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.depth not in (18, 34, 50, 101):
            raise ValueError(f"PretrainRecipe: depth={self.depth}; use 18, 34, 50 or 101.")
        for name in ("image_size", "num_images", "num_val_images", "iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainRecipe: {name}={getattr(self, name)} must be >= 1.")
        if self.image_size < 32:
            raise ValueError(f"PretrainRecipe: image_size={self.image_size} must be >= 32.")
        if not 0.0 < self.max_object_fraction <= 1.0:
            raise ValueError(
                f"PretrainRecipe: max_object_fraction={self.max_object_fraction} must be in (0, 1]."
            )

    @property
    def digest(self) -> str:
        """10 hex digits naming this recipe in the cache."""
        encoded = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(encoded.encode()).hexdigest()[:10]

    @classmethod
    def from_url(cls, url: str) -> "PretrainRecipe":
        """
        Args:
            url: ``synthetic-pretrained://R-<depth>[/field=value/...]``.

        Returns:
            the default recipe with the URL's depth and fields.
        """
        name, *settings = url[len(PREFIX) :].strip("/").split("/")
        if not url.startswith(PREFIX) or not name.startswith("R-") or not name[2:].isdigit():
            raise ValueError(
                f"{url!r} is not a synthetic-pretrained backbone; write '{PREFIX}R-18' (or R-34, "
                f"R-50, R-101), optionally with recipe fields, e.g. '{PREFIX}R-18/iters=300'."
            )
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "depth"}
        overrides: Dict[str, Any] = {"depth": int(name[2:])}
        for setting in settings:
            key, _, value = setting.partition("=")
            if key not in types or not value:
                raise ValueError(
                    f"{url!r}: {setting!r} is not FIELD=VALUE with a recipe field of "
                    f"{sorted(types)}."
                )
            overrides[key] = types[key](value)
        return cls(**overrides)


def classifier_cfg(depth: int) -> CfgNode:
    """
    Returns:
        the config of Detectron2's ResNet of ``depth`` with batch norm and nothing frozen, returning
        ``res5`` (the module whose parameters become the detector's ``backbone.bottom_up``), and
        Detectron2's default input normalisation (BGR, ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``).
    """
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


def render_classification_set(
    recipe: PretrainRecipe, num_images: int, seed: int
) -> Tuple[Tensor, Tensor]:
    """
    Args:
        recipe: image size and object sizes.
        num_images: how many images.
        seed: of the images' random stream.

    Returns:
        ``(N, 3, S, S)`` uint8 BGR images and ``(N,)`` labels: the class index of the image's
        object, or ``NO_OBJECT`` (one image in K + 1 has none).
    """
    rng = np.random.default_rng(seed)
    size = recipe.image_size
    images = np.empty((num_images, 3, size, size), dtype=np.uint8)
    labels = np.empty(num_images, dtype=np.int64)
    for i in range(num_images):
        num_objects = 0 if rng.random() < 1.0 / (NO_OBJECT + 1) else 1
        image, objects = render_image(
            rng,
            size,
            objects_per_image=(num_objects, num_objects),
            distractors_per_image=1.5,
            max_object_size=recipe.max_object_fraction * size,
        )
        images[i] = image[:, :, ::-1].transpose(2, 0, 1)
        labels[i] = objects[0][0] - 1 if objects else NO_OBJECT
    return torch.from_numpy(images), torch.from_numpy(labels)


class _Classifier(nn.Module):
    def __init__(self, cfg: CfgNode, num_classes: int):
        super().__init__()
        self.backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        self.fc = nn.Linear(self.backbone.output_shape()["res5"].channels, num_classes)
        self.register_buffer(
            "pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1), False
        )

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone((images.float() - self.pixel_mean) / self.pixel_std)["res5"]
        return self.fc(features.mean(dim=(2, 3)))


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(dim=1) for batch in images.split(batch_size)])
    model.train()
    return float((predicted == labels).float().mean())


def _cosine_lr(recipe: PretrainRecipe, iteration: int) -> float:
    warmup = min(50, recipe.iters // 10)
    if iteration < warmup:
        return recipe.base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, recipe.iters - warmup)
    return recipe.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain_backbone(recipe: PretrainRecipe) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """
    Train a classifier by ``recipe``.

    Returns:
        the backbone's state dict under the detector's names (``backbone.bottom_up.*``), and a
        summary (validation accuracy, chance level, seconds).
    """
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    images, labels = render_classification_set(recipe, recipe.num_images, recipe.seed)
    val_images, val_labels = render_classification_set(
        recipe, recipe.num_val_images, recipe.seed + 1_000_003
    )
    model = _Classifier(classifier_cfg(recipe.depth), NO_OBJECT + 1)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.base_lr, weight_decay=recipe.weight_decay
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    for iteration in range(recipe.iters):
        index = torch.randint(len(images), (recipe.batch_size,), generator=generator)
        batch = images[index]
        flip = torch.rand(recipe.batch_size, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(recipe, iteration)
        loss = F.cross_entropy(model(batch), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (iteration + 1) % 50 == 0 or iteration + 1 == recipe.iters:
            logger.info(
                f"Pretraining R-{recipe.depth}: iteration {iteration + 1}/{recipe.iters}, "
                f"loss {loss.item():.3f}"
            )
    summary = {
        "val_accuracy": _accuracy(model, val_images, val_labels, recipe.batch_size),
        "chance_accuracy": float((val_labels == val_labels.mode().values).float().mean()),
        "seconds": time.perf_counter() - start,
        "recipe": dataclasses.asdict(recipe),
    }
    state = {f"backbone.bottom_up.{k}": v for k, v in model.backbone.state_dict().items()}
    return state, summary


def cache_dir() -> Path:
    """Where backbones are cached: ``$RETINANET_FL_PRETRAINED_CACHE``, else output/pretrained."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def pretrained_backbone_path(recipe: PretrainRecipe, directory: Optional[Path] = None) -> Path:
    """
    The cached backbone of ``recipe``, trained and written first if it is not there. Concurrent
    callers (parallel sweeps) wait on a lock, so it is trained once.

    Args:
        recipe: how it is trained.
        directory: the cache (default :func:`cache_dir`).

    Returns:
        a ``.pth`` file in Detectron2's checkpoint format (``{"model": state_dict, ...}``), with a
        ``.json`` summary beside it.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"synthetic_R-{recipe.depth}_{recipe.digest}.pth"
    with open(directory / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            logger.info(f"Pretraining a backbone on synthetic objects into {path} ({recipe})")
            state, summary = pretrain_backbone(recipe)
            tmp = path.with_suffix(".tmp")
            torch.save({"model": state, "__author__": "tools/synthetic_pretrain.py"}, tmp)
            path.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, path)  # atomic: a killed build leaves no half-written cache
            logger.info(
                f"Pretrained: validation accuracy {summary['val_accuracy']:.3f} "
                f"in {summary['seconds']:.0f} s"
            )
    return path


def weights_file(weights: str) -> str:
    """
    Args:
        weights: a ``MODEL.WEIGHTS`` value.

    Returns:
        for a ``synthetic-pretrained://`` URL, the absolute path of its cached backbone (built
        first if missing); any other value as it is.
    """
    if not weights.startswith(PREFIX):
        return weights
    return str(pretrained_backbone_path(PretrainRecipe.from_url(weights)).resolve())


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python tools/synthetic_pretrain.py",
        description="Pretrain (or find in the cache) a backbone on the synthetic objects and print "
        "its path, for MODEL.WEIGHTS.",
    )
    parser.add_argument("name", help="R-18, R-34, R-50 or R-101, optionally with /field=value ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        recipe = PretrainRecipe.from_url(PREFIX + args.name)
    except ValueError as error:
        parser.error(str(error))
    print(pretrained_backbone_path(recipe))


if __name__ == "__main__":
    main()
