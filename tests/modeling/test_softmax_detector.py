"""
The detector with CLS_LOSS "softmax_focal" (K + 1 logits per anchor) and with per-class α: head
and prior, training, inference scores, checkpoints, and the Trainer (train, evaluate, resume).
"""

import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from retinanet_fl.engine import AtomicCheckpointer
from retinanet_fl.engine.trainer import Trainer
from retinanet_fl.modeling.head import RetinaNetFocalHead, softmax_prior_bias
from retinanet_fl.modeling.postprocess import class_scores
from tests.modeling.test_head import SHAPES
from tests.modeling.test_meta_arch import NUM_CLASSES, make_batch, our_cfg


def softmax_cfg(*opts):
    cfg = our_cfg()
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.merge_from_list(["MODEL.RETINANET_FL.CLS_LOSS", "softmax_focal", *opts])
    return cfg


def test_head_predicts_k_plus_one_logits_with_background_prior():
    head = RetinaNetFocalHead(
        input_shape=SHAPES, num_classes=5, num_anchors=9, num_convs=1, background_logit=True
    )
    assert head.cls_score.out_channels == 9 * 6 and head.num_logits == 6
    bias = head.cls_score.bias.view(9, 6)
    assert torch.count_nonzero(bias[:, :5]) == 0
    assert bias[:, 5].tolist() == pytest.approx([math.log(5 * 0.99 / 0.01)] * 9)
    # With the Gaussian weights of σ = 0.01, every anchor starts as background with 1 - π.
    logits, _ = head([torch.randn(1, 32, 4, 4) for _ in SHAPES])
    probabilities = logits[0].view(1, 9, 6, 4, 4).softmax(dim=2)
    assert probabilities[:, :, 5].mean().item() == pytest.approx(0.99, abs=1e-3)
    assert probabilities[:, :, :5].mean().item() == pytest.approx(0.01 / 5, rel=0.1)
    assert softmax_prior_bias(0.01, 1) == pytest.approx(math.log(99))
    no_prior = RetinaNetFocalHead(
        input_shape=SHAPES,
        num_classes=5,
        num_anchors=9,
        use_prior_init=False,
        background_logit=True,
    )
    assert torch.count_nonzero(no_prior.cls_score.bias) == 0


def test_softmax_detector_trains_and_infers_scores_without_background():
    torch.manual_seed(0)
    model = build_model(softmax_cfg())
    assert model.background_logit and model.head.num_logits == NUM_CLASSES + 1
    assert model.cls_loss.kernel == "compiled"
    # The untrained, unnormalised backbone gives features in the hundreds: a small step.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    with EventStorage():
        for seed in (1, 2, 3):
            losses = model(make_batch(seed, sizes=((64, 64, 2), (64, 80, 1))))
            assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            assert torch.isfinite(model.head.cls_score.weight.grad).all()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.cls_score.weight, std=0.05)
        model.head.cls_score.bias.zero_()  # scores spread around 1 / (K + 1)
        (output,) = model(make_batch(4, sizes=((64, 64, 0),)))
    instances = output["instances"]
    assert len(instances) > 0
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
    assert instances.pred_classes.max() < NUM_CLASSES  # background is never a detection
    # The scores are the class probabilities p_c, c < K, of the (K + 1)-way softmax.
    logits = torch.randn(20, NUM_CLASSES + 1)
    scores = class_scores(logits.clone(), NUM_CLASSES, background_logit=True)
    torch.testing.assert_close(scores, logits.softmax(dim=1)[:, :NUM_CLASSES])


def test_sigmoid_checkpoint_into_softmax_model_fails_clearly(tmp_path):
    torch.manual_seed(0)
    sigmoid_model = build_model(softmax_cfg("MODEL.RETINANET_FL.CLS_LOSS", "focal"))
    AtomicCheckpointer(sigmoid_model, save_dir=str(tmp_path)).save("sigmoid")
    softmax_model = build_model(softmax_cfg())
    message = (
        r"head.cls_score has 3 logits per anchor, but this head has K = "
        r"MODEL.RETINANET.NUM_CLASSES = 3 classes with K \+ 1 logits per anchor"
    )
    with pytest.raises(ValueError, match=message):
        AtomicCheckpointer(softmax_model).load(str(tmp_path / "sigmoid.pth"))
    with pytest.raises(ValueError, match=message):
        softmax_model.load_state_dict(sigmoid_model.state_dict())
    # The reverse, too; a softmax checkpoint loads into a softmax model.
    AtomicCheckpointer(softmax_model, save_dir=str(tmp_path)).save("softmax")
    with pytest.raises(ValueError, match="4 logits per anchor, but this head has K = "):
        AtomicCheckpointer(sigmoid_model).load(str(tmp_path / "softmax.pth"))
    fresh = build_model(softmax_cfg())
    AtomicCheckpointer(fresh).load(str(tmp_path / "softmax.pth"))
    assert torch.equal(fresh.head.cls_score.weight, softmax_model.head.cls_score.weight)
    # Fine-tuning from a sigmoid model of K + 1 = 4 classes: another class count, so the
    # classification layer is skipped with Detectron2's warning, for either kind of head.
    four_classes = build_model(
        softmax_cfg("MODEL.RETINANET_FL.CLS_LOSS", "focal", "MODEL.RETINANET.NUM_CLASSES", 4)
    )
    AtomicCheckpointer(four_classes, save_dir=str(tmp_path)).save("four_classes")
    for model in (build_model(softmax_cfg("MODEL.RETINANET_FL.CLS_LOSS", "focal")), fresh):
        AtomicCheckpointer(model).load(str(tmp_path / "four_classes.pth"))
        assert torch.equal(model.head.bbox_pred.weight, four_classes.head.bbox_pred.weight)


@pytest.mark.parametrize(
    "opts",
    [
        ("MODEL.RETINANET_FL.CLS_LOSS", "softmax_focal"),
        ("MODEL.RETINANET_FL.ALPHA_PER_CLASS", "effective_number"),
    ],
)
def test_trainer_trains_evaluates_and_resumes(
    opts, tiny_images, tmp_path, train_cfg, register_tiny, caplog
):
    name = register_tiny(tiny_images[1])
    cfg = train_cfg(
        name,
        tmp_path,
        "MODEL.RETINANET_FL.ALPHA_PER_CLASS",
        "inverse_frequency",
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "DATASETS.TEST",
        f"('{name}',)",
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        "0.0",
        *opts,
    )
    trainer = Trainer(cfg)
    loss = trainer.model.cls_loss
    assert loss.alpha_per_class is not None and loss.alpha_per_class.shape == (3,)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(tmp_path / "model_final.pth")
    losses = trainer.storage.history("loss_cls").values()
    assert all(math.isfinite(value) for value, _ in losses)
    results = Trainer.test(cfg, trainer.model)
    assert math.isfinite(results["bbox"]["AP50"]) or math.isnan(results["bbox"]["AP50"])

    # Resume from the checkpoint of iteration 2 (the final one renamed away): one more step,
    # with the rule's α computed again from the training set.
    os.remove(tmp_path / "model_final.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    torch.testing.assert_close(resumed.model.cls_loss.alpha_per_class, loss.alpha_per_class)
    resumed.train()
    assert resumed.iter == cfg.SOLVER.MAX_ITER  # finished
