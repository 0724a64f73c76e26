"""
The ``successors`` part of tools/benchmark.py: a training iteration and an inference of every row
of the successors table (``configs/ablations/table_successors.yaml``: FL, FL + ATSS, QFL + ATSS,
VFL + ATSS, VFL + ATSS with one anchor per position), each timed against the focal loss's row.

Each row is our ``FocalLossRetinaNet`` on the benchmark's config (Detectron2's R-50-FPN, random
weights, batch norms calibrated) with the row's overrides, holding the weights of the ``train``
part's model: the FL row is that model. The rows differ in what the assignment, the losses and the
anchors cost: ATSS's per-box top-k, the IoU targets of QFL and VFL (the decoded boxes), GIoU, and
nine anchors or one.
"""

import copy
from typing import Dict, List

import ablation
import torch

REFERENCE_ROW = "fl"


def _row_model(cfg, opts, reference: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """
    Returns:
        our model of ``cfg`` with ``opts`` (``--ours-opts`` and a row's overrides), holding the
        ``reference`` weights wherever their shapes agree (all but the one-anchor row's
        prediction layers, left at their initialisation).
    """
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "FocalLossRetinaNet"
    cfg.merge_from_list(list(opts))
    model = build_model(cfg)
    own = model.state_dict()
    shared = {name: value for name, value in reference.items() if own[name].shape == value.shape}
    model.load_state_dict(shared, strict=False)
    return model


def successors_cases(args, device: torch.device, helpers) -> List:
    """
    Per image size: a training iteration (``--train-batch-size`` images) and an inference (one
    image) of each row, the pairs against FL's.

    Args:
        args: the benchmark's arguments.
        device: where the models run.
        helpers: tools/benchmark.py itself (Case, TrainStep, detectron2_cfg, inference, ...).
    """
    rows = ablation.load_experiment("successors").rows
    pairs = [(row.name, REFERENCE_ROW) for row in rows if row.name != REFERENCE_ROW]
    cases = []
    for size in args.image_sizes:
        cfg = helpers.detectron2_cfg(args.depth, args.num_classes, args.device, args.score_thresh)
        batch = helpers.make_batch(
            args.train_batch_size, size, args.num_classes, helpers.NUM_BOXES, args.seed, device
        )
        image = helpers.make_batch(1, size, args.num_classes, 0, args.seed + size, device)[0]
        inputs = [{"image": image["image"]}]
        reference = helpers.build_pair(cfg, args.seed, size, args.ours_opts)["ours"].state_dict()
        train, inference = {}, {}
        for row in rows:
            model = _row_model(cfg, [*args.ours_opts, *row.opts], reference)
            # The training step changes its model's weights and mode: inference runs a copy.
            inference[row.name] = helpers.inference(
                copy.deepcopy(model).eval(), inputs, False, device
            )
            train[row.name] = helpers.TrainStep(model, cfg, batch, False)
        cases += [
            helpers.Case(
                "successors",
                f"{size} px, batch {args.train_batch_size}, train",
                train,
                pairs,
                summarize=lambda losses: losses,
            ),
            helpers.Case(
                "successors",
                f"{size} px, batch 1, inference",
                inference,
                pairs,
                summarize=helpers._detections,
            ),
        ]
    return cases
