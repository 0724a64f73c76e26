"""
The models and inputs of the train and inference benchmarks: Detectron2's RetinaNet R-50-FPN and
our ``FocalLossRetinaNet`` with identical weights, torchvision's RetinaNet, noise batches, and the
batch-norm calibration that gives random weights a trained network's activation scale.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import nn

from ..config import get_cfg
from .results import DETECTRON2, OURS, ModelSettings

__all__ = [
    "CONFIG_FILE",
    "ModelOptions",
    "detectron2_retinanet_cfg",
    "calibrate_batch_norms",
    "build_detectron2_pair",
    "build_torchvision_retinanet",
    "make_image",
    "make_batch",
]

# Detectron2's model-zoo config that every benchmarked model is built from.
CONFIG_FILE = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"


@dataclass(frozen=True)
class ModelOptions:
    """
    The options that the train and inference benchmarks share.

    Attributes:
        device: "cpu" or "cuda[:index]".
        image_sizes: sides of the square images, in pixels; one setting each.
        precisions: "fp32" and/or "amp" (autocast: bf16 on the CPU, fp16 on CUDA); one each.
        iters: measured iterations per model and setting.
        warmup: unmeasured iterations first (the first one compiles our loss).
        threads: torch threads.
        depth: ResNet depth of every model.
        num_classes: K.
        loss_kernel: ``MODEL.RETINANET_FL.LOSS_KERNEL``.
        memory_repeats: calls per model for peak memory (0: not measured).
        profile: whether to profile operators.
        seed: of the weights, the inputs and the shuffles.
        ours_opts: config overrides of our model alone, ``KEY VALUE`` strings (e.g.
            ``MODEL.RETINANET_FL.COMPILE True``).
    """

    device: str
    image_sizes: Sequence[int]
    precisions: Sequence[str]
    iters: int
    warmup: int
    threads: int
    depth: int
    num_classes: int
    loss_kernel: str
    memory_repeats: int
    profile: bool
    seed: int
    ours_opts: Sequence[str] = ()

    def settings(self) -> ModelSettings:
        """
        Returns:
            The options as the results record them.
        """
        return ModelSettings(
            config=f"Detectron2 {CONFIG_FILE}"
            + (f" with RESNETS.DEPTH {self.depth}" if self.depth != 50 else "")
            + (f"; ours also with `{' '.join(self.ours_opts)}`" if self.ours_opts else ""),
            num_classes=self.num_classes,
            image_sizes=list(self.image_sizes),
            precisions=list(self.precisions),
            warmup=self.warmup,
            iters=self.iters,
            memory_repeats=self.memory_repeats,
            threads=self.threads,
        )


def detectron2_retinanet_cfg(
    depth: int, num_classes: int, score_thresh: float, loss_kernel: str, device: str
) -> CfgNode:
    """
    Detectron2's model-zoo RetinaNet R-50-FPN config (``COCO-Detection/retinanet_R_50_FPN_1x``)
    with our keys added, random weights, and the ResNet depth changed when ``depth`` is not 50.

    Args:
        depth: ResNet depth (18, 34, 50 or 101).
        num_classes: ``MODEL.RETINANET.NUM_CLASSES``.
        score_thresh: ``MODEL.RETINANET.SCORE_THRESH_TEST``.
        loss_kernel: ``MODEL.RETINANET_FL.LOSS_KERNEL`` ("compiled" or "eager").
        device: ``MODEL.DEVICE``.

    Returns:
        The config; ``MODEL.META_ARCHITECTURE`` is Detectron2's ``RetinaNet``.
    """
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(CONFIG_FILE))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.RETINANET_FL.LOSS_KERNEL = loss_kernel
    # Small, so that many iterations on one batch from random weights stay finite.
    cfg.SOLVER.BASE_LR = 0.001
    return cfg


def calibrate_batch_norms(backbone_forward: Callable[[], object], model: nn.Module) -> None:
    """
    Set the statistics of every (frozen) batch norm of ``model`` to those of its input in one
    ``backbone_forward()``, layer after layer. With random weights and the identity statistics
    that models are built with, activations grow through the residual blocks (a classification
    loss of ~1e5 at R-50); calibrated, features have unit scale as in a trained network.

    Args:
        backbone_forward: runs ``model``'s backbone (with its pre-processing) on an input.
        model: its batch norms are set in place; its train/eval mode is kept.
    """

    def set_statistics(module: nn.Module, inputs: Tuple[torch.Tensor]) -> None:
        x = inputs[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    norms = [
        module
        for module in model.modules()
        if isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
    ]
    handles = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    was_training = model.training
    try:
        # Eval mode, so that BatchNorm2d normalises with the statistics just set.
        model.eval()
        with torch.no_grad():
            backbone_forward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def build_detectron2_pair(
    cfg: CfgNode, seed: int, image_size: int, ours_opts: Sequence[str] = ()
) -> Dict[str, nn.Module]:
    """
    Detectron2's ``RetinaNet`` from ``cfg`` (batch norms calibrated on a noise image of
    ``image_size``) and our ``FocalLossRetinaNet`` from the same config with only
    ``MODEL.META_ARCHITECTURE`` changed, loaded with Detectron2's weights.

    Args:
        cfg: from :func:`detectron2_retinanet_cfg`.
        seed: of the weights and of the calibration image.
        image_size: side of the calibration image.
        ours_opts: overrides of our model's config alone, ``KEY VALUE`` strings.

    Returns:
        ``{OURS: ours, DETECTRON2: Detectron2's}``.
    """
    torch.manual_seed(seed)
    detectron2_model = build_model(cfg)
    images = make_batch(1, image_size, 1, 0, seed, detectron2_model.device)
    calibrate_batch_norms(
        lambda: detectron2_model.backbone(detectron2_model.preprocess_image(images).tensor),
        detectron2_model,
    )
    our_cfg = cfg.clone()
    our_cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    our_cfg.merge_from_list(list(ours_opts))
    ours = build_model(our_cfg)
    ours.load_state_dict(detectron2_model.state_dict(), strict=True)
    return {OURS: ours, DETECTRON2: detectron2_model}


def build_torchvision_retinanet(
    depth: int,
    num_classes: int,
    image_size: int,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    detections_per_image: int,
) -> nn.Module:
    """
    torchvision's RetinaNet with random weights (no download), taking ``image_size`` square
    images as they are (its transform resizes to ``min_size`` / ``max_size``). Depth 50 is
    ``retinanet_resnet50_fpn``; other depths swap the ResNet inside the same construction.

    Args:
        depth: ResNet depth.
        num_classes: K.
        image_size: side of the images it will take; its batch norms are calibrated on one.
        score_thresh: its ``score_thresh``.
        topk_candidates: its ``topk_candidates`` (per level).
        nms_thresh: its ``nms_thresh``.
        detections_per_image: its ``detections_per_img``.

    Returns:
        The model, on the CPU, in train mode.
    """
    from torchvision.models.detection import RetinaNet, retinanet_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    kwargs = dict(
        num_classes=num_classes,
        min_size=image_size,
        max_size=image_size,
        score_thresh=score_thresh,
        topk_candidates=topk_candidates,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_image,
    )
    if depth == 50:
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    else:
        backbone = resnet_fpn_backbone(
            backbone_name=f"resnet{depth}",
            weights=None,
            norm_layer=nn.BatchNorm2d,
            trainable_layers=5,
            returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        model = RetinaNet(backbone, **kwargs)
    image = torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    calibrate_batch_norms(lambda: model.backbone(model.transform([image])[0].tensors), model)
    return model


def make_image(
    height: int,
    width: int,
    num_classes: int,
    num_boxes: int,
    generator: torch.Generator,
    device: torch.device = torch.device("cpu"),
) -> Dict[str, object]:
    """
    One Detectron2-style input on ``device``: a uint8 ``(3, height, width)`` noise image, as
    Detectron2's mapper delivers it, with ``num_boxes`` random GT boxes of 32 px to half its
    short side.

    Args:
        height, width: of the image.
        num_classes: GT classes are drawn from ``range(num_classes)``.
        num_boxes: GT boxes.
        generator: of the image and boxes.
        device: where the input is put.

    Returns:
        A dict with ``"image"`` and ``"instances"`` (``gt_boxes``, ``gt_classes``).
    """
    box_size = 32 + torch.rand(num_boxes, 2, generator=generator) * max(
        min(height, width) / 2 - 32, 1
    )
    top_left = torch.rand(num_boxes, 2, generator=generator) * (
        torch.tensor([width, height]) - box_size
    )
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.cat([top_left, top_left + box_size], dim=1))
    instances.gt_classes = torch.randint(num_classes, (num_boxes,), generator=generator)
    image = torch.randint(256, (3, height, width), generator=generator, dtype=torch.uint8)
    return {"image": image.to(device), "instances": instances.to(device)}


def make_batch(
    batch_size: int,
    image_size: int,
    num_classes: int,
    num_boxes: int,
    seed: int,
    device: torch.device = torch.device("cpu"),
) -> List[Dict[str, object]]:
    """
    Square inputs from :func:`make_image`.

    Args:
        batch_size: images.
        image_size: their side.
        num_classes: GT classes are drawn from ``range(num_classes)``.
        num_boxes: GT boxes per image.
        seed: of the images and boxes.
        device: where the batch is put.

    Returns:
        Dicts with ``"image"`` and ``"instances"`` (``gt_boxes``, ``gt_classes``).
    """
    generator = torch.Generator().manual_seed(seed)
    return [
        make_image(image_size, image_size, num_classes, num_boxes, generator, device)
        for _ in range(batch_size)
    ]
