"""
The one-command demo: generate the synthetic dataset, train the synthetic config on the CPU with
Detectron2's trainer, evaluate it with COCOEvaluator, and draw the detections of the first
validation images, named and upscaled (``predict``'s pictures and ``predictions.json``).
Detectron2's trainer also writes the training curves for TensorBoard.

    python -m retinanet_fl.demo [--output-dir output/demo] [KEY VALUE ...]
"""

import argparse
import os
import subprocess
import sys
import time

from detectron2.data import DatasetCatalog

import retinanet_fl  # noqa: F401  registers the synthetic datasets
from retinanet_fl.config import load_config
from retinanet_fl.model_zoo import get_config_file
from retinanet_fl.predict import predict_images

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
        "--score-threshold", type=float, default=0.5, help="draw detections scoring at least this"
    )
    parser.add_argument(
        "--scale", type=float, default=PICTURE_SCALE, help="upscaling of the pictures (>= 1)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. SOLVER.MAX_ITER 100"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    opts = ["OUTPUT_DIR", args.output_dir, "MODEL.DEVICE", "cpu"] + list(args.opts)
    config_file = get_config_file(DEMO_CONFIG_NAME)
    cfg = load_config(config_file, opts)
    start = time.perf_counter()
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        print(f"[demo] dataset {name}: {len(DatasetCatalog.get(name))} images (made on first use)")

    print(f"[demo] training configs/{DEMO_CONFIG_NAME} on the CPU, then evaluating it")
    command = [sys.executable, "-m", "retinanet_fl.train_net", "--config-file", config_file, *opts]
    subprocess.run(command, check=True)

    cfg.MODEL.WEIGHTS = os.path.join(args.output_dir, "model_final.pth")
    images = [r["file_name"] for r in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:NUM_PICTURES]]
    pictures = os.path.join(args.output_dir, "pictures")
    predict_images(cfg, images, pictures, args.score_threshold, scale=args.scale)
    print(f"[demo] done in {(time.perf_counter() - start) / 60:.1f} min")
    print(f"[demo] AP table: {os.path.join(args.output_dir, 'log.txt')} (also printed above)")
    print(f"[demo] pictures of detections scoring >= {args.score_threshold:g}: {pictures}/")
    print(f"[demo] training curves: tensorboard --logdir {args.output_dir}")


if __name__ == "__main__":
    main()
