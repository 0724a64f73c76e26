r"""
Check a training set's images, and that the anchors and the input size suit its objects, before
training on it.

    python -m retinanet_fl.check_data \
        --config-file configs/synthetic/retinanet_R18_FPN_synthetic.yaml \
        DATASETS.TRAIN '("coco:data/train.json:data/images",)'

first reads the header of every training image and prints what training would say about them
(files missing or unreadable, sizes other than the annotations give), then resizes every box of
the usable images of ``DATASETS.TRAIN`` (a sample of ``--max-images``) as the test-time resize
would (``INPUT.MIN_SIZE_TEST``, ``MAX_SIZE_TEST``), prints its size and aspect histograms beside
the anchors' sizes and ratios, and the share of boxes that reach IoU >= 0.5 (a foreground anchor)
and >= 0.4 with some anchor of the configured generator. When fewer than :data:`GOOD_SHARE` reach
0.5, it tries other ``MODEL.RETINANET_FL.ANCHOR_SCALE`` values and input sizes and prints the best.
"""

import argparse
import math
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_anchor_generator, build_backbone
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils.logger import setup_logger

from retinanet_fl.config import load_config
from retinanet_fl.data import load_dataset_dicts, prepare_dataset_dicts
from retinanet_fl.data.image_check import read_image_headers, unreadable_training_fraction
from retinanet_fl.data.sanitize import DatasetReport, check_image_files

# Below this share of boxes with a foreground anchor (IoU >= 0.5), other settings are suggested.
GOOD_SHARE = 0.9
IOU_LEVELS = (0.5, 0.4)
SIZE_BINS = (0, 8, 16, 32, 64, 128, 256, 512, math.inf)
ASPECT_BINS = (0, 1 / 4, 1 / 2, 1 / 1.5, 1.5, 2, 4, math.inf)
SCALE_CANDIDATES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
INPUT_SIZE_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


def resized_boxes(
    dataset_dicts: Sequence[Dict], min_size: int, max_size: int
) -> List[Tuple[Tuple[int, int], np.ndarray]]:
    """
    Args:
        dataset_dicts: images with "height", "width" and non-crowd box annotations.
        min_size, max_size: the shortest-edge resize.

    Returns:
        per image with boxes: its resized (height, width) and its boxes ``(B, 4)`` XYXY in it.
    """
    images = []
    for record in dataset_dicts:
        annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
        if not annotations:
            continue
        height, width = record["height"], record["width"]
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        )
        boxes = boxes * np.array([new_w / width, new_h / height] * 2)
        images.append(((new_h, new_w), boxes))
    return images


def best_anchor_ious(
    anchor_generator: torch.nn.Module, strides: Sequence[int], images: Sequence[Tuple]
) -> np.ndarray:
    """
    Returns:
        ``(B,)`` every box's highest IoU with an anchor of its image.
    """
    best = []
    for (height, width), boxes in images:
        features = [
            torch.zeros(1, 1, math.ceil(height / stride), math.ceil(width / stride))
            for stride in strides
        ]
        anchors = Boxes.cat(anchor_generator(features))
        ious = pairwise_iou(Boxes(torch.as_tensor(boxes, dtype=torch.float32)), anchors)
        best.append(ious.max(dim=1).values.numpy())
    return np.concatenate(best) if best else np.zeros(0)


def histogram(values: np.ndarray, edges: Sequence[float], labels: Sequence[str]) -> List[str]:
    """Returns: one text line per bin: its label, a bar and the share of ``values`` in it."""
    counts, _ = np.histogram(values, bins=np.asarray(edges, dtype=np.float64))
    shares = counts / max(len(values), 1)
    return [
        f"  {label:>13}  {'#' * int(round(40 * share)):<40} {100 * share:5.1f} %"
        for label, share in zip(labels, shares)
    ]


def _bin_labels(edges: Sequence[float], fmt) -> List[str]:
    return [f"{fmt(low)}-{fmt(high)}" for low, high in zip(edges[:-1], edges[1:])]


def _share_line(best_ious: np.ndarray) -> str:
    return ", ".join(
        f"{100 * np.mean(best_ious >= level):.1f} % reach IoU >= {level}" for level in IOU_LEVELS
    )


class AnchorFit:
    """The anchors of a config, measured against the boxes of its training data."""

    def __init__(self, cfg: CfgNode, dataset_dicts: Sequence[Dict]):
        self.cfg = cfg
        self.dataset_dicts = dataset_dicts
        backbone_shapes = build_backbone(cfg).output_shape()
        self.shapes = [backbone_shapes[name] for name in cfg.MODEL.RETINANET.IN_FEATURES]
        self.strides = [shape.stride for shape in self.shapes]

    def best_ious(self, anchor_scale: float, size_factor: float = 1.0) -> np.ndarray:
        """
        Args:
            anchor_scale: ``MODEL.RETINANET_FL.ANCHOR_SCALE`` to try.
            size_factor: multiplies ``INPUT.MIN_SIZE_TEST`` and ``MAX_SIZE_TEST``.

        Returns:
            ``(B,)`` every box's best IoU with an anchor.
        """
        cfg = self.cfg.clone()
        cfg.MODEL.RETINANET_FL.ANCHOR_SCALE = anchor_scale
        generator = build_anchor_generator(cfg, self.shapes)
        images = resized_boxes(
            self.dataset_dicts,
            round(cfg.INPUT.MIN_SIZE_TEST * size_factor),
            round(cfg.INPUT.MAX_SIZE_TEST * size_factor),
        )
        return best_anchor_ious(generator, self.strides, images)

    def report(self) -> List[str]:
        """Returns: the report's lines."""
        cfg = self.cfg
        images = resized_boxes(self.dataset_dicts, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        boxes = np.concatenate([b for _, b in images]) if images else np.zeros((0, 4))
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        generator = build_anchor_generator(cfg, self.shapes)
        anchor_sizes = [
            float(torch.sqrt(c[0, 2:].sub(c[0, :2]).prod())) for c in generator.cell_anchors
        ]
        ratios = list(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS)
        lines = [
            f"{len(boxes)} boxes in {len(images)} images, resized to a shortest edge of "
            f"{cfg.INPUT.MIN_SIZE_TEST} px (at most {cfg.INPUT.MAX_SIZE_TEST}).",
            "Box size (square root of the area, px); smallest anchor of each level: "
            + ", ".join(f"{size:.0f}" for size in anchor_sizes),
            *histogram(np.sqrt(widths * heights), SIZE_BINS, _bin_labels(SIZE_BINS, "{:g}".format)),
            f"Box aspect (height / width); anchors: {ratios}",
            *histogram(heights / widths, ASPECT_BINS, _bin_labels(ASPECT_BINS, "{:.2g}".format)),
        ]
        best = best_anchor_ious(generator, self.strides, images)
        lines.append(f"Anchor fit: {_share_line(best)}.")
        if np.mean(best >= IOU_LEVELS[0]) < GOOD_SHARE:
            lines += self.suggestions()
        return lines

    def suggestions(self) -> List[str]:
        """Returns: lines naming the best ANCHOR_SCALE and input sizes tried."""
        if self.cfg.MODEL.ANCHOR_GENERATOR.NAME != "OctaveAnchorGenerator":
            return ["Fewer than 90 % of the boxes have a foreground anchor."]
        trials = []
        for scale in SCALE_CANDIDATES:
            for factor in INPUT_SIZE_FACTORS:
                best = self.best_ious(scale, factor)
                trials.append((np.mean(best >= IOU_LEVELS[0]), scale, factor, best))
        # Best share first; among equals, the smallest change of input size, then of scale.
        current = self.cfg.MODEL.RETINANET_FL.ANCHOR_SCALE
        trials.sort(key=lambda t: (-t[0], abs(math.log(t[2])), abs(math.log(t[1] / current))))
        lines = [f"Fewer than {100 * GOOD_SHARE:.0f} % reach IoU 0.5. Settings that fit better:"]
        for _, scale, factor, best in trials[:3]:
            lines.append(
                f"  MODEL.RETINANET_FL.ANCHOR_SCALE {scale:.1f} INPUT.MIN_SIZE_TEST "
                f"{round(self.cfg.INPUT.MIN_SIZE_TEST * factor)} INPUT.MAX_SIZE_TEST "
                f"{round(self.cfg.INPUT.MAX_SIZE_TEST * factor)}: {_share_line(best)}"
            )
        lines.append("(resize INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN by the same factor)")
        return lines


def check_images(
    loaded: Sequence[Tuple[List[Dict], DatasetReport]], max_unreadable_fraction: Optional[float]
) -> Tuple[List[Tuple[List[Dict], DatasetReport]], bool]:
    """
    Print what training would say about each dataset's image files, instead of stopping at the
    first problem as training does.

    Args:
        loaded: (dataset dicts, report) per dataset, from ``load_dataset_dicts``.
        max_unreadable_fraction: training's, from ``unreadable_training_fraction``.

    Returns:
        per dataset, its records whose image exists, is readable and of the annotated size (with
        its report); and whether any problem was found.
    """
    usable, found = [], False
    for dataset_dicts, report in loaded:
        messages = []
        try:
            check_image_files(dataset_dicts, report.dataset_name)
        except FileNotFoundError as error:
            messages.append(f"Error (training would stop): {error}")
        check = read_image_headers(dataset_dicts, report.dataset_name)
        errors, warning = check.problems(dataset_dicts, max_unreadable_fraction)
        messages += [f"Error (training would stop): {error}" for error in errors]
        messages += [f"Warning: {warning}"] if warning else []
        found = found or bool(messages)
        print(
            "\n".join(messages)
            or f"Images of '{report.dataset_name}': all {len(dataset_dicts)} read, of the "
            "annotated size."
        )
        usable.append((check.usable(dataset_dicts), report))
    return usable, found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="the config to train with")
    parser.add_argument(
        "--max-images",
        type=int,
        default=500,
        help="measure a random sample of this many training images (default 500)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="overrides, e.g. DATASETS.TRAIN '(\"coco:...\",)'"
    )
    args = parser.parse_args(argv)
    setup_logger(name="retinanet_fl")
    cfg = load_config(args.config_file, args.opts)
    loaded = [load_dataset_dicts(name) for name in cfg.DATASETS.TRAIN]
    loaded, found_problems = check_images(loaded, unreadable_training_fraction(cfg))
    if not all(dataset_dicts for dataset_dicts, _ in loaded):
        print("No usable images left to measure the anchors on.")
        return 1
    dataset_dicts = prepare_dataset_dicts(loaded, filter_empty=False)
    if len(dataset_dicts) > args.max_images:
        sample = np.random.default_rng(0).choice(len(dataset_dicts), args.max_images, replace=False)
        dataset_dicts = [dataset_dicts[i] for i in sorted(sample)]
    print("\n".join(AnchorFit(cfg, dataset_dicts).report()))
    return 1 if found_problems else 0


if __name__ == "__main__":
    sys.exit(main())
