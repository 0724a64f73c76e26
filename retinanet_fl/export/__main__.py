r"""
Export a checkpoint to ONNX (fp32, or int8 calibrated on your training images), to an
ExportedProgram for PyTorch (.pt2), or to legacy TorchScript, post-processing included.

    python -m retinanet_fl.export --config-file configs/synthetic/retinanet_R18_FPN_synthetic.yaml \
        --format onnx --output exported/ MODEL.WEIGHTS output/demo/model_final.pth
    python -m retinanet_fl.export --config-file ... --format onnx --quantize int8 \
        --calibration-images 200 --output exported/ MODEL.WEIGHTS model_final.pth \
        DATASETS.TRAIN "('coco:path/to/train.json:path/to/images',)"

writes ``exported/model.onnx`` (``model.pt2``, ``model.ts``; ``--quantize int8`` writes
``model.int8.onnx`` and its fp32 ``model.onnx``): one uint8 image
(3, H, W) in INPUT.FORMAT, at the test resolution, in; boxes (D, 4) in its pixels, scores (D,),
classes (D,) out. int8 calibrates on N images of DATASETS.TRAIN.
"""

import argparse
import itertools
import os
import sys
import tempfile

from detectron2.utils.logger import setup_logger

import retinanet_fl  # noqa: F401  registers our model and datasets
from retinanet_fl.config import load_config
from retinanet_fl.export.api import (
    EXPORT_FORMATS,
    ONNX_OPSET,
    build_exportable,
    export_metadata,
    export_model,
    export_onnx,
    sample_input,
)
from retinanet_fl.export.cpu import PRECISIONS
from retinanet_fl.export.wrapper import ExportableDetector

QUANTIZED_NAME = "model.int8.onnx"
DEFAULT_CALIBRATION_IMAGES = 200


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="the config the model was trained with"
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=sorted(EXPORT_FORMATS),
        help="onnx (ONNX Runtime), pt2 (PyTorch), torchscript (legacy)",
    )
    parser.add_argument("--output", required=True, help="folder for the exported file")
    parser.add_argument(
        "--sample-image", default=None, help="image to export with (default: a random image)"
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8 ONNX (ONNX Runtime static quantization), calibrated on DATASETS.TRAIN",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"images of DATASETS.TRAIN to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: --format pt2 with the backbone and head in bfloat16 (CPUs with AVX-512 BF16 "
        "or AMX)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth"
    )
    args = parser.parse_args(argv)
    if args.quantize and args.format != "onnx":
        parser.error(f"--quantize int8 makes an ONNX file: use --format onnx, not {args.format}.")
    if args.precision == "bf16" and args.format != "pt2":
        parser.error(
            f"--precision bf16 runs in PyTorch: use --format pt2, not {args.format} (for a faster "
            "ONNX file: --format onnx --quantize int8)."
        )
    return args


def export_int8(cfg, output_dir: str, num_images: int, sample_image=None) -> str:
    """
    Export the fp32 ONNX model, quantize it to ``output_dir/model.int8.onnx``, calibrated on
    ``num_images`` images of ``DATASETS.TRAIN``, and keep the fp32 file beside it as
    ``model.onnx`` (both files appear only once both are complete).

    Returns:
        the int8 file's path.
    """
    from retinanet_fl.export.calibration import calibration_images, calibration_records
    from retinanet_fl.export.cpu import warn_int8_speed
    from retinanet_fl.export.quantize import quantize_onnx_int8

    metadata = export_metadata(cfg)
    # Data and CPU are checked before the minutes of export and calibration.
    records = calibration_records(cfg, num_images, metadata["class_names"])
    images = calibration_images(records, cfg)
    first_image = next(images, None)
    if first_image is None:
        raise ValueError(
            f"None of the {len(records)} calibration images of DATASETS.TRAIN could be read (see "
            "the warnings above): fix or replace them."
        )
    warn_int8_speed()
    model = build_exportable(cfg)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".export-") as work_dir:
        fp32_path = os.path.join(work_dir, EXPORT_FORMATS["onnx"])
        sample = sample_input(cfg, sample_image).to(model.device)
        export_onnx(ExportableDetector(model), sample, fp32_path, metadata)
        int8_path = quantize_onnx_int8(
            fp32_path,
            os.path.join(output_dir, QUANTIZED_NAME),
            itertools.chain([first_image], images),
            metadata,
        )
        os.replace(fp32_path, os.path.join(output_dir, EXPORT_FORMATS["onnx"]))
    return int8_path


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="retinanet_fl", abbrev_name="retinanet_fl")
    cfg = load_config(args.config_file, args.opts, for_inference=True)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("error: give the checkpoint to export as MODEL.WEIGHTS path/to/model.pth")
    if args.quantize:
        path = export_int8(cfg, args.output, args.calibration_images, args.sample_image)
    else:
        path = export_model(cfg, args.format, args.output, args.sample_image, args.precision)
    opset = f" (ONNX opset {ONNX_OPSET})" if args.format == "onnx" else ""
    print(f"Exported {cfg.MODEL.WEIGHTS} to {path}{opset}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
