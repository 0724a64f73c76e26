r"""
Train or evaluate FocalLossRetinaNet with Detectron2's trainer, in Detectron2's train_net.py style;
the repository's ``train_net.py`` and ``python -m retinanet_fl.train_net`` run it.

    python train_net.py --config-file configs/retinanet_R50_FPN.yaml --num-gpus 8
    python train_net.py --config-file configs/retinanet_R50_FPN.yaml --eval-only \
        MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume  # continue from OUTPUT_DIR/last_checkpoint
    torchrun --nproc_per_node 2 train_net.py --config-file ...

Without CUDA, ``--num-gpus N`` runs N worker processes on the CPU with gloo.
"""

import logging

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import retinanet_fl  # noqa: F401  registers our model, anchors, head, losses and datasets
from retinanet_fl.config import load_config
from retinanet_fl.data.classes import CHECKPOINT_KEY, check_model_classes
from retinanet_fl.engine import AtomicCheckpointer, Trainer, launch
from retinanet_fl.modeling.tta import DenseDetectorWithTTA

logger = logging.getLogger(__name__)


def setup(args):
    # Evaluation needs only the model and DATASETS.TEST: the training data may be absent, and the
    # checkpoint's classes come first.
    cfg = load_config(args.config_file, args.opts, for_inference=args.eval_only)
    cfg.freeze()
    default_setup(cfg, args)
    # Our modules log what the data checks dropped and what the config validation warns about.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="retinanet_fl")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        check_model_classes(
            (checkpoint.get(CHECKPOINT_KEY) or {}).get("thing_classes"),
            checkpointer.get_checkpoint_file() if args.resume else cfg.MODEL.WEIGHTS,
            cfg.DATASETS.TEST,
        )
        if cfg.TEST.AUG.ENABLED:
            # Evaluate the model on every augmented copy of each image, detections merged.
            logger.info(
                f"Test-time augmentation: min sizes {list(cfg.TEST.AUG.MIN_SIZES)}, max size "
                f"{cfg.TEST.AUG.MAX_SIZE}, flip {cfg.TEST.AUG.FLIP}"
            )
            model = DenseDetectorWithTTA(cfg, model)
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None) -> None:
    """Parse Detectron2's training arguments and launch :func:`main` on every worker."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
