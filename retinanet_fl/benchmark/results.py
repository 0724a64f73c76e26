"""
The benchmarks' results as dataclasses, and their JSON form.

Every dataclass here is written by :func:`to_json` with its fields as keys, in declaration order,
and read back by :func:`from_json`; the field names are the keys of the committed
``benchmarks/results/*.json``. A field declared with :func:`optional` is left out of the JSON
while it (or the field it names) is None; every other field is always written.
"""

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Type, TypeVar, Union

__all__ = [
    "OURS",
    "DETECTRON2",
    "TORCHVISION",
    "Machine",
    "Target",
    "OperatorTime",
    "Profile",
    "ModelSettings",
    "TrainSettings",
    "InferenceSettings",
    "TrainEntry",
    "InferenceEntry",
    "TrainResults",
    "InferenceResults",
    "LossSettings",
    "LossEntry",
    "LossResults",
    "Table1eEntry",
    "Table1eResults",
    "BenchmarkResults",
    "optional",
    "to_json",
    "from_json",
    "load_results",
]

# The models of the train and inference benchmarks, as keys of their per-model measurements.
OURS, DETECTRON2, TORCHVISION = "ours", "detectron2", "torchvision"

T = TypeVar("T")
# Field metadata: the field's JSON key is left out while this field's value is None.
_OMIT_IF_NONE = "omit_if_none"
# Field metadata (LossEntry's speed-ups): the JSON key is this prefix + the named field's value.
_KEY_PREFIX, _KEY_FROM = "key_prefix", "key_from"
# Field metadata: the field has no JSON key of its own (it is part of another field's key).
_NOT_IN_JSON = "not_in_json"


def optional(omit_if_none_of: Optional[str] = None) -> object:
    """
    A field that defaults to None and is left out of the JSON while it is None.

    Args:
        omit_if_none_of: leave the field out while this other field is None instead.

    Returns:
        The dataclass field.
    """
    return field(default=None, metadata={_OMIT_IF_NONE: omit_if_none_of or True})


def to_json(value: object) -> object:
    """
    The JSON form of a result: dataclasses become dicts (see the module's docstring), tuples
    become lists, everything else stays as it is.

    Args:
        value: a dataclass of this module, or a dict, list, tuple or plain value holding them.

    Returns:
        What ``json.dumps`` writes.
    """
    if dataclasses.is_dataclass(value):
        data = {}
        for f in dataclasses.fields(value):
            omit = f.metadata.get(_OMIT_IF_NONE)
            if f.metadata.get(_NOT_IN_JSON) or (
                omit and getattr(value, f.name if omit is True else omit) is None
            ):
                continue
            key = f.name
            if _KEY_PREFIX in f.metadata:
                key = f.metadata[_KEY_PREFIX] + getattr(value, f.metadata[_KEY_FROM])
            data[key] = to_json(getattr(value, f.name))
        return data
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(kind: Type[T], data: object) -> T:
    """
    Read :func:`to_json`'s output back.

    Args:
        kind: the type to read, as annotated: a dataclass of this module, ``List[...]``,
            ``Dict[str, ...]``, ``Optional[...]`` or a plain type.
        data: the parsed JSON.

    Returns:
        An object of ``kind``.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        values = {}
        for f in dataclasses.fields(kind):
            key = f.name
            if _KEY_PREFIX in f.metadata:
                key = next(k for k in data if k.startswith(f.metadata[_KEY_PREFIX]))
                values[f.metadata[_KEY_FROM]] = key[len(f.metadata[_KEY_PREFIX]) :]
            if key in data:
                values[f.name] = from_json(hints[f.name], data[key])
        return kind(**values)
    if origin is Union:
        (value_kind,) = [arg for arg in args if arg is not type(None)]
        return None if data is None else from_json(value_kind, data)
    if origin is list:
        return [from_json(args[0], item) for item in data]
    if origin is dict:
        return {key: from_json(args[1], item) for key, item in data.items()}
    return data


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
class InferenceSettings(ModelSettings):
    """The inference benchmark's options."""

    batch_sizes: List[int]
    score_thresh: float
    torchvision_model: Optional[str]  # None when torchvision is not compared
    what: str


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
    # The CPU allocator's peak (CPU runs only): model -> bytes.
    peak_allocated_bytes: Optional[Dict[str, int]] = optional()
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
    stage_median_s: Dict[str, Dict[str, float]]  # model -> backbone/head/postprocess -> s
    time_ratio_ours_vs_detectron2: float
    time_ratio_ours_vs_torchvision: Optional[float] = optional()


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
    reference: str = field(default="", metadata={_NOT_IN_JSON: True})
    # method -> median of the reference / median of the method ("speedup_vs_<reference>").
    speedup: Dict[str, float] = field(
        default_factory=dict, metadata={_KEY_PREFIX: "speedup_vs_", _KEY_FROM: "reference"}
    )
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


BenchmarkResults = Union[TrainResults, InferenceResults, LossResults, Table1eResults]
_RESULT_TYPES = {
    "train": TrainResults,
    "inference": InferenceResults,
    "losses": LossResults,
    "table1e": Table1eResults,
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
