"""
Fixtures of the export tests: models whose random weights give distinct scores.

A randomly initialised ResNet-FPN has features in the thousands, so the head's sigmoid saturates
at exactly 1.0 for thousands of anchors; their order in top-k and NMS is then arbitrary and no two
implementations can be compared. Rescaling the two prediction convs gives logits of a trained
model's spread (and distinct scores) without changing any code path.
"""

import logging

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from retinanet_fl.config import load_config
from retinanet_fl.model_zoo import get_config_file

# Logit and delta spreads of the rescaled head.
_LOGIT_STD = 1.5
_DELTA_STD = 0.3


@torch.no_grad()
def unsaturate_head(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """
    Scale ``head.cls_score`` and ``head.bbox_pred`` weights so that, on ``image`` (3, H, W), the
    logits (bias excluded) have a standard deviation of 1.5 and the deltas of 0.3.

    Returns:
        the model, changed in place.
    """
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    logits, deltas = model.head([features[f] for f in model.head_in_features])
    for conv, outputs, target in (
        (model.head.cls_score, logits, _LOGIT_STD),
        (model.head.bbox_pred, deltas, _DELTA_STD),
    ):
        spread = torch.cat([(x - conv.bias.view(1, -1, 1, 1)).flatten() for x in outputs]).std()
        conv.weight.mul_(target / spread)
    return model


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) float image of integer pixel values in [0, 255]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


@pytest.fixture(scope="module")
def r50_model():
    """The model-zoo R-50-FPN config on the CPU, random weights, head rescaled at 128×160 px."""
    cfg = load_config(
        get_config_file("retinanet_R50_FPN.yaml"), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    )
    torch.manual_seed(0)
    return unsaturate_head(build_model(cfg).eval(), random_image(128, 160))


@pytest.fixture(scope="session")
def trained_model(own_trained, own_coco):
    """
    The model briefly trained by train_net.py on the user's dataset given by path, for the
    deployment tests: (config file, checkpoint, the overrides that train and test on that data).
    """
    from ..conftest import own_data_opts
    from ..test_train_net import CONFIG

    output_dir, _ = own_trained
    return CONFIG, str(output_dir / "model_final.pth"), own_data_opts(own_coco)


@pytest.fixture
def logged(caplog):
    """``logged(module)``: the text logged by a module's logger, whatever setup_logger did to
    propagation (Detectron2's stops it at "retinanet_fl")."""
    attached = []

    def text(module_name: str) -> str:
        logger = logging.getLogger(module_name)
        if logger not in attached:
            logger.addHandler(caplog.handler)
            attached.append(logger)
        return caplog.text

    yield text
    for logger in attached:
        logger.removeHandler(caplog.handler)
