r"""
Export a checkpoint to TorchScript or ONNX, post-processing included.

    python -m retinanet_fl.export --config-file configs/synthetic/retinanet_R18_FPN_synthetic.yaml \
        --format onnx --output exported/ MODEL.WEIGHTS output/demo/model_final.pth

writes ``exported/model.onnx`` (or ``model.ts``): one uint8 image (3, H, W) in INPUT.FORMAT, at
the test resolution, in; boxes (D, 4) in its pixels, scores (D,), classes (D,) out.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

import retinanet_fl  # noqa: F401  registers our model and datasets
from retinanet_fl.config import load_config
from retinanet_fl.export.api import EXPORT_FORMATS, ONNX_OPSET, export_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="the config the model was trained with"
    )
    parser.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    parser.add_argument("--output", required=True, help="folder for model.ts or model.onnx")
    parser.add_argument(
        "--sample-image", default=None, help="image to trace with (default: a random image)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="retinanet_fl.export", abbrev_name="export")
    cfg = load_config(args.config_file, args.opts, for_inference=True)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("error: give the checkpoint to export as MODEL.WEIGHTS path/to/model.pth")
    path = export_model(cfg, args.format, args.output, args.sample_image)
    opset = f" (ONNX opset {ONNX_OPSET})" if args.format == "onnx" else ""
    print(f"Exported {cfg.MODEL.WEIGHTS} to {path}{opset}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
