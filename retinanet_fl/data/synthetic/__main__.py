"""``python -m retinanet_fl.data.synthetic --out DIR``: write the synthetic COCO-format dataset."""

import argparse
import collections
import json
import math
import time
from typing import List, Optional

from . import DEFAULT_SYNTHETIC_ROOT
from .generate import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    DISTRACTORS_PER_IMAGE,
    SPLITS,
    generate_synthetic_coco,
    synthetic_split_paths,
)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m retinanet_fl.data.synthetic",
        description="Write the synthetic shapes dataset in COCO's format, replacing an earlier "
        "one at --out.",
    )
    parser.add_argument(
        "--out", default=DEFAULT_SYNTHETIC_ROOT, help="output folder (default: %(default)s)"
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="training images")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="validation images")
    parser.add_argument(
        "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="side of the square images"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--objects",
        type=int,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="objects per image, uniform in [MIN, MAX] (default: 8%% empty images, else "
        "geometric with mean ~3.6, at most 16)",
    )
    parser.add_argument(
        "--distractors",
        type=float,
        default=DISTRACTORS_PER_IMAGE,
        help="mean number of distractors per image (clutter; default: %(default)s)",
    )
    parser.add_argument(
        "--max-object-size",
        type=float,
        default=None,
        help="largest object diameter in pixels (default: half the image size)",
    )
    parser.add_argument(
        "--long-tail",
        type=float,
        default=None,
        metavar="RATIO",
        help="long-tailed training split: class frequencies decay geometrically over the classes, "
        "the first (red_circle) RATIO times as frequent as the last (blue_triangle); validation "
        "stays balanced (default: balanced)",
    )
    args = parser.parse_args(argv)
    if args.long_tail is not None and not (math.isfinite(args.long_tail) and args.long_tail >= 1):
        parser.error(f"--long-tail RATIO must be a finite number >= 1, got {args.long_tail:g}.")

    start = time.perf_counter()
    try:
        generate_synthetic_coco(
            args.out,
            args.num_train,
            args.num_val,
            args.image_size,
            args.seed,
            objects_per_image=None if args.objects is None else tuple(args.objects),
            distractors_per_image=args.distractors,
            max_object_size=args.max_object_size,
            long_tail_ratio=args.long_tail,
        )
    except ValueError as e:
        parser.error(str(e))
    seconds = time.perf_counter() - start
    for split in SPLITS:
        json_file, image_root = synthetic_split_paths(args.out, split)
        with open(json_file) as f:
            dataset = json.load(f)
        print(
            f"{split}: {len(dataset['images'])} images in {image_root}, "
            f"{len(dataset['annotations'])} objects in {json_file}"
        )
        if args.long_tail is not None:
            counts = collections.Counter(a["category_id"] for a in dataset["annotations"])
            print(
                "  objects per class: "
                + ", ".join(f"{c['name']} {counts[c['id']]}" for c in dataset["categories"])
            )
    print(f"Generated in {seconds:.1f} s.")


if __name__ == "__main__":
    main()
