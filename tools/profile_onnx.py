#!/usr/bin/env python
"""
Where an ONNX file of ``python -m retinanet_fl.export`` spends its time on this CPU: ONNX
Runtime's profiler over a few calls on one image, the time of each operator type and its share.

    python tools/profile_onnx.py exported/model.int8.onnx --size 800 --threads 2
    python tools/profile_onnx.py --benchmark-model --size 800 --threads 2

``--benchmark-model`` profiles the deploy benchmark's files (tools/benchmark_deploy.py): its R-50
with random weights, exported to fp32 ONNX and quantized to int8 as ``--quantize int8`` does. The
table is printed and written as plain JSON to ``--output``.
"""

import argparse
import collections
import json
import os
import tempfile
from typing import Dict, List

import numpy as np


def profile(path: str, size: int, threads: int, calls: int) -> Dict:
    """
    Args:
        path: an ONNX file taking one uint8 image ``(3, H, W)`` as "image".
        size: the image's height and width.
        threads: ONNX Runtime's intra-op threads.
        calls: profiled calls, after one warm-up call.

    Returns:
        "ms_per_call": the calls' mean wall time in ONNX Runtime; "by_op_type": operator type ->
        its ms per call and its share of the operators' time, largest first.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    for _ in range(calls + 1):
        session.run(None, {"image": image})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    runs = sorted((e for e in events if e["name"] == "model_run"), key=lambda e: e["ts"])[1:]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_op = collections.Counter()
    for event in nodes:
        if any(run["ts"] <= event["ts"] <= run["ts"] + run["dur"] for run in runs):
            by_op[event["args"]["op_name"]] += event["dur"]
    total_us = sum(by_op.values())
    return {
        "file": path,
        "size": size,
        "threads": threads,
        "calls": calls,
        "ms_per_call": sum(run["dur"] for run in runs) / 1e3 / calls,
        "by_op_type": {
            op: {"ms_per_call": us / 1e3 / calls, "share": us / total_us}
            for op, us in by_op.most_common()
        },
    }


def benchmark_model_files(size: int, directory: str, calibration_images: int) -> List[str]:
    """The deploy benchmark's R-50 (random weights) as fp32 and int8 ONNX files in ``directory``."""
    import benchmark
    import benchmark_deploy

    cfg = benchmark.detectron2_cfg(50, 80, "cpu", score_thresh=0.05)
    model = benchmark.build_pair(cfg, 0, size)["ours"].eval()
    images = benchmark_deploy.calibration_noise(size, calibration_images, seed=0)
    return list(benchmark_deploy.onnx_files(model, cfg, size, images, directory))


def table(result: Dict, rows: int = 12) -> str:
    """Returns: the largest operator types of ``result`` as a markdown table."""
    lines = [
        f"{result['file']}, {result['size']} px, {result['threads']} threads: "
        f"{result['ms_per_call']:.0f} ms per call ({result['calls']} calls)",
        "",
        "| operator | ms per call | share |",
        "|---|---:|---:|",
    ]
    for op, cost in list(result["by_op_type"].items())[:rows]:
        lines.append(f"| {op} | {cost['ms_per_call']:.1f} | {100 * cost['share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="*", help="ONNX files of python -m retinanet_fl.export")
    parser.add_argument("--benchmark-model", action="store_true", help="the benchmark's R-50")
    parser.add_argument("--size", type=int, default=800, help="the image's side, px")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--calls", type=int, default=5, help="profiled calls")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--output", default=None, help="a JSON file for the results")
    args = parser.parse_args(argv)
    files = list(args.files)
    if args.benchmark_model:
        directory = tempfile.mkdtemp(prefix="profile-onnx-")
        files += benchmark_model_files(args.size, directory, args.calibration_images)
    if not files:
        parser.error("give ONNX files, or --benchmark-model")
    results = [profile(path, args.size, args.threads, args.calls) for path in files]
    print("\n".join(table(result) for result in results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
