"""
The one-command demo: generate the synthetic dataset, train the synthetic config on the CPU with
Detectron2's trainer, evaluate it with COCOEvaluator, and draw validation images with the ground
truth beside the detections, upscaled, at the score threshold that maximizes F1 on the validation
set (printed); Detectron2's trainer logs the training curves for TensorBoard.

    python -m retinanet_fl.demo [--output-dir output/demo] [KEY VALUE ...]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import cv2
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image

import retinanet_fl  # noqa: F401  registers the synthetic datasets
from retinanet_fl.config import load_config
from retinanet_fl.model_zoo import get_config_file
from retinanet_fl.predict import build_predictor
from retinanet_fl.visualize import (
    ThresholdChoice,
    f1_optimal_threshold,
    side_by_side,
)

DEMO_CONFIG_NAME = "synthetic/retinanet_R18_FPN_synthetic.yaml"
NUM_PICTURES = 8
PICTURE_SCALE = 3.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output-dir", default="output/demo", help="where the run, AP table and pictures go"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="draw detections scoring at least this "
        "(default: the F1-optimal threshold on the validation set)",
    )
    parser.add_argument(
        "--scale", type=float, default=PICTURE_SCALE, help="upscaling of the pictures (>= 1)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. SOLVER.MAX_ITER 100"
    )
    return parser.parse_args(argv)


def choose_threshold(cfg: CfgNode, output_dir: str) -> ThresholdChoice:
    """
    The F1-optimal score threshold of the run's detections on ``cfg.DATASETS.TEST[0]``, from the
    ``inference/coco_instances_results.json`` that ``COCOEvaluator`` wrote.
    """
    dataset_name = cfg.DATASETS.TEST[0]
    results_path = os.path.join(output_dir, "inference", "coco_instances_results.json")
    with open(results_path) as f:
        detections = json.load(f)
    records = DatasetCatalog.get(dataset_name)
    mapping = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id", None)
    return f1_optimal_threshold(records, detections, mapping)


def draw_pictures(
    cfg: CfgNode,
    records: Sequence[Dict],
    output_dir: str,
    threshold: float,
    scale: float = PICTURE_SCALE,
) -> List[str]:
    """
    Run ``cfg.MODEL.WEIGHTS`` on each image and save the ground truth beside its detections that
    score at least ``threshold``, ``scale`` times the image's size.

    Args:
        cfg: the model's config, with ``MODEL.WEIGHTS`` and ``DATASETS.TEST[0]`` (class names).
        records: dataset dicts of the images (``file_name``, ``annotations``).
        output_dir: the folder for the pictures (named as the images).
        threshold: the score threshold.
        scale: upscaling.

    Returns:
        the pictures' paths.
    """
    predictor = build_predictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for record in records:
        image_bgr = read_image(record["file_name"], format="BGR")
        instances = predictor(image_bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= threshold]
        titles = ("ground truth", f"detections scoring >= {threshold:.2f}")
        picture = side_by_side(
            image_bgr[:, :, ::-1], record, instances, metadata, scale, titles=titles
        )
        path = os.path.join(output_dir, os.path.basename(record["file_name"]))
        if not cv2.imwrite(path, picture[:, :, ::-1]):
            raise OSError(f"Could not write the picture {path}.")
        paths.append(path)
    return paths


def report(
    cfg: CfgNode,
    output_dir: str,
    num_pictures: int = NUM_PICTURES,
    threshold: Optional[float] = None,
    scale: float = PICTURE_SCALE,
) -> float:
    """
    After training into ``output_dir``: choose the score threshold (unless given), draw the first
    validation images.

    Returns:
        the threshold the pictures were drawn at.
    """
    if threshold is None:
        choice = choose_threshold(cfg, output_dir)
        threshold = choice.threshold
        print(
            f"[demo] score threshold {threshold:.3f}: the F1-optimal one on {cfg.DATASETS.TEST[0]} "
            f"(IoU {choice.iou_threshold:g}: precision {choice.precision:.3f}, "
            f"recall {choice.recall:.3f}, "
            f"F1 {choice.f1:.3f}; {choice.num_detections} detections, {choice.num_gt} objects)"
        )
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = os.path.join(output_dir, "model_final.pth")
    records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:num_pictures]
    pictures_dir = os.path.join(output_dir, "pictures")
    draw_pictures(cfg, records, pictures_dir, threshold, scale)
    print(
        f"[demo] pictures (ground truth | detections scoring >= {threshold:.3f}, {scale:g}x): "
        f"{pictures_dir}/"
    )
    print(f"[demo] training curves: tensorboard --logdir {output_dir}")
    return threshold


def main(argv=None) -> None:
    args = parse_args(argv)
    opts = ["OUTPUT_DIR", args.output_dir, "MODEL.DEVICE", "cpu"] + list(args.opts)
    config_file = get_config_file(DEMO_CONFIG_NAME)
    cfg = load_config(config_file, opts)
    start = time.perf_counter()

    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        print(
            f"[demo] dataset {name}: {len(DatasetCatalog.get(name))} images "
            "(generated on first use)"
        )

    print(
        f"[demo] training configs/{DEMO_CONFIG_NAME} on the CPU, then evaluating with COCOEvaluator"
    )
    command = [sys.executable, "-m", "retinanet_fl.train_net", "--config-file", config_file, *opts]
    subprocess.run(command, check=True)

    report(cfg, args.output_dir, threshold=args.score_threshold, scale=args.scale)
    minutes = (time.perf_counter() - start) / 60
    print(f"[demo] done in {minutes:.1f} min")
    print(
        f"[demo] AP table: {os.path.join(args.output_dir, 'log.txt')} "
        "(end of the log, also printed above)"
    )
    print(
        "[demo] detections: "
        + os.path.join(args.output_dir, "inference", "coco_instances_results.json")
    )


if __name__ == "__main__":
    main()
