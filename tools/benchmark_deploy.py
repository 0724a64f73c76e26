"""
The ``deploy`` part of tools/benchmark.py: CPU inference per image at batch 1 of every deployment
form against Detectron2's eager RetinaNet fp32, each form's AP beside its time.

Forms: ``detectron2`` and ``ours`` (eager fp32), ``ours_bf16`` and ``pt2_bf16`` (eager under bf16
autocast and ``--format pt2 --precision bf16``, on CPUs with AVX-512 BF16 or AMX only),
``onnx_fp32`` and ``onnx_int8`` (ONNX Runtime, the int8 file of ``python -m retinanet_fl.export
--quantize int8``) and, where OpenVINO and NNCF are installed,
``openvino_int8`` (NNCF's post-training quantization of the same fp32 ONNX file; timed, not
shipped). Times are taken on the benchmark's R-50 with random weights (what they do not depend
on); the AP on the synthetic validation set, of a trained checkpoint (``--deploy-weights``) in
each form, evaluated as ``train_net.py --eval-only`` does.
"""

import functools
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from retinanet_fl.export.cpu import cpu_flags, has_bf16, has_vnni

DEPLOY_DATASET = "synthetic_val"


def calibration_noise(size: int, count: int, seed: int) -> List:
    """Noise images for the timing model's calibration: its speed does not depend on them."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(256, (3, size, size), generator=generator, dtype=torch.uint8).numpy()
        for _ in range(count)
    ]


def _openvino_int8(fp32_path: str, images: List, threads: int) -> Optional[Callable]:
    """NNCF's int8 of an fp32 ONNX file compiled by OpenVINO, or None when they are missing."""
    try:
        import nncf
        import openvino
    except ImportError:
        return None
    model = openvino.Core().read_model(fp32_path)
    dataset = nncf.Dataset(images, lambda image: {"image": image})
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    compiled = openvino.Core().compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": threads})
    return lambda image: list(compiled({"image": image.numpy()}).values())


def _sample(size: int) -> torch.Tensor:
    """The uint8 image the exporters trace with."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(256, (3, size, size), generator=generator).to(torch.uint8)


def onnx_files(model, cfg, size: int, calibration_images: List, directory: str) -> Tuple[str, str]:
    """
    Returns:
        the paths of ``model`` exported to fp32 ONNX and quantized to int8 on
        ``calibration_images``, as ``python -m retinanet_fl.export`` writes them, in ``directory``.
    """
    from retinanet_fl.export import ExportableDetector, export_metadata
    from retinanet_fl.export.api import export_onnx
    from retinanet_fl.export.quantize import quantize_onnx_int8

    fp32_path = os.path.join(directory, f"model_{size}.onnx")
    int8_path = os.path.join(directory, f"model_{size}.int8.onnx")
    metadata = export_metadata(cfg)
    export_onnx(ExportableDetector(model), _sample(size), fp32_path, metadata)
    quantize_onnx_int8(fp32_path, int8_path, calibration_images, metadata)
    return fp32_path, int8_path


def _exported_forms(model, cfg, size: int, args, directory: str) -> Dict[str, Callable]:
    """Ours exported to fp32 and int8 ONNX (and OpenVINO int8), each loaded from its file."""
    from retinanet_fl.export import ExportableDetector, ExportedDetector, export_metadata
    from retinanet_fl.export.api import export_pt2

    images = calibration_noise(size, args.deploy_calibration_images, args.seed)
    fp32_path, int8_path = onnx_files(model, cfg, size, images, directory)
    forms = {
        "onnx_fp32": ExportedDetector(fp32_path, intra_op_threads=args.threads),
        "onnx_int8": ExportedDetector(int8_path, intra_op_threads=args.threads),
    }
    if has_bf16():
        bf16_path = os.path.join(directory, f"model_{size}.bf16.pt2")
        export_pt2(
            ExportableDetector(model, "bf16"), _sample(size), bf16_path, export_metadata(cfg)
        )
        forms["pt2_bf16"] = ExportedDetector(bf16_path)
    openvino_int8 = _openvino_int8(fp32_path, images, args.threads)
    if openvino_int8 is not None:
        forms["openvino_int8"] = openvino_int8
    return forms


class _Autocast(torch.nn.Module):
    """A model run under bf16 autocast on the CPU (eager bf16)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(batched_inputs)


def deploy_ap(args) -> Dict[str, Any]:
    """
    The box AP on ``synthetic_val`` of ``--deploy-weights`` in each shipped form: eager fp32 (and
    bf16 where the CPU has it), fp32 and int8 ONNX. Detectron2's eager RetinaNet holding the same
    weights runs the same inference (tests/modeling check it bit for bit): its AP is ours.

    Returns:
        form -> AP, and what they were measured on; {} without ``--deploy-weights``.
    """
    if not args.deploy_weights:
        return {}
    from retinanet_fl.config import load_config
    from retinanet_fl.engine import AtomicCheckpointer, Trainer
    from retinanet_fl.evaluate_exported import evaluate_exported
    from retinanet_fl.export import export_model
    from retinanet_fl.export.__main__ import export_int8

    opts = ["MODEL.WEIGHTS", args.deploy_weights, "DATASETS.TEST", f"('{DEPLOY_DATASET}',)"]
    cfg = load_config(args.deploy_config, opts, for_inference=True)
    model = Trainer.build_model(cfg)
    AtomicCheckpointer(model).load(args.deploy_weights)
    model.eval()
    ap = {"ours": Trainer.test(cfg, model)["bbox"]["AP"]}
    if has_bf16():
        ap["ours_bf16"] = Trainer.test(cfg, _Autocast(model))["bbox"]["AP"]
    with tempfile.TemporaryDirectory() as directory:
        files = {
            "onnx_fp32": export_model(cfg, "onnx", directory),
            "onnx_int8": export_int8(cfg, directory, args.deploy_calibration_images),
        }
        for form, path in files.items():
            results = evaluate_exported(path, args.deploy_config, opts[2:], directory)
            ap[form] = results["bbox"]["AP"]
    ap["detectron2"] = ap["ours"]
    return {
        "ap": ap,
        "ap_of": f"{args.deploy_weights} ({args.deploy_config}) on {DEPLOY_DATASET}, "
        f"int8 calibrated on {args.deploy_calibration_images} images of DATASETS.TRAIN",
    }


def deploy_cases(args, device: torch.device, helpers) -> List:
    """
    Per image size: one image at batch 1 through every form, each timed against Detectron2's.

    Args:
        args: the benchmark's arguments.
        device: must be the CPU.
        helpers: tools/benchmark.py itself (Case, build_pair, detectron2_cfg, inference, ...).
    """
    if device.type != "cpu":
        print("Not timing the deploy part: it is a CPU benchmark (--device cpu).")
        return []
    accuracy = deploy_ap(args)
    features = {
        "cpu_vnni": has_vnni(),
        "cpu_bf16": has_bf16(),
        "cpu_flags_used": sorted(
            f for f in cpu_flags() if "vnni" in f or "bf16" in f or "amx" in f
        ),
    }
    cases = []
    directory = tempfile.mkdtemp(prefix="benchmark-deploy-")
    for size in args.image_sizes:
        cfg = helpers.detectron2_cfg(args.depth, args.num_classes, "cpu", score_thresh=0.05)
        models = {n: m.eval() for n, m in helpers.build_pair(cfg, args.seed, size).items()}
        image = helpers.make_batch(1, size, args.num_classes, 0, args.seed + size, device)[0]
        inputs = [{"image": image["image"]}]
        steps = {name: helpers.inference(m, inputs, False, device) for name, m in models.items()}
        if has_bf16():
            steps["ours_bf16"] = helpers.inference(models["ours"], inputs, True, device)
        for name, form in _exported_forms(models["ours"], cfg, size, args, directory).items():
            steps[name] = functools.partial(helpers._run_exported, form, [image["image"]])
        cases.append(
            helpers.Case(
                "deploy",
                f"{size} px, batch 1, CPU",
                steps,
                [(name, "detectron2") for name in steps if name != "detectron2"],
                info={**features, **accuracy},
                summarize=helpers._detections,
                untracked=("onnx_fp32", "onnx_int8", "openvino_int8"),
            )
        )
    return cases
