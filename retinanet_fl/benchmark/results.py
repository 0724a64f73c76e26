"""
The benchmarks' results as dataclasses.

Every dataclass here is written by :func:`.serialization.to_json` with its fields as keys, in
declaration order, and read back by :func:`.serialization.from_json`; the field names are the keys
of the committed ``benchmarks/results/*.json``. A field declared with :func:`optional` is left out
of the JSON while it (or the field it names) is None; every other field is always written.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from .serialization import from_json, keyed_by, not_in_json, optional, to_json

__all__ = [
    "OURS",
    "DETECTRON2",
    "TORCHVISION",
    "TORCHSCRIPT",
    "ONNXRUNTIME",
    "EXPORTED_MODELS",
    "STAGES",
    "EXPORTED_STAGE",
    "EAGER",
    "COMPILED",
    "INFERENCE",
    "TRAIN",
    "COMPILE_MODES",
    "Machine",
    "Target",
    "OperatorTime",
    "Profile",
    "ModelSettings",
    "TrainSettings",
    "InferenceSettings",
    "ExportedSettings",
    "ExportedFile",
    "TrainEntry",
    "InferenceEntry",
    "TrainResults",
    "InferenceResults",
    "LossSettings",
    "LossEntry",
    "LossResults",
    "Table1eEntry",
    "Table1eResults",
    "CompileEntry",
    "CompileMode",
    "CompileResults",
    "BenchmarkResults",
    "optional",
    "to_json",
    "from_json",
    "load_results",
]

# The models of the train and inference benchmarks, as keys of their per-model measurements.
OURS, DETECTRON2, TORCHVISION = "ours", "detectron2", "torchvision"
# Ours exported by retinanet_fl.export and run from its file: TorchScript in torch.jit, ONNX in
# ONNX Runtime's CPU execution provider (inference benchmark only).
TORCHSCRIPT, ONNXRUNTIME = "torchscript", "onnxruntime"
EXPORTED_MODELS = (TORCHSCRIPT, ONNXRUNTIME)
# The stages that the inference benchmark times apart in the eager models; an exported model runs
# as one graph, timed as one stage.
STAGES = ("backbone", "head", "postprocess")
EXPORTED_STAGE = "forward"
# The compile benchmark's models (keys of its times) and modes.
EAGER, COMPILED = "eager", "compiled"
INFERENCE, TRAIN = "inference", "train"
COMPILE_MODES = (INFERENCE, TRAIN)


@dataclass
class Machine:
    """Where and when a benchmark ran; see :func:`.common.machine_info`."""

    date: str
    python: str
    torch: str
    platform: str
    cpu_count: Optional[int]
    torch_threads: int
    device: str
    load_average_at_start: Optional[List[float]] = optional()
    gpu: Optional[str] = optional()
    load_average_at_end: Optional[List[float]] = optional()


@dataclass
class Target:
    """A ratio of ours to another model against its limit (see :mod:`.targets`)."""

    ratio: float
    target: str  # relation and limit, e.g. "<= 0.95"
    met: bool
    missed_by: float  # how far the ratio is above the limit; 0 when met


@dataclass
class OperatorTime:
    """One operator's self time in one profiled call."""

    self_ms: float
    calls: int


@dataclass
class Profile:
    """Self time per operator of one call of every model in one setting."""

    image_size: int
    batch_size: int
    precision: str
    time: str  # what was measured: "self CPU time" or "self CUDA time"
    ops: Dict[str, Dict[str, OperatorTime]]  # model -> operator -> time


@dataclass
class ModelSettings:
    """The options of a train or inference run, as the report states them."""

    config: str
    num_classes: int
    image_sizes: List[int]
    precisions: List[str]
    warmup: int
    iters: int
    memory_repeats: int
    threads: int


@dataclass
class TrainSettings(ModelSettings):
    """The train benchmark's options."""

    batch_size: int
    throughput_batch_size: Optional[int]  # None on the CPU, where it is not measured
    num_boxes_per_image: int
    optimizer: str
    what: str


@dataclass
class ExportedSettings:
    """How the inference benchmark made and ran the exported models."""

    models: List[str]  # some of EXPORTED_MODELS
    onnx_opset: Optional[int]  # these three: None without ONNXRUNTIME
    onnxruntime_version: Optional[str]
    # Threads of ONNX Runtime's intra-op pool: the benchmark's torch threads, for a fair comparison.
    onnxruntime_intra_op_threads: Optional[int]
    what: str


@dataclass
class InferenceSettings(ModelSettings):
    """The inference benchmark's options."""

    batch_sizes: List[int]
    score_thresh: float
    torchvision_model: Optional[str]  # None when torchvision is not compared
    what: str
    exported: Optional[ExportedSettings] = optional()  # None when no exported model ran


@dataclass
class ExportedFile:
    """One exported model of the inference benchmark: ours, exported at one image size."""

    image_size: int
    model: str  # one of EXPORTED_MODELS
    file_bytes: int
    export_s: float  # tracing and writing the file
    load_s: float  # loading it (TorchScript) or creating the session (ONNX Runtime)


@dataclass
class _Setting:
    """The setting of one entry: the first keys of every train and inference entry."""

    image_size: int
    batch_size: int
    precision: str


@dataclass
class _MemoryAndTargets:
    """
    The last keys of every train and inference entry, filled in after the timings. Entries list
    this class first among their bases, so that its fields come after their own.
    """

    peak_memory_bytes: Optional[Dict[str, Optional[float]]] = None  # model -> median peak
    memory_ratio_ours_vs_detectron2: Optional[float] = None
    # The CPU allocator's peak (CPU runs only): model -> bytes; None for a model whose
    # allocations PyTorch's allocator does not see (ONNX Runtime).
    peak_allocated_bytes: Optional[Dict[str, Optional[int]]] = optional()
    allocated_ratio_ours_vs_detectron2: Optional[float] = optional("peak_allocated_bytes")
    targets: Dict[str, Target] = field(default_factory=dict)


@dataclass
class _TrainTimes(_Setting):
    loss_kernel: str
    first_iteration_s: Dict[str, float]
    first_iteration_losses: Dict[str, Dict[str, float]]  # model -> loss name -> value
    times_s: Dict[str, List[float]]
    median_s: Dict[str, float]
    images_per_s: Dict[str, float]
    time_ratio_ours_vs_detectron2: float
    phase_median_s: Dict[str, Dict[str, float]]  # model -> forward/backward/optimizer -> s
    num_anchors_per_image: int
    cls_loss_median_s: Dict[str, float]
    # The time ratio if the steps differed only in their classification losses.
    time_ratio_bound_from_cls_loss: float


@dataclass
class TrainEntry(_MemoryAndTargets, _TrainTimes):
    """One (image size, batch size, precision) setting of the train benchmark."""


@dataclass
class _InferenceTimes(_Setting):
    first_call_s: Dict[str, float]
    detections_per_image: Dict[str, List[int]]  # model -> detections of each image
    times_s: Dict[str, List[float]]
    median_s: Dict[str, float]
    latency_per_image_s: Dict[str, float]
    images_per_s: Dict[str, float]
    # model -> stage (STAGES; exported models: EXPORTED_STAGE) -> s
    stage_median_s: Dict[str, Dict[str, float]]
    time_ratio_ours_vs_detectron2: float
    time_ratio_ours_vs_torchvision: Optional[float] = optional()
    # exported model -> its median / ours' median (same images, same rounds)
    time_ratio_exported_vs_ours: Optional[Dict[str, float]] = optional()


@dataclass
class InferenceEntry(_MemoryAndTargets, _InferenceTimes):
    """One (image size, batch size, precision) setting of the inference benchmark."""


@dataclass
class _ModelResults:
    benchmark: str
    machine: Machine
    settings: ModelSettings
    entries: list
    profiles: Optional[List[Profile]] = optional()


@dataclass
class TrainResults(_ModelResults):
    """Everything the train benchmark measured: ``train.json``."""

    settings: TrainSettings
    entries: List[TrainEntry]


@dataclass
class InferenceResults(_ModelResults):
    """Everything the inference benchmark measured: ``inference.json``."""

    settings: InferenceSettings
    entries: List[InferenceEntry]
    exported_files: Optional[List[ExportedFile]] = optional()


@dataclass
class LossSettings:
    """The losses benchmark's options."""

    num_classes: int
    sizes: List[int]
    repeats: int
    alpha: float
    gamma: float
    dtype: str
    what: str


@dataclass
class LossEntry:
    """The loss methods at one number of anchors R; measurements are per method."""

    num_anchors: int
    num_classes: int
    rk_fp32_bytes: int
    first_call_s: Dict[str, float]
    times_s: Dict[str, List[float]]
    median_s: Dict[str, float]
    # The method the speed-ups are relative to; it names the speed-ups' JSON key.
    reference: str = not_in_json("")
    # method -> median of the reference / median of the method ("speedup_vs_<reference>").
    speedup: Dict[str, float] = keyed_by("speedup_vs_", "reference")
    gradient_l1: Dict[str, float] = field(default_factory=dict)  # the same from every method
    peak_extra_bytes: Optional[Dict[str, Optional[int]]] = None
    peak_extra_in_rk_fp32: Optional[Dict[str, Optional[float]]] = None
    targets: Dict[str, bool] = field(default_factory=dict)


@dataclass
class LossResults:
    """Everything the losses benchmark measured: ``losses.json``."""

    benchmark: str
    machine: Machine
    settings: LossSettings
    sizes: List[LossEntry]
    compile_s_per_new_setting: Optional[Dict[str, float]] = optional()


@dataclass
class Table1eEntry:
    """One backbone at one image size."""

    depth: int
    short_side: int
    height: int
    width: int
    times_s: List[float]
    median_ms: float
    ratio_to_reference: float
    paper_ms: Optional[float] = None
    paper_ap: Optional[float] = None
    paper_ratio_to_reference: Optional[float] = None


@dataclass
class Table1eResults:
    """Everything the table1e benchmark measured: ``table1e.json``."""

    benchmark: str
    machine: Machine
    reference_size: int
    repeats: int
    entries: List[Table1eEntry]


@dataclass
class CompileEntry:
    """
    One call of the compile benchmark's first pass (an image in inference, an iteration on a batch
    in training): its first call in each model.
    """

    image_sizes: List[List[int]]  # (height, width) of each image of the batch
    # The batch as the network runs it: padded to its largest image, rounded up to the backbone's
    # size divisibility.
    padded_height: int
    padded_width: int
    eager_s: float
    compiled_s: float
    compiled_graphs: int  # graphs torch.compile built during the compiled model's call


@dataclass
class CompileMode:
    """The compile benchmark in one mode: inference or training."""

    mode: str  # one of COMPILE_MODES
    what: str  # what one call does
    batch_size: int
    entries: List[CompileEntry]  # the first pass over the calls, in order
    steady_times_s: Dict[str, List[float]]  # model -> the later passes' seconds per call
    steady_compiled_graphs: int  # graphs built during the later passes (sizes seen before)
    steady_ratio_compiled_vs_eager: float  # ratio of the medians
    compile_overhead_s: float  # first pass: compiled − eager, summed over the calls that compiled
    break_even_calls: Optional[float]  # overhead / per-call saving; None: no saving
    # Frames that torch.compile gave up on (the recompile limit reached: from then on, a size
    # without a graph runs eagerly).
    uncompiled_frames: int
    # Training: the largest |compiled − eager| / |eager| of a loss over the first pass.
    max_loss_relative_difference: Optional[float] = optional()


@dataclass
class CompileResults:
    """Everything the compile benchmark measured: ``compile.json``."""

    benchmark: str
    machine: Machine
    config: str
    channels_last: bool  # MODEL.RETINANET_FL.CHANNELS_LAST of both models
    precision: str  # "fp32" or "amp" (autocast: bf16 on the CPU, fp16 on CUDA)
    # True: every mode compiled into an empty inductor cache; False: into the on-disk cache as
    # earlier runs left it (a graph compiled before costs less).
    fresh_compile_cache: bool
    recompile_limit: int  # torch._dynamo.config.recompile_limit: graphs per function at most
    min_short_side: int
    max_short_side: int
    max_size: int
    steady_repeats: int
    modes: List[CompileMode]


BenchmarkResults = Union[
    TrainResults, InferenceResults, LossResults, Table1eResults, CompileResults
]
_RESULT_TYPES = {
    "train": TrainResults,
    "inference": InferenceResults,
    "losses": LossResults,
    "table1e": Table1eResults,
    "compile": CompileResults,
}


def load_results(path: Path) -> BenchmarkResults:
    """
    Read a results file that a benchmark wrote.

    Args:
        path: ``train.json``, ``inference.json`` or ``losses.json`` (the ``benchmark`` key tells
            which).

    Returns:
        The results as dataclasses.
    """
    data = json.loads(Path(path).read_text())
    return from_json(_RESULT_TYPES[data["benchmark"]], data)
