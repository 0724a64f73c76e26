"""
MODEL.RETINANET_FL.CHANNELS_LAST and COMPILE change how the model runs, not what it computes, in
inference and in training (fp32 and CPU bf16 autocast).
"""

import logging
from typing import List

import torch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from retinanet_fl.modeling import meta_arch
from tests.modeling.test_meta_arch import build_pair, make_batch, our_cfg


def graph_count() -> int:
    """Graphs torch.compile has built in this process (dynamo's counter, as tools/benchmark.py)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _eager_model() -> torch.nn.Module:
    """Our model with Detectron2's initial weights, its scores spread around 0.5 (detections)."""
    _, eager = build_pair()
    with torch.no_grad():
        eager.head.cls_score.bias.zero_()
    return eager


def _build_like(reference: torch.nn.Module, **retinanet_fl_keys) -> torch.nn.Module:
    cfg = our_cfg()
    for key, value in retinanet_fl_keys.items():
        cfg.MODEL.RETINANET_FL[key] = value
    model = build_model(cfg)
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


def test_channels_last_default_trains_and_detects_like_the_contiguous_layout():
    nhwc = _eager_model()  # the default: channels-last
    eager = _build_like(nhwc, CHANNELS_LAST=False)
    conv_weight = nhwc.backbone.bottom_up.stem.conv1.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    assert not eager.backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert nhwc.head.cls_score.weight.is_contiguous(memory_format=torch.channels_last)
    features = nhwc.backbone(nhwc.preprocess_image(make_batch(0)).tensor)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features.values())

    batch = make_batch(1)
    with EventStorage():
        expected, actual = eager(batch), nhwc(batch)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
    sum(expected.values()).backward()
    sum(actual.values()).backward()
    eager_grads = dict(eager.named_parameters())
    for name, param in nhwc.named_parameters():
        torch.testing.assert_close(param.grad, eager_grads[name].grad, rtol=1e-4, atol=1e-6)

    eager.eval(), nhwc.eval()
    with torch.no_grad():
        expected_det, actual_det = eager(batch)[0]["instances"], nhwc(batch)[0]["instances"]
    assert len(actual_det) == len(expected_det) > 0
    torch.testing.assert_close(actual_det.scores, expected_det.scores, rtol=1e-4, atol=1e-6)


def test_compiled_dense_part_keeps_parameter_names_and_detections():
    eager = _eager_model()
    compiled = _build_like(eager, COMPILE=True)
    assert set(compiled.state_dict()) == set(eager.state_dict())
    eager.eval(), compiled.eval()
    batch = make_batch(3, sizes=((64, 96, 0),))
    with torch.no_grad():
        expected, actual = eager(batch)[0]["instances"], compiled(batch)[0]["instances"]
    assert len(actual) == len(expected) > 0
    torch.testing.assert_close(actual.scores, expected.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=1e-4, atol=1e-3
    )


def _train_side_by_side(batches, amp: bool, rtol: float) -> List[int]:
    """
    Train our eager model and a compiled copy (channels-last, the default, and COMPILE) on
    ``batches``, one SGD step each, and check that every step's losses agree within ``rtol``.

    Returns:
        the graphs torch.compile built at each step.
    """
    eager = _eager_model()
    compiled = _build_like(eager, COMPILE=True)
    assert compiled.backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    cfg = our_cfg()
    cfg.SOLVER.BASE_LR = 0.01
    models = {"eager": eager.train(), "compiled": compiled.train()}
    optimizers = {name: build_optimizer(cfg, model) for name, model in models.items()}
    graphs_per_step = []
    for batch in batches:
        before, losses = graph_count(), {}
        for name, model in models.items():
            with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                losses[name] = model(batch)
            sum(losses[name].values()).backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
        for key, expected in losses["eager"].items():
            assert torch.isfinite(expected)
            torch.testing.assert_close(losses["compiled"][key], expected, rtol=rtol, atol=1e-6)
        graphs_per_step.append(graph_count() - before)
    return graphs_per_step


def test_compiled_bf16_training_steps_give_the_eager_losses():
    # At 64 px, C5 is 2×2, so under autocast the compiled backbone also runs its P6/P7 block in
    # fp32 (see modeling/autocast.py). The compiled graph rounds fewer intermediates to bf16
    # (8-bit mantissa, 4e-3 a rounding).
    batches = [make_batch(step, sizes=((64, 64, 2), (64, 64, 1))) for step in range(2)]
    _train_side_by_side(batches, amp=True, rtol=1e-2)


def test_compiled_training_compiles_twice_for_all_image_sizes_and_gives_the_eager_losses():
    # Sizes whose P7 maps are at least 2×2: a size-1 dimension is specialised by dynamo.
    sizes = [(160, 192), (192, 160), (256, 160), (224, 256)]
    batches = [
        make_batch(step, sizes=((height, width, 2), (height - 32, width, 1)))
        for step, (height, width) in enumerate(sizes)
    ]
    torch._dynamo.reset()
    # fp32: the same convolutions, reductions maybe reordered.
    graphs_per_step = _train_side_by_side(batches, amp=False, rtol=1e-4)
    # The first size: a static graph each for the backbone and the head (and the loss kernel's);
    # the second: one dynamic-shape graph each, which every later size reuses.
    assert graphs_per_step[1:] == [2, 0, 0], graphs_per_step


def test_compile_with_the_contiguous_layout_warns_that_it_recompiles(caplog):
    logger = logging.getLogger(meta_arch.__name__)
    logger.addHandler(caplog.handler)
    try:
        _build_like(_eager_model(), COMPILE=True, CHANNELS_LAST=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert any("CHANNELS_LAST True" in r.getMessage() for r in caplog.records)
