"""Per-class α (MODEL.RETINANET_FL.ALPHA_PER_CLASS): definitions, rules, validation, config."""

import logging

import pytest
import torch
import torch.nn.functional as F

from retinanet_fl import get_cfg
from retinanet_fl.engine import checks
from retinanet_fl.layers.focal_loss import (
    sigmoid_focal_loss_from_labels,
    sigmoid_focal_loss_star_from_labels,
)
from retinanet_fl.modeling import class_alpha
from retinanet_fl.modeling.class_alpha import (
    alpha_from_counts,
    count_annotations,
    parse_alpha_per_class,
    set_alpha_per_class_from_dataset,
)
from retinanet_fl.modeling.cls_losses import build_cls_loss

NUM_CLASSES = 3
PER_CLASS = [0.1, 0.5, 0.9]


def config(name: str, alpha_per_class, alpha: float = 0.25):
    cfg = get_cfg()
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = alpha
    cfg.MODEL.RETINANET_FL.CLS_LOSS = name
    cfg.MODEL.RETINANET_FL.ALPHA_PER_CLASS = alpha_per_class
    return cfg


def batch(num_logits: int = NUM_CLASSES, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 40, num_logits, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(-1, NUM_CLASSES + 1, (2, 40), generator=generator)
    return logits, labels, torch.zeros(40, 4)


def sigmoid_reference(logits, labels, alpha_c, gamma):
    """Σ over non-ignored anchors r and classes c of the focal loss weighted by α_c for the
    anchor's own class and 1 - α_c for every other class, in float64."""
    valid = labels >= 0
    x = logits[valid]
    t = F.one_hot(labels[valid], NUM_CLASSES + 1)[:, :NUM_CLASSES].double()
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha = torch.tensor(alpha_c, dtype=torch.float64)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return -(alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).sum()


@pytest.mark.parametrize("name", ("focal", "focal_star", "ce", "softmax_focal"))
def test_list_with_equal_values_equals_scalar_alpha(name):
    num_logits = NUM_CLASSES + (name == "softmax_focal")
    logits, labels, anchors = batch(num_logits)
    scalar = build_cls_loss(config(name, None, alpha=0.4))
    per_class = build_cls_loss(config(name, [0.4] * NUM_CLASSES, alpha=0.25))
    assert per_class.alpha_per_class is not None
    grads = []
    values = []
    for loss in (scalar, per_class):
        x = logits.clone().requires_grad_()
        values.append(loss(x, labels, anchors))
        grads.append(torch.autograd.grad(values[-1], x)[0])
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kernel", ("compiled", "eager"))
def test_sigmoid_per_class_alpha_matches_float64_formula(kernel):
    logits, labels, _ = batch()
    flat_logits, flat_labels = logits.flatten(0, 1), labels.flatten()
    for gamma in (0.0, 2.0):
        x = flat_logits.clone().requires_grad_()
        value = sigmoid_focal_loss_from_labels(
            x, flat_labels, torch.tensor(PER_CLASS), gamma, "sum", kernel
        )
        (grad,) = torch.autograd.grad(value, x)
        reference_x = flat_logits.clone().requires_grad_()
        expected = sigmoid_reference(reference_x, flat_labels, PER_CLASS, gamma)
        (expected_grad,) = torch.autograd.grad(expected, reference_x)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-12)
    # The detector's loss from the config is the same function.
    loss = build_cls_loss(config("focal", PER_CLASS))
    torch.testing.assert_close(
        loss(logits, labels, None),
        sigmoid_reference(flat_logits, flat_labels, PER_CLASS, 2.0),
        rtol=1e-6,
        atol=0,
    )
    # FL*: every element weighted like the focal loss's.
    star = sigmoid_focal_loss_star_from_labels(
        flat_logits, flat_labels, 2.0, 1.0, PER_CLASS, "none", kernel
    )
    unweighted = sigmoid_focal_loss_star_from_labels(
        flat_logits, flat_labels, 2.0, 1.0, -1.0, "none", kernel
    )
    t = F.one_hot(flat_labels.clamp(min=0), NUM_CLASSES + 1)[:, :NUM_CLASSES].double()
    alpha = torch.tensor(PER_CLASS, dtype=torch.float64)
    torch.testing.assert_close(star, unweighted * (alpha * t + (1 - alpha) * (1 - t)))


def test_rules_on_known_counts():
    counts = [100, 10, 0]  # a class without annotations counts as 1
    inverse = alpha_from_counts(counts, "inverse_frequency", 0.25)
    weights = torch.tensor([1 / 100, 1 / 10, 1.0], dtype=torch.float64)
    expected = (weights * 3 * 0.25 / weights.sum()).clamp(0, 1)
    torch.testing.assert_close(inverse, expected)
    assert inverse[2] == pytest.approx(0.75 / 1.11) and inverse.mean() == pytest.approx(0.25)
    # Effective number (Cui et al.): w = (1 - β) / (1 - β^n), β = 0.999.
    effective = alpha_from_counts([1000, 100, 10], "effective_number", 0.25)
    beta = 0.999
    weights = torch.tensor([(1 - beta) / (1 - beta**n) for n in (1000, 100, 10)]).double()
    torch.testing.assert_close(effective, weights * 0.75 / weights.sum())
    assert effective.mean() == pytest.approx(0.25) and effective.max() < 1
    # Equal counts: every α_c is the mean; a dominant weight is clipped at 1.
    torch.testing.assert_close(
        alpha_from_counts([5, 5, 5], "effective_number", 0.3), torch.full((3,), 0.3).double()
    )
    assert alpha_from_counts([1000, 1000, 1], "inverse_frequency", 0.75)[2] == 1.0


def test_count_annotations_skips_crowd_boxes():
    records = [
        {"annotations": [{"category_id": 0}, {"category_id": 2, "iscrowd": 1}]},
        {"annotations": [{"category_id": 2}, {"category_id": 0}]},
        {},
    ]
    assert count_annotations(records, NUM_CLASSES) == [2, 0, 1]


def test_rule_is_computed_from_the_dataset_and_logged(caplog):
    loss = build_cls_loss(config("softmax_focal", "inverse_frequency"))
    with pytest.raises(RuntimeError, match="computed from the training set's annotation counts"):
        loss.loss_alpha
    records = [{"annotations": [{"category_id": c} for c in (0, 0, 0, 1, 2, 2)]}]
    with caplog.at_level(logging.INFO, logger=class_alpha.__name__):
        set_alpha_per_class_from_dataset(loss, records, ["circle", "square", "star"])
    expected = alpha_from_counts([3, 1, 2], "inverse_frequency", 0.25)
    torch.testing.assert_close(loss.loss_alpha, expected)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "ALPHA_PER_CLASS ('inverse_frequency', mean FOCAL_LOSS_ALPHA = 0.25)" in message
    assert "| square |" in message and f"{expected[1].item():.4f}" in message


@pytest.mark.parametrize("name, warns", [("ce", True), ("focal", True), ("softmax_focal", False)])
def test_alpha_of_one_warns_for_sigmoid_losses(name, warns, caplog):
    """A 1:50 class balance at a mean α of .75 clips the rarest class at α_c = 1."""
    loss = build_cls_loss(config(name, "inverse_frequency", alpha=0.75))
    records = [{"annotations": [{"category_id": c} for c in [0] * 50 + [1] * 10 + [2]]}]
    with caplog.at_level(logging.INFO, logger=class_alpha.__name__):
        set_alpha_per_class_from_dataset(loss, records, ["circle", "square", "star"])
    assert loss.loss_alpha[2] == 1.0 and loss.loss_alpha[0] < 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warns:
        (message,) = warnings
        assert "α_c = 1 to star:" in message and "lower MODEL.RETINANET.FOCAL_LOSS_ALPHA" in message
    else:
        assert not warnings  # the softmax loss weights background rows by 1 - mean(α_c)


@pytest.mark.parametrize(
    "value, message",
    [
        ([0.1, 0.2], r"got 2 values \[0.1, 0.2\]"),
        ([0.1, 0.2, 1.5], r"values in \[0, 1\].*got 3 values \[0.1, 0.2, 1.5\]"),
        ([0.1, -0.2, 0.5], r"got 3 values"),
        ([0.1, float("nan"), 0.5], r"got 3 values"),
        ("inverse_freq", r"one of \('inverse_frequency', 'effective_number'\); got 'inverse_freq'"),
        (["a", "b", "c"], "got"),
    ],
)
def test_bad_values_name_the_key(value, message):
    with pytest.raises(ValueError, match="MODEL.RETINANET_FL.ALPHA_PER_CLASS must be") as error:
        build_cls_loss(config("focal", value))
    assert error.match(message)


def test_off_values_and_rules_need_a_mean_alpha():
    for off in (None, "", [], ()):
        assert parse_alpha_per_class(off, NUM_CLASSES) is None
        assert build_cls_loss(config("focal", off)).loss_alpha == 0.25
    with pytest.raises(ValueError, match="FOCAL_LOSS_ALPHA, which must then be in"):
        build_cls_loss(config("ce", "effective_number", alpha=-1.0))


def test_config_accepts_a_list_or_a_rule_from_the_command_line(check_warnings):
    cfg = get_cfg()
    assert cfg.MODEL.RETINANET_FL.ALPHA_PER_CLASS is None
    cfg.merge_from_list(["MODEL.RETINANET_FL.ALPHA_PER_CLASS", "[0.1, 0.5, 0.9]"])
    assert cfg.MODEL.RETINANET_FL.ALPHA_PER_CLASS == PER_CLASS
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RETINANET_FL.ALPHA_PER_CLASS", "effective_number"])
    assert cfg.MODEL.RETINANET_FL.ALPHA_PER_CLASS == "effective_number"
    # Read by four losses, not by OHEM.
    cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    for name in ("focal", "focal_star", "ce", "softmax_focal"):
        cfg.MODEL.RETINANET_FL.CLS_LOSS = name
        checks.check_model_config(cfg)
        assert check_warnings() == [], name
    cfg.MODEL.RETINANET_FL.CLS_LOSS = "ohem"
    checks.check_model_config(cfg)
    (warning,) = check_warnings()
    assert warning.startswith("MODEL.RETINANET_FL.ALPHA_PER_CLASS set but not used: only ")
    assert "'softmax_focal' reads them, and it is 'ohem'" in warning


def test_list_and_rule_survive_dump_and_merge(tmp_path):
    for value in (PER_CLASS, "inverse_frequency", None):
        cfg = get_cfg()
        cfg.MODEL.RETINANET_FL.ALPHA_PER_CLASS = value
        path = tmp_path / "config.yaml"
        path.write_text(cfg.dump())
        loaded = get_cfg()
        loaded.merge_from_file(str(path))
        assert loaded.MODEL.RETINANET_FL.ALPHA_PER_CLASS == value
