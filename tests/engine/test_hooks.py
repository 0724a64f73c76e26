"""Early stopping and the best checkpoint on a scripted sequence of evaluation metrics."""

import math

import pytest
from detectron2.engine import HookBase
from detectron2.engine.hooks import BestCheckpointer

from retinanet_fl.engine.hooks import EarlyStopping, is_evaluation_iteration, metric_mode
from retinanet_fl.engine.trainer import _StoppableTrainLoop

PERIOD = 10


class _RecordingCheckpointer:
    def __init__(self):
        self.saved = []  # (name, iteration)

    def save(self, name, **kwargs):
        self.saved.append((name, kwargs.get("iteration")))


class _ScriptedEvaluation(HookBase):
    """Puts the next value of a scripted metric at each evaluation, as EvalHook would."""

    def __init__(self, values):
        self.values = list(values)

    def after_step(self):
        if is_evaluation_iteration(self.trainer.iter, PERIOD, self.trainer.max_iter):
            self.trainer.storage.put_scalar("bbox/AP", self.values.pop(0), smoothing_hint=False)


class _Loop(_StoppableTrainLoop):
    def __init__(self, hooks):
        super().__init__()
        self.register_hooks(hooks)
        self.steps = 0

    def run_step(self):
        self.steps += 1


def _train(values, patience, max_iter=100):
    checkpointer = _RecordingCheckpointer()
    stopping = EarlyStopping(PERIOD, "bbox/AP", patience, checkpointer)
    best = BestCheckpointer(PERIOD, checkpointer, "bbox/AP", "max")
    loop = _Loop([_ScriptedEvaluation(values), best, stopping])
    loop.train(0, max_iter)
    return loop, checkpointer, stopping


@pytest.mark.parametrize(
    "values, patience, stop_after_evaluation, best_evaluation",
    [
        # improves, then two evaluations without improvement: stops at the 4th
        ([10, 20, 19, 20, 30, 40, 50, 60, 70, 80], 2, 4, 2),
        # NaN does not count as an improvement
        ([10, float("nan"), 11, 11, 10.5, 12, 13, 14, 15, 16], 2, 5, 3),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 1, None, 10),  # always improving: runs to the end
        ([5, 5, 6, 6, 6, 6, 6, 6, 6, 6], 1, 2, 1),  # equal is not better
    ],
)
def test_patience_stops_at_the_right_evaluation(
    values, patience, stop_after_evaluation, best_evaluation
):
    loop, checkpointer, stopping = _train(values, patience)
    best_saves = [iteration for name, iteration in checkpointer.saved if name == "model_best"]
    finals = [iteration for name, iteration in checkpointer.saved if name == "model_final"]
    if stop_after_evaluation is None:
        assert loop.steps == 100 and not finals and not loop.stop_requested
    else:
        assert loop.steps == PERIOD * stop_after_evaluation
        assert finals == [PERIOD * stop_after_evaluation - 1]
        assert stopping.best_iter == PERIOD * best_evaluation - 1
    # model_best.pth was last written at the best evaluation.
    assert best_saves[-1] == PERIOD * best_evaluation - 1


def test_state_survives_a_checkpoint():
    checkpointer = _RecordingCheckpointer()
    stopping = EarlyStopping(PERIOD, "bbox/AP", 3, checkpointer)
    for iteration, value in enumerate((1.0, 3.0, 2.0)):
        assert stopping.update(value, iteration)
    resumed = EarlyStopping(PERIOD, "bbox/AP", 3, checkpointer)
    resumed.load_state_dict(stopping.state_dict())
    assert resumed.update(2.5, 3)  # the second evaluation without improvement
    assert not resumed.update(2.9, 4)  # the third: stop


def test_losses_are_minimised():
    assert metric_mode("validation/total_loss") == "min"
    assert metric_mode("bbox/AP50") == "max"
    stopping = EarlyStopping(PERIOD, "validation/total_loss", 1, _RecordingCheckpointer())
    assert stopping.update(2.0, 0) and stopping.update(1.5, 1)
    assert not stopping.update(1.6, 2)
    assert not math.isnan(stopping.best) and stopping.best == 1.5


def test_patience_below_one_is_an_error():
    with pytest.raises(ValueError, match="SOLVER.EARLY_STOP_PATIENCE must be >= 1"):
        EarlyStopping(PERIOD, "bbox/AP", 0, _RecordingCheckpointer())
