r"""
Run a checkpoint on images and save pictures of its detections and a JSON of its boxes.

    python -m retinanet_fl.predict \
        --config-file configs/synthetic/retinanet_R18_FPN_synthetic.yaml \
        --input img1.jpg img2.jpg (or a folder) --output out/ \
        MODEL.WEIGHTS output/synthetic/model_final.pth
"""

import argparse
import json
import os
from typing import Dict, List, Sequence

import cv2
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

import retinanet_fl  # noqa: F401  registers our model and datasets
from retinanet_fl.config import load_config
from retinanet_fl.engine import AtomicCheckpointer

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(inputs: Sequence[str]) -> List[str]:
    """
    Args:
        inputs: image files and folders (a folder stands for the images directly inside it).

    Returns:
        image paths, folders expanded in sorted order.
    """
    paths = []
    for path in inputs:
        if os.path.isdir(path):
            paths += sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            paths.append(path)
        else:
            raise FileNotFoundError(f"Input '{path}' is neither an image file nor a folder.")
    if not paths:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {list(inputs)}."
        )
    return paths


def build_predictor(cfg: CfgNode) -> DefaultPredictor:
    """Detectron2's DefaultPredictor, MODEL.WEIGHTS loaded by our checkpointer (clear errors)."""
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(cfg)
    AtomicCheckpointer(predictor.model).load(weights)
    return predictor


def predict_images(
    cfg: CfgNode, image_paths: Sequence[str], output_dir: str, confidence_threshold: float
) -> str:
    """
    Run the model on each image, save ``<output_dir>/<name>`` with the detections drawn, and
    ``<output_dir>/predictions.json`` with every detection (XYXY boxes in input pixels).

    Returns:
        the path of predictions.json.
    """
    predictor = build_predictor(cfg)
    metadata = (
        MetadataCatalog.get(cfg.DATASETS.TEST[0])
        if cfg.DATASETS.TEST
        else MetadataCatalog.get("__unused")
    )
    class_names = metadata.get("thing_classes", None)
    os.makedirs(output_dir, exist_ok=True)
    results: List[Dict] = []
    for path in image_paths:
        image_bgr = read_image(path, format="BGR")
        instances = predictor(image_bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= confidence_threshold]
        visualizer = Visualizer(image_bgr[:, :, ::-1], metadata)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        cv2.imwrite(os.path.join(output_dir, os.path.basename(path)), drawn[:, :, ::-1])
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
            if class_names:
                detection["class_name"] = class_names[label]
            detections.append(detection)
        results.append({"file_name": path, "detections": detections})
    json_path = os.path.join(output_dir, "predictions.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    return json_path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="the config the checkpoint was trained with"
    )
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument(
        "--output", required=True, help="folder for the pictures and predictions.json"
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="draw and save scores above this"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS model.pth"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("error: give the checkpoint to run as MODEL.WEIGHTS path/to/model.pth")
    json_path = predict_images(cfg, list_images(args.input), args.output, args.confidence_threshold)
    print(f"Saved pictures of the detections and {json_path}")


if __name__ == "__main__":
    main()
