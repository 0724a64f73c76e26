r"""
Run a checkpoint, or a model exported by ``python -m retinanet_fl.export``, on images and save
pictures of its detections and a JSON of its boxes.

    python -m retinanet_fl.predict \
        --config-file configs/synthetic/retinanet_R18_FPN_synthetic.yaml \
        --input img1.jpg img2.jpg (or a folder) --output out/ \
        MODEL.WEIGHTS output/synthetic/model_final.pth
    python -m retinanet_fl.predict --exported exported/model.onnx --input ... --output out/
    python -m retinanet_fl.predict --config-file ... --precision bf16 ...   (AVX-512 BF16 / AMX)

Config overrides (KEY VALUE, e.g. MODEL.WEIGHTS model.pth) may go anywhere on the command line. A
folder stands for the files directly inside it whose extension is a format Pillow reads.
"""

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger

import retinanet_fl  # noqa: F401  registers our model and datasets
from retinanet_fl.config import get_cfg, load_config
from retinanet_fl.data.classes import metadata_for_inference
from retinanet_fl.data.image_files import list_images
from retinanet_fl.data.mapper import read_image
from retinanet_fl.engine import AtomicCheckpointer
from retinanet_fl.evaluation import score_thresholds_from_report
from retinanet_fl.export.cpu import PRECISIONS, check_precision
from retinanet_fl.export.runtime import ExportedDetector
from retinanet_fl.label_fonts import draw_detections, find_label_fonts
from retinanet_fl.modeling.tta import DenseDetectorWithTTA

# Pictures of images in other formats (GIF, PSD, ...) are saved as <name>.png.
PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

logger = logging.getLogger(__name__)

DEFAULT_CONFIDENCE_THRESHOLD = 0.5


def build_predictor(cfg: CfgNode) -> DefaultPredictor:
    """Detectron2's DefaultPredictor, MODEL.WEIGHTS loaded by our checkpointer (clear errors)."""
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(cfg)
    AtomicCheckpointer(predictor.model).load(weights)
    return predictor


class CheckpointRunner:
    """The eager model of a config and its MODEL.WEIGHTS, on batches of BGR images; with
    ``TEST.AUG.ENABLED``, test-time augmentation of each original image; with ``precision``
    "bf16", under bfloat16 autocast."""

    def __init__(self, cfg: CfgNode, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; choose one of {list(PRECISIONS)}.")
        self.bf16 = precision == "bf16"
        self.predictor = build_predictor(cfg)
        self.tta = DenseDetectorWithTTA(cfg, self.predictor.model) if cfg.TEST.AUG.ENABLED else None
        self.metadata = metadata_for_inference(cfg)

    def __call__(self, images_bgr: List[np.ndarray]) -> List[Instances]:
        """Returns: each image's detections, on the CPU, in its pixels."""
        if not images_bgr:
            return []
        predictor = self.predictor
        if predictor.input_format == "RGB":
            images_bgr = [image[:, :, ::-1] for image in images_bgr]
        device_type = predictor.model.device.type
        with torch.no_grad(), torch.autocast(device_type, torch.bfloat16, enabled=self.bf16):
            if self.tta is not None:
                # The augmentation resizes the original image itself.
                outputs = self.tta([_original_inputs(image) for image in images_bgr])
            else:
                inputs = [_model_inputs(predictor, image) for image in images_bgr]
                outputs = predictor.model(inputs)
        return [output["instances"].to("cpu") for output in outputs]


class ExportedRunner:
    """A ``.onnx`` (fp32 or int8), ``.pt2`` or ``.ts`` file of ``retinanet_fl.export``, one image
    at a time, with the test-time resize and channel order stored in the file."""

    def __init__(self, path: str, threads: Optional[int] = None):
        self.detector = ExportedDetector(path, intra_op_threads=threads)
        settings = self.detector.metadata
        self.resize = T.ResizeShortestEdge(settings["min_size_test"], settings["max_size_test"])
        self.input_format = settings["input_format"]
        self.metadata = Metadata(name=os.path.basename(path))
        if settings["class_names"]:
            self.metadata.thing_classes = settings["class_names"]
        if settings.get("category_ids"):
            self.metadata.thing_dataset_id_to_contiguous_id = {
                category_id: index for index, category_id in enumerate(settings["category_ids"])
            }

    def __call__(self, images_bgr: List[np.ndarray]) -> List[Instances]:
        """Returns: each image's detections, on the CPU, in its pixels."""
        results = []
        for image in images_bgr:
            if self.input_format == "RGB":
                image = image[:, :, ::-1]
            resized = self.resize.get_transform(image).apply_image(image)
            boxes, scores, classes = self.detector(resized.transpose(2, 0, 1))
            instances = Instances(
                resized.shape[:2], pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes
            )
            results.append(detector_postprocess(instances, *image.shape[:2]))
        return results


@dataclasses.dataclass
class PredictionSummary:
    """What a prediction run did: paths of its outputs and the images it could not read."""

    json_path: str
    num_predicted: int
    num_resumed: int
    unreadable: List[str]
    model_seconds: float

    @property
    def seconds_per_image(self) -> float:
        """The model's mean time per predicted image (reading and drawing not included)."""
        return self.model_seconds / max(self.num_predicted, 1)


def _model_inputs(predictor: DefaultPredictor, image: np.ndarray) -> Dict:
    """One image as the model's input, resized as DefaultPredictor does (for batches of them)."""
    height, width = image.shape[:2]
    resized = predictor.aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return {"image": tensor.to(predictor.cfg.MODEL.DEVICE), "height": height, "width": width}


def _original_inputs(image: np.ndarray) -> Dict:
    """One image as the model's input, at its own size, on the CPU (for the augmentations)."""
    return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))}


def _detections(instances: Instances, metadata: Metadata) -> List[Dict]:
    """
    Returns:
        one dict per detection: "bbox_xyxy", "score", "class_id" (the model's index 0..K-1), and
        when known "category_id" (the dataset's id) and "class_name".
    """
    class_names = metadata.get("thing_classes", None)
    id_map = metadata.get("thing_dataset_id_to_contiguous_id", None) or {}
    category_ids = {index: category_id for category_id, index in id_map.items()}
    detections = []
    for box, score, label in zip(
        instances.pred_boxes.tensor.tolist(),
        instances.scores.tolist(),
        instances.pred_classes.tolist(),
    ):
        detection = {
            "bbox_xyxy": [round(v, 2) for v in box],
            "score": round(score, 4),
            "class_id": label,
        }
        if label in category_ids:
            detection["category_id"] = category_ids[label]
        if class_names:
            detection["class_name"] = class_names[label]
        detections.append(detection)
    return detections


def _save_picture(picture_rgb: np.ndarray, output_dir: str, image_path: str) -> None:
    """Save the picture of an image under its name in ``output_dir`` (``.png`` added to a name
    of a format OpenCV does not write)."""
    name = os.path.basename(image_path)
    if not name.lower().endswith(PICTURE_EXTENSIONS):
        name += ".png"
    picture_path = os.path.join(output_dir, name)
    if not cv2.imwrite(picture_path, picture_rgb[:, :, ::-1]):
        raise OSError(f"Could not write the picture '{picture_path}'.")


def _finished_images(lines_path: str) -> List[Dict]:
    """The records of an earlier run's ``predictions.jsonl``; a line cut by a kill is dropped."""
    records = []
    with open(lines_path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def predict_images(
    model: Union[CfgNode, str],
    image_paths: Sequence[str],
    output_dir: str,
    confidence_threshold: Union[float, Dict[str, float]],
    batch_size: int = 1,
    resume: bool = False,
    scale: float = 1.0,
    threads: Optional[int] = None,
    precision: str = "fp32",
) -> PredictionSummary:
    """
    Run the model on each image; save ``<output_dir>/<name>`` with the detections drawn (class
    names no installed font writes labelled by class id; ``<name>.png`` for formats other than
    :data:`PICTURE_EXTENSIONS`), one line per image in ``<output_dir>/predictions.jsonl`` as soon
    as it is done, and at the end ``<output_dir>/predictions.json`` with every image's detections
    (XYXY boxes in input pixels). An image that cannot be read is skipped with a warning naming it.

    Args:
        model: the model's config, with MODEL.WEIGHTS, or the path of a file exported by
            ``retinanet_fl.export`` (``.onnx``, ``.pt2`` or ``.ts``).
        image_paths: the images, in order.
        output_dir: where the pictures and predictions go.
        confidence_threshold: detections scoring below it are neither drawn nor saved; or
            class name -> its threshold (e.g. an evaluation report's F1-optimal ones), the
            classes it leaves out at :data:`DEFAULT_CONFIDENCE_THRESHOLD`.
        batch_size: images per forward pass.
        resume: skip the images already in ``predictions.jsonl`` (an interrupted run's).
        scale: size of the pictures relative to the images (> 1 for small images).
        threads: ONNX Runtime's intra-op threads for an ``.onnx`` file (None: one per core).
        precision: "fp32", or "bf16" for a checkpoint run under bfloat16 autocast (fast on CPUs
            with AVX-512 BF16 or AMX only; an exported file's precision was fixed at export).

    Returns:
        the summary: outputs, counts and the unreadable images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(model, str):
        if precision != "fp32":
            raise ValueError(
                f"An exported file runs in the precision it was exported in, not {precision!r}: "
                "export it with python -m retinanet_fl.export --format pt2 --precision bf16."
            )
        runner = ExportedRunner(model, threads)
    else:
        runner = CheckpointRunner(model, precision)
    metadata = runner.metadata
    thresholds = _class_thresholds(confidence_threshold, metadata)
    label_fonts = find_label_fonts(metadata.get("thing_classes", None) or [])
    os.makedirs(output_dir, exist_ok=True)
    lines_path = os.path.join(output_dir, "predictions.jsonl")
    records = _finished_images(lines_path) if resume and os.path.exists(lines_path) else []
    finished = {record["file_name"] for record in records}
    todo = [path for path in image_paths if path not in finished]
    unreadable: List[str] = []
    model_seconds = 0.0
    progress = _Progress(len(todo))
    with open(lines_path, "a" if records else "w") as lines:
        for start in range(0, len(todo), batch_size):
            images = {}
            for path in todo[start : start + batch_size]:
                try:
                    images[path] = read_image(path, "BGR")
                except OSError as error:
                    logger.warning(f"Skipped: {error}")
                    unreadable.append(path)
            start_s = time.perf_counter()
            outputs = runner(list(images.values()))
            model_seconds += time.perf_counter() - start_s
            for (path, image_bgr), instances in zip(images.items(), outputs):
                per_class = thresholds[instances.pred_classes] if thresholds.dim() else thresholds
                instances = instances[instances.scores >= per_class]
                image_rgb = image_bgr[:, :, ::-1]
                drawn = draw_detections(image_rgb, instances, metadata, label_fonts, scale)
                _save_picture(drawn, output_dir, path)
                record = {"file_name": path, "detections": _detections(instances, metadata)}
                lines.write(json.dumps(record) + "\n")
                lines.flush()
                records.append(record)
            progress.update(len(todo[start : start + batch_size]))
    json_path = os.path.join(output_dir, "predictions.json")
    with open(json_path, "w") as f:
        json.dump(records, f, indent=1)
    num_predicted = len(records) - len(finished)
    return PredictionSummary(json_path, num_predicted, len(finished), unreadable, model_seconds)


def _class_thresholds(
    confidence_threshold: Union[float, Dict[str, float]], metadata: Metadata
) -> torch.Tensor:
    """Returns: the ``(K,)`` score threshold of each class index, or one ``()`` for all."""
    if not isinstance(confidence_threshold, dict):
        return torch.tensor(confidence_threshold)
    class_names = metadata.get("thing_classes", None)
    if not class_names:
        raise ValueError(
            "Per-class thresholds need the model's class names, which this model does not carry: "
            "give a number as --confidence-threshold."
        )
    unknown = sorted(set(confidence_threshold) - set(class_names))
    if unknown:
        raise ValueError(
            f"The thresholds name classes the model does not have: {unknown} (its classes: "
            f"{list(class_names)}). Use the report of an evaluation of this model."
        )
    return torch.tensor(
        [confidence_threshold.get(name, DEFAULT_CONFIDENCE_THRESHOLD) for name in class_names]
    )


class _Progress:
    """Logs images done, images per second and the time left, at most every few seconds."""

    def __init__(self, total: int, every_s: float = 5.0):
        self.total, self.done, self.every_s = total, 0, every_s
        self.start = self.last = time.perf_counter()

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        logger.info(f"{self.done}/{self.total} images, {rate:.1f} images/s, {eta:.0f} s left")


def split_config_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    Take the config overrides out of a command line, wherever they are: each ``KEY VALUE`` pair
    whose KEY's first dotted part is a top-level key of the config (``MODEL.WEIGHTS``, ``SEED``)
    and that is not an existing file or folder (``IMG_0001.JPG`` stays an input).

    Args:
        argv: the command line's arguments.

    Returns:
        the other arguments, in order, and the overrides as a flat list.
    """
    top_level_keys = set(get_cfg().keys())
    others, overrides = [], []
    tokens = iter(argv)
    for token in tokens:
        if token.split(".")[0] in top_level_keys and not os.path.exists(token):
            overrides += [token, *itertools.islice(tokens, 1)]  # a KEY without VALUE: yacs says so
        else:
            others.append(token)
    return others, overrides


def _threshold_argument(value: str) -> Union[float, str]:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', got {value!r}") from None


def _report_thresholds(report: Optional[str], model_file: str) -> Dict[str, float]:
    """The per-class thresholds of ``report``, by default the report/ beside ``model_file``."""
    report = report or os.path.join(os.path.dirname(os.path.abspath(model_file)), "report")
    thresholds = score_thresholds_from_report(report)
    logger.info(
        f"Per-class score thresholds from {report}: "
        + ", ".join(f"{name} {value:.3f}" for name, value in thresholds.items())
    )
    return thresholds


def parse_args(argv=None) -> argparse.Namespace:
    """Returns: the arguments; ``opts``: the config overrides, taken from anywhere."""
    others, overrides = split_config_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", help="the config the checkpoint was trained with")
    model.add_argument(
        "--exported",
        help="a model.onnx, model.int8.onnx, model.pt2 or model.ts from python -m "
        "retinanet_fl.export, instead of a config and MODEL.WEIGHTS",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime threads (--exported .onnx)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: run the checkpoint under bfloat16 autocast (CPUs with AVX-512 BF16 or AMX)",
    )
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument(
        "--output", required=True, help="folder for the pictures and predictions.json"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=_threshold_argument,
        default=DEFAULT_CONFIDENCE_THRESHOLD,
        help="draw and save scores above this; 'auto': each class's F1-optimal threshold from an "
        "evaluation report (--report)",
    )
    parser.add_argument(
        "--report",
        default=None,
        help="the evaluation report for --confidence-threshold auto (a report/ folder or its "
        "report.json; default: the report/ beside MODEL.WEIGHTS or the exported file)",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the images an interrupted run already wrote to predictions.jsonl",
    )
    args = parser.parse_args(others)
    args.opts = overrides
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name=__name__, abbrev_name="predict")
    if args.exported:
        if args.opts:
            raise SystemExit(
                f"error: config overrides {args.opts} do not apply to an exported model; its "
                "settings were fixed at export."
            )
        model = args.exported
    else:
        model = load_config(args.config_file, args.opts, for_inference=True)
        if not model.MODEL.WEIGHTS:
            raise SystemExit("error: give the checkpoint to run as MODEL.WEIGHTS path/to/model.pth")
        if model.MODEL.DEVICE == "cpu":
            try:
                check_precision(args.precision)
            except ValueError as error:
                raise SystemExit(f"error: {error}") from None
    threshold = args.confidence_threshold
    if threshold == "auto":
        threshold = _report_thresholds(
            args.report, args.exported if args.exported else model.MODEL.WEIGHTS
        )
    try:
        summary = predict_images(
            model,
            list_images(args.input),
            args.output,
            threshold,
            batch_size=args.batch_size,
            resume=args.resume,
            threads=args.threads,
            precision=args.precision,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    print(
        f"Predicted {summary.num_predicted} images"
        + (f" ({summary.num_resumed} done before, resumed)" if summary.num_resumed else "")
        + f", {1000 * summary.seconds_per_image:.0f} ms per image in the model"
        + f"; pictures and {summary.json_path} in {args.output}."
    )
    if summary.unreadable:
        print(f"{len(summary.unreadable)} images could not be read and were skipped:")
        for path in summary.unreadable:
            print(f"  {path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
