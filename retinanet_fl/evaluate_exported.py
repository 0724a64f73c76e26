r"""
Evaluate a model exported by ``python -m retinanet_fl.export`` (``model.onnx`` in fp32 or int8,
``model.pt2``, legacy ``model.ts``) on ``DATASETS.TEST`` with Detectron2's COCOEvaluator (Pascal
VOC's for VOC data): the same loader, evaluator and tables as ``train_net.py --eval-only``.

    python -m retinanet_fl.evaluate_exported --exported exported/model.int8.onnx \
        --config-file configs/synthetic/retinanet_R18_FPN_synthetic.yaml --output eval/ \
        DATASETS.TEST "('coco:path/to/val.json:path/to/images',)"

The file fixes the input format, the test-time resize and the classes; the config gives the data
(``DATASETS.TEST``, ``DATALOADER``).
"""

import argparse
import logging
import sys
from typing import Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger
from torch import nn

import retinanet_fl  # noqa: F401  registers our model and datasets
from retinanet_fl.config import load_config
from retinanet_fl.data.classes import check_model_classes
from retinanet_fl.engine import Trainer
from retinanet_fl.export.runtime import ExportedDetector

logger = logging.getLogger(__name__)


class ExportedModel(nn.Module):
    """
    An exported file as a Detectron2 model in inference: ``model(batched_inputs)`` with the test
    loader's dicts ("image" ``(3, H, W)`` uint8 at the network's size, "height", "width") returns
    ``[{"instances": Instances}]`` in each original image's pixels, as the eager model does.
    """

    def __init__(self, detector: ExportedDetector):
        super().__init__()
        self.detector = detector

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"]
            boxes, scores, classes = self.detector(image)
            size = (image.shape[1], image.shape[2])
            instances = Instances(
                size, pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes
            )
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            outputs.append({"instances": detector_postprocess(instances, height, width)})
        return outputs


def evaluation_config(
    config_file: str, opts: List[str], metadata: Dict, output_dir: Optional[str]
) -> CfgNode:
    """
    The config of the evaluation: ``config_file`` and ``opts``, with the input format, test-time
    resize and number of classes of the exported file.
    """
    cfg = load_config(config_file, opts, for_inference=True)
    fixed = {
        "INPUT.FORMAT": metadata["input_format"],
        "INPUT.MIN_SIZE_TEST": metadata["min_size_test"],
        "INPUT.MAX_SIZE_TEST": metadata["max_size_test"],
        "MODEL.RETINANET.NUM_CLASSES": metadata["num_classes"],
    }
    for key, value in fixed.items():
        node, name = cfg, key
        while "." in name:
            head, name = name.split(".", 1)
            node = node[head]
        node[name] = value
    if output_dir:
        cfg.OUTPUT_DIR = output_dir
    if cfg.TEST.AUG.ENABLED:
        raise ValueError(
            "TEST.AUG.ENABLED: test-time augmentation runs the eager model (train_net.py "
            "--eval-only); an exported file is evaluated on the test size it was exported with. "
            "Set TEST.AUG.ENABLED False."
        )
    if not cfg.DATASETS.TEST:
        raise ValueError(
            "DATASETS.TEST is empty: give the data to evaluate on as a config override, e.g. "
            "DATASETS.TEST \"('coco:path/to/val.json:path/to/images',)\"."
        )
    cfg.freeze()
    return cfg


def evaluate_exported(
    path: str,
    config_file: str,
    opts: List[str],
    output_dir: Optional[str] = None,
    threads: Optional[int] = None,
) -> Dict:
    """
    Evaluate an exported file on the config's ``DATASETS.TEST``.

    Args:
        path: the exported file.
        config_file: a config giving the data (may be empty: Detectron2's defaults).
        opts: config overrides, e.g. ``["DATASETS.TEST", "('coco:val.json:images',)"]``.
        output_dir: where the evaluator writes its files (default: the config's OUTPUT_DIR).
        threads: ONNX Runtime's intra-op threads (see :class:`ExportedDetector`).

    Returns:
        Detectron2's results: dataset name → task → metric (one dataset: task → metric).
    """
    detector = ExportedDetector(path, intra_op_threads=threads)
    cfg = evaluation_config(config_file, opts, detector.metadata, output_dir)
    check_model_classes(detector.metadata.get("class_names"), path, cfg.DATASETS.TEST)
    precision_name = detector.metadata.get("precision", "fp32")
    logger.info(f"Evaluating {path} ({precision_name}) on {list(cfg.DATASETS.TEST)}.")
    return Trainer.test(cfg, ExportedModel(detector))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--exported", required=True, help="model.onnx, model.int8.onnx, model.pt2 or model.ts"
    )
    parser.add_argument(
        "--config-file", default="", help="a config giving DATASETS.TEST (and DATALOADER)"
    )
    parser.add_argument("--output", default=None, help="folder for the evaluator's files")
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: cores)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help='config overrides, e.g. DATASETS.TEST "(...)"'
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="retinanet_fl", abbrev_name="retinanet_fl")
    # Trainer.test logs the tables and their "copypaste" lines, as --eval-only does.
    evaluate_exported(args.exported, args.config_file, args.opts, args.output, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
