"""
The ablation subcommands that measure a config or a trained model rather than train one:

    python -m retinanet_fl.ablation figure1
    python -m retinanet_fl.ablation figure4 --config-file CFG MODEL.WEIGHTS model_final.pth
    python -m retinanet_fl.ablation stats --config-file CFG [MODEL.WEIGHTS model_final.pth]
"""

import argparse
from pathlib import Path
from typing import Sequence

from .figures import figure1, figure4
from .regime import regime_stats, write_regime
from .sweeps import check_opts

__all__ = ["run_figure1", "run_figure4", "run_stats"]

DEFAULT_OUTPUT_DIR = Path("output") / "ablations"


def _figure1_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation figure1",
        description="Plot FL against p_t (the paper's Figure 1).",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_DIR / "figure1.png")
    return parser


def _add_model_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's config: ``--config-file`` and ``KEY VALUE`` overrides after the options."""
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides, e.g. MODEL.WEIGHTS model_final.pth",
    )


def _figure4_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation figure4",
        description="Cumulative distribution of a trained model's normalized loss over positive "
        "and negative samples for several γ (the paper's Figure 4).",
    )
    parser.add_argument(
        "--num-images", type=int, default=50, help="images of DATASETS.TEST[0] to use"
    )
    parser.add_argument(
        "--max-negatives", type=int, default=10_000_000, help="negative samples kept, at most"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT_DIR / "figure4.png")
    _add_model_config_arguments(parser)
    return parser


def _stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.ablation stats",
        description="The class-imbalance regime of a config on a dataset: anchors per image, "
        "positive / ignored / negative anchors per image, negatives per positive; with "
        "MODEL.WEIGHTS, the share of the negatives' CE loss carried by easy negatives "
        "(p < 0.1).",
    )
    parser.add_argument(
        "--dataset", default=None, help="a registered dataset (default: DATASETS.TRAIN[0])"
    )
    parser.add_argument("--num-images", type=int, default=100, help="its first images measured")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="count the anchors of one blank H x W image instead (no dataset needed, e.g. COCO)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON")
    _add_model_config_arguments(parser)
    return parser


def _stats(args: argparse.Namespace) -> None:
    from ..config import load_config

    cfg = load_config(args.config_file, list(check_opts(args.opts, "stats overrides")))
    stats = regime_stats(
        cfg,
        dataset=args.dataset,
        num_images=args.num_images,
        image_size=None if args.image_size is None else tuple(args.image_size),
    )
    print(stats.format())
    if args.output:
        print(f"wrote {write_regime(stats, args.output)}")


def _figure4(args: argparse.Namespace) -> None:
    from ..config import load_config

    if args.num_images < 1 or args.max_negatives < 1:
        raise ValueError(
            "--num-images and --max-negatives must be >= 1, "
            f"got {args.num_images} and {args.max_negatives}."
        )
    cfg = load_config(args.config_file, list(check_opts(args.opts, "figure4 overrides")))
    summary = figure4(
        cfg, args.output, num_images=args.num_images, max_negatives=args.max_negatives
    )
    for group, per_gamma in summary.items():
        for gamma, stats in per_gamma.items():
            shares = ", ".join(
                f"{float(key.split('_')[1]):.0%}: {value:.1%}"
                for key, value in stats.items()
                if key.endswith("_share")
            )
            print(f"{group} samples, {gamma}: share of the loss in the hardest {shares}")
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")


def run_figure1(argv: Sequence[str]) -> None:
    """``figure1 [--output PNG]``: FL against p_t."""
    args = _figure1_parser().parse_args(argv)
    print(f"wrote {figure1(args.output)}")


def run_figure4(argv: Sequence[str]) -> None:
    """``figure4 --config-file CFG [opts]``: the loss distribution of a trained model."""
    _figure4(_figure4_parser().parse_args(argv))


def run_stats(argv: Sequence[str]) -> None:
    """``stats --config-file CFG [opts]``: the class-imbalance regime of a config."""
    _stats(_stats_parser().parse_args(argv))
