"""
Detectron2's DefaultTrainer with our evaluators, CPU-capable DDP, atomic checkpoints and clear data
errors.
"""

import contextlib
import functools
import logging
import os
import weakref
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import transforms as T
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import DatasetEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from ..data import RobustDatasetMapper, load_dataset_dicts, prepare_dataset_dicts
from ..data.classes import (
    CHECKPOINT_KEY,
    ClassMetadataState,
    check_model_classes,
    dataset_class_metadata,
)
from ..data.image_check import unreadable_training_fraction
from ..evaluation import build_coco_evaluator
from ..modeling.class_alpha import set_alpha_per_class_from_dataset
from .checkpoint import AtomicCheckpointer
from .checks import (
    check_losses_finite,
    check_model_config,
    check_num_classes,
    warn_unread_anchor_sizes,
)
from .hooks import EarlyStopping, ValidationLoss, metric_mode
from .launch import create_ddp_model
from .optimizer import build_optimizer

DATASETS_HELP = (
    "Detectron2 reads datasets from $DETECTRON2_DATASETS (now '{root}'); COCO must be laid out as "
    "coco/{{train2017,val2017,annotations}} with annotations/instances_{{train2017,val2017}}.json. "
    "To try the project without COCO, use configs/synthetic/retinanet_R18_FPN_synthetic.yaml; "
    'for your own data, give it by path: DATASETS.TRAIN ("coco:train.json:images",).'
)


@contextlib.contextmanager
def explain_missing_dataset(dataset_names: Sequence[str]) -> Iterator[None]:
    """Turn a missing dataset file into an error that says where Detectron2 looks for datasets."""
    try:
        yield
    except FileNotFoundError as error:
        root = os.environ.get("DETECTRON2_DATASETS", "datasets")
        raise FileNotFoundError(
            f"Dataset {', '.join(dataset_names)} not found ({error}). "
            + DATASETS_HELP.format(root=root)
        ) from error


class _FiniteLossMixin:
    """Stops training at the first NaN or infinite loss term, on every worker, naming it."""

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        # Private, but the one place SimpleTrainer.run_step hands over the loss terms between the
        # forward pass and the optimizer step, on every worker (hooks see them after the step).
        # Detectron2 checks only their sum there, on the main process; this names the term.
        check_losses_finite(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class FiniteLossTrainer(_FiniteLossMixin, SimpleTrainer):
    """SimpleTrainer that raises a FloatingPointError naming a non-finite loss term."""


class FiniteLossAMPTrainer(_FiniteLossMixin, AMPTrainer):
    """AMPTrainer that raises a FloatingPointError naming a non-finite loss term."""


class FiniteLossCPUAutocastTrainer(FiniteLossTrainer):
    """
    ``SOLVER.AMP.ENABLED`` on the CPU, where Detectron2's AMPTrainer requires CUDA: each step
    runs under bf16 autocast. bf16 has fp32's exponent range, so gradients need no scaling; the
    model computes its losses in fp32.
    """

    def run_step(self):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            super().run_step()


class _StoppableTrainLoop(TrainerBase):
    """TrainerBase's loop, which also ends when a hook sets ``stop_requested`` (early stopping)."""

    stop_requested = False

    def train(self, start_iter: int, max_iter: int):
        logger = logging.getLogger(__name__)
        logger.info(f"Starting training from iteration {start_iter}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.stop_requested:
                        break
                else:
                    # As TrainerBase: iter == max_iter tells after_train that training finished.
                    self.iter += 1
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()


class Trainer(DefaultTrainer, _StoppableTrainLoop):
    """
    Detectron2's DefaultTrainer with:

    * COCO box AP on the ground truth that training reads (Pascal VOC's evaluator for
      Detectron2's registered VOC datasets);
    * DistributedDataParallel that also works for a model on the CPU (gloo workers);
    * ``SOLVER.OPTIMIZER``: Detectron2's SGD or AdamW;
    * checkpoints written atomically, so a killed run always leaves a loadable latest checkpoint;
    * missing datasets reported with where to put them;
    * with ``TEST.EVAL_PERIOD``: an evaluation report (``OUTPUT_DIR/report``), the losses on the
      validation set, ``model_best.pth`` and early stopping (``SOLVER.EARLY_STOP_PATIENCE``);
    * config mistakes with Detectron2's keys caught when the model and the data are built
      (see :mod:`retinanet_fl.engine.checks`), and a NaN or infinite loss named with its iteration.
    """

    def __init__(self, cfg: CfgNode):
        # Not DefaultTrainer.__init__: its DDP wrapper (Detectron2's create_ddp_model) passes
        # device_ids, which DistributedDataParallel rejects for CPU (gloo) workers, and no hook
        # replaces that wrapper, its step trainer or its checkpointer. The steps are its own.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        dataset = self.build_train_dataset(cfg)
        # Loading the data made its classes known. Every checkpoint carries them, so predict and
        # export name them without the data.
        class_metadata = dataset_class_metadata(cfg.DATASETS.TRAIN, cfg.INPUT.FORMAT) or {}
        check_model_classes(
            class_metadata.get("thing_classes"),
            f"DATASETS.TRAIN {cfg.DATASETS.TRAIN}",
            cfg.DATASETS.TEST,
        )
        # Per-class α computed from the training set (MODEL.RETINANET_FL.ALPHA_PER_CLASS), also
        # when resuming: it is not part of the checkpoint.
        set_alpha_per_class_from_dataset(
            getattr(model, "cls_loss", None), dataset, class_metadata.get("thing_classes")
        )
        data_loader = self.build_train_loader(cfg, dataset)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = _step_trainer_class(cfg)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.checkpointer.add_checkpointable(CHECKPOINT_KEY, ClassMetadataState(class_metadata))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[hooks.HookBase]:
        """
        Detectron2's hooks and, with ``TEST.EVAL_PERIOD`` > 0: the validation losses before each
        evaluation; after it, ``model_best.pth`` by ``TEST.BEST_CHECKPOINT_METRIC`` and early
        stopping after ``SOLVER.EARLY_STOP_PATIENCE`` evaluations without improvement.
        """
        cfg = self.cfg
        ret = super().build_hooks()
        period = cfg.TEST.EVAL_PERIOD
        if period <= 0 or not cfg.DATASETS.TEST:
            return ret
        evaluation = max(i for i, hook in enumerate(ret) if isinstance(hook, hooks.EvalHook))
        after = []
        metric = cfg.TEST.BEST_CHECKPOINT_METRIC
        if metric and comm.is_main_process():
            after.append(
                hooks.BestCheckpointer(period, self.checkpointer, metric, metric_mode(metric))
            )
        if cfg.SOLVER.EARLY_STOP_PATIENCE > 0:
            stopping = EarlyStopping(
                period, metric or "bbox/AP", cfg.SOLVER.EARLY_STOP_PATIENCE, self.checkpointer
            )
            self.checkpointer.add_checkpointable("early_stopping", stopping)
            after.append(stopping)
        ret[evaluation + 1 : evaluation + 1] = after
        if cfg.TEST.VALIDATION_LOSS:
            loader = functools.partial(self.build_validation_loader, cfg, cfg.DATASETS.TEST[0])
            ret.insert(evaluation, ValidationLoss(period, self.model, loader))
        return ret

    @classmethod
    def build_validation_loader(cls, cfg: CfgNode, dataset_name: str):
        """
        Returns:
            batches of one image of ``dataset_name`` with its instances, resized as at test time
            and not augmented: what the validation losses are computed on.
        """
        dataset = cls.build_test_dataset(cfg, dataset_name)
        resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        mapper = RobustDatasetMapper(cfg, True, dataset_size=len(dataset))
        mapper.augmentations = T.AugmentationList([resize])
        return build_detection_test_loader(
            dataset, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_model(cls, cfg: CfgNode):
        """
        Detectron2's ``build_model``, after :func:`check_model_config` (so ``train_net.py
        --eval-only`` checks the config too).
        """
        check_model_config(cfg)
        model = super().build_model(cfg)
        warn_unread_anchor_sizes(cfg, model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model):
        """Detectron2's SGD, or AdamW when ``SOLVER.OPTIMIZER`` says so."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_dataset(cls, cfg: CfgNode) -> List[Dict]:
        """
        Returns:
            the dataset dicts of ``DATASETS.TRAIN``, checked and sanitised, as training reads
            them.
        """
        with explain_missing_dataset(cfg.DATASETS.TRAIN):
            loaded = [load_dataset_dicts(name) for name in cfg.DATASETS.TRAIN]
        # Loading sets the thing_classes of COCO-json datasets that did not have them before.
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        # Missing images and bad boxes are checked, counted and logged here, outside the message
        # about missing dataset files.
        return prepare_dataset_dicts(
            loaded,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            max_unreadable_fraction=unreadable_training_fraction(cfg),
            is_train=True,
        )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, dataset: Optional[List[Dict]] = None):
        """
        Args:
            cfg: the config.
            dataset: the result of :meth:`build_train_dataset`, or None to build it.
        """
        if dataset is None:
            dataset = cls.build_train_dataset(cfg)
        mapper = RobustDatasetMapper(cfg, True, dataset_size=len(dataset))
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_dataset(cls, cfg: CfgNode, dataset_name: str) -> List[Dict]:
        """
        Returns:
            the dataset dicts of a test set, checked and sanitised (images without boxes kept).
        """
        with explain_missing_dataset([dataset_name]):
            loaded = [load_dataset_dicts(dataset_name)]
        check_num_classes(cfg, [dataset_name])
        return prepare_dataset_dicts(loaded, filter_empty=False)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        dataset = cls.build_test_dataset(cfg, dataset_name)
        return build_detection_test_loader(
            dataset, mapper=RobustDatasetMapper(cfg, False), num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str = None
    ) -> DatasetEvaluator:
        """
        Returns:
            COCO box AP for COCO-format datasets and datasets by path (``coco:``, ``voc:``), on
            the ground truth that training reads (see :func:`build_coco_evaluator`); Detectron2's
            PascalVOCDetectionEvaluator for its registered Pascal VOC datasets.
        """
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type != "coco":
            raise ValueError(
                f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}'; this trainer "
                "evaluates box detection on COCO-format ('coco') or Pascal VOC ('pascal_voc') "
                "datasets."
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        report_dir = None
        if cfg.TEST.REPORT:
            # One report per test set: OUTPUT_DIR/report for the first, report_1 ... for others.
            names = list(cfg.DATASETS.TEST)
            index = names.index(dataset_name) if dataset_name in names else 0
            report_dir = os.path.join(cfg.OUTPUT_DIR, "report" + (f"_{index}" if index else ""))
        with explain_missing_dataset([dataset_name]):
            return build_coco_evaluator(
                dataset_name,
                output_folder,
                report_dir=report_dir,
                metrics_file=os.path.join(cfg.OUTPUT_DIR, "metrics.json"),
            )


def _step_trainer_class(cfg: CfgNode) -> type:
    """The trainer of one step: bf16 autocast for ``SOLVER.AMP.ENABLED`` on the CPU, else
    Detectron2's, both stopping at a non-finite loss."""
    if not cfg.SOLVER.AMP.ENABLED:
        return FiniteLossTrainer
    on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
    return FiniteLossCPUAutocastTrainer if on_cpu else FiniteLossAMPTrainer
