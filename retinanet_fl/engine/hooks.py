"""
Training hooks beside Detectron2's: the losses on the validation set at every evaluation, and
early stopping when the evaluation metric stops improving (Detectron2's ``BestCheckpointer``
keeps ``model_best.pth``).
"""

import logging
import math
from typing import Callable, Dict, Iterable, Optional

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["EarlyStopping", "ValidationLoss", "is_evaluation_iteration", "metric_mode"]

logger = logging.getLogger(__name__)

VALIDATION_PREFIX = "validation/"


def is_evaluation_iteration(iteration: int, period: int, max_iter: int) -> bool:
    """
    Returns:
        whether Detectron2's ``EvalHook`` evaluates after ``iteration`` (0-based): every
        ``period`` iterations and after the last.
    """
    next_iter = iteration + 1
    return period > 0 and (next_iter % period == 0 or next_iter >= max_iter)


def metric_mode(metric: str) -> str:
    """Returns: "min" for a loss (a name containing "loss"), else "max" (AP, recall)."""
    return "min" if "loss" in metric else "max"


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ValidationLoss(HookBase):
    """
    At every evaluation, the training losses on the validation set, without gradient, logged as
    ``validation/<loss>`` beside the training losses (metrics.json, TensorBoard). The model runs
    in training mode, since only then does it compute losses, but with its batch norms in
    inference mode and every buffer (batch-norm statistics, the loss normalizer's moving
    average) restored afterwards: validating changes nothing in training.
    """

    def __init__(self, eval_period: int, model: nn.Module, data_loader: Callable[[], Iterable]):
        """
        Args:
            eval_period: ``TEST.EVAL_PERIOD``.
            model: the trained model (DistributedDataParallel or not).
            data_loader: makes a loader of validation batches with their instances; called at
                the first evaluation, and its loader reused at the others.
        """
        self._period = eval_period
        self._model = model
        self._build_data_loader = data_loader
        self._data_loader: Optional[Iterable] = None

    def after_step(self):
        if is_evaluation_iteration(self.trainer.iter, self._period, self.trainer.max_iter):
            losses = self.compute()
            if comm.is_main_process():
                self.trainer.storage.put_scalars(
                    **{VALIDATION_PREFIX + key: value for key, value in losses.items()},
                    smoothing_hint=False,
                )

    def compute(self) -> Dict[str, float]:
        """
        Returns:
            each loss term and their sum ``total_loss``, averaged over the validation batches of
            every worker.
        """
        model = _unwrapped(self._model)
        buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
        was_training = model.training
        model.train()
        norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        for norm in norms:
            norm.eval()
        sums: Dict[str, float] = {}
        num_batches = 0
        try:
            with torch.no_grad():
                if self._data_loader is None:
                    self._data_loader = self._build_data_loader()
                for batch in self._data_loader:
                    loss_dict = model(batch)
                    for key, value in loss_dict.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
                    num_batches += 1
        finally:
            model.train(was_training)
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])
        return _average_over_workers(sums, num_batches)


def _average_over_workers(sums: Dict[str, float], num_batches: int) -> Dict[str, float]:
    gathered = comm.all_gather((sums, num_batches))
    total_batches = sum(count for _, count in gathered)
    if not total_batches:
        return {}
    keys = sorted({key for worker_sums, _ in gathered for key in worker_sums})
    means = {key: sum(s.get(key, 0.0) for s, _ in gathered) / total_batches for key in keys}
    means["total_loss"] = sum(means.values())
    return means


class EarlyStopping(HookBase):
    """
    Stops training when the evaluation metric has not improved for ``patience`` evaluations: it
    logs why, saves ``model_final`` (which ``--resume`` continues from) and asks the trainer to
    stop. Put it after the hook that evaluates. Its state is saved in checkpoints, so a resumed
    run keeps counting.
    """

    def __init__(self, eval_period: int, metric: str, patience: int, checkpointer):
        """
        Args:
            eval_period: ``TEST.EVAL_PERIOD``.
            metric: the storage key of the metric, e.g. "bbox/AP".
            patience: evaluations without improvement that stop training (>= 1).
            checkpointer: saves the final checkpoint.
        """
        if patience < 1:
            raise ValueError(
                f"SOLVER.EARLY_STOP_PATIENCE must be >= 1 to stop early (0 turns it off), got "
                f"{patience}."
            )
        self._period = eval_period
        self._metric = metric
        self._patience = patience
        self._checkpointer = checkpointer
        self._better = (
            (lambda a, b: a < b) if metric_mode(metric) == "min" else (lambda a, b: a > b)
        )
        self.best: Optional[float] = None
        self.best_iter: Optional[int] = None
        self.evaluations_without_improvement = 0

    def after_step(self):
        trainer = self.trainer
        if trainer.iter + 1 >= trainer.max_iter or not is_evaluation_iteration(
            trainer.iter, self._period, trainer.max_iter
        ):
            return
        # The evaluation's results are on the main process; every worker stops with it.
        stop = comm.is_main_process() and self._should_stop()
        if comm.get_world_size() > 1:
            stop = comm.all_gather(stop)[0]
        if stop:
            self._checkpointer.save("model_final", iteration=trainer.iter)
            trainer.stop_requested = True

    def _should_stop(self) -> bool:
        trainer = self.trainer
        latest = trainer.storage.latest().get(self._metric)
        if latest is None:
            logger.warning(f"Early stopping: no {self._metric} was computed at this evaluation.")
            return False
        if self.update(float(latest[0]), trainer.iter):
            return False
        logger.info(
            f"Early stopping at iteration {trainer.iter + 1}: {self._metric} has not improved for "
            f"{self._patience} evaluations (best {self.best:.4g} at iteration {self.best_iter + 1}"
            "; model_best.pth holds it). Saving model_final; --resume continues from it."
        )
        return True

    def update(self, value: float, iteration: int) -> bool:
        """
        Record one evaluation's metric.

        Returns:
            False when training should stop.
        """
        if math.isfinite(value) and (self.best is None or self._better(value, self.best)):
            self.best, self.best_iter = value, iteration
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        return self.evaluations_without_improvement < self._patience

    def state_dict(self) -> Dict:
        return {
            "best": self.best,
            "best_iter": self.best_iter,
            "evaluations_without_improvement": self.evaluations_without_improvement,
        }

    def load_state_dict(self, state: Dict) -> None:
        self.best = state.get("best")
        self.best_iter = state.get("best_iter")
        self.evaluations_without_improvement = state.get("evaluations_without_improvement", 0)
