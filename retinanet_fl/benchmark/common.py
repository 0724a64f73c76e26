"""
Measurement helpers shared by the benchmarks: machine description and load, interleaved timing,
peak memory (resident set, CUDA and CPU allocators), operator profiles, and writing the reports
(with the two formats every report uses: the machine's sentence and milliseconds).
"""

import ctypes
import datetime
import gc
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Collection, Dict, List, Optional, Sequence, Union

import torch

from .results import (
    DETECTRON2,
    OURS,
    BenchmarkResults,
    InferenceEntry,
    InferenceResults,
    Machine,
    OperatorTime,
    Profile,
    Target,
    TrainEntry,
    TrainResults,
    to_json,
)

DEFAULT_OUTPUT_DIR = Path("benchmarks/results")
Steps = Dict[str, Callable[[], object]]


def machine_info(device: torch.device) -> Machine:
    """
    Describe the machine now.

    Args:
        device: the device the benchmark runs on.

    Returns:
        Date, versions, CPUs and torch threads, the load average (where the OS has one) and the
        GPU's name on CUDA.
    """
    return Machine(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(device),
        load_average_at_start=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    )


def describe_machine(machine: Machine) -> str:
    """The machine's sentence in a report, without the load."""
    return (
        f"Machine: {machine.platform}, {machine.cpu_count} CPUs, "
        f"{machine.torch_threads} torch threads, device {machine.device}"
        + (f" ({machine.gpu})" if machine.gpu is not None else "")
        + f", torch {machine.torch}, {machine.date}."
    )


def format_ms(seconds: float) -> str:
    """Seconds in a report, as milliseconds: with a decimal below 100 ms."""
    return f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def record_load(machine: Machine) -> None:
    """
    Record the load average at the end of a benchmark, where the OS has one.

    Args:
        machine: the benchmark's machine description, updated in place.
    """
    if hasattr(os, "getloadavg"):
        machine.load_average_at_end = list(os.getloadavg())


class PeakMemory:
    """
    Peak memory a call needs on top of what is allocated before it. On CUDA from the caching
    allocator's statistics; on Linux CPUs from the process's resident-set high-water mark, reset
    before the call through /proc/self/clear_refs, with glibc told to map every allocation over
    64 KiB separately so that freed tensors leave the resident set at once.
    """

    def __init__(self, device: torch.device):
        """
        Args:
            device: where the measured calls allocate; ``available`` tells whether it can be
                measured here.
        """
        self.device = device
        self.libc = None
        self.available = device.type == "cuda" or self._setup_cpu()

    def _setup_cpu(self) -> bool:
        """Tell glibc to map large allocations separately; returns whether the CPU is measurable."""
        if not (sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)):
            return False
        try:
            self.libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return False
        m_mmap_threshold = -3
        return bool(self.libc.mallopt(m_mmap_threshold, 64 * 1024))

    @staticmethod
    def _status_bytes(key: str) -> int:
        """The bytes of a ``/proc/self/status`` entry given in kB (``VmRSS``, ``VmHWM``)."""
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        """
        Args:
            fn: the call to measure; it runs once.

        Returns:
            The peak bytes above the allocation before the call, or None where unavailable.
        """
        if not self.available:
            fn()
            return None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            result = fn()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - before
        else:
            # Hand the heap's free pages back, so that reusing them shows up as new memory.
            self.libc.malloc_trim(0)
            before = self._status_bytes("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            result = fn()
            peak = self._status_bytes("VmHWM") - before
        del result
        return peak


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a CUDA device; nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Steps, repeats: int, device: torch.device, seed: int
) -> Dict[str, List[float]]:
    """
    Time the steps against each other: every repeat runs all of them once, in a shuffled order.

    Args:
        steps: name -> call to time.
        repeats: calls of each step.
        device: synchronized around every call.
        seed: of the shuffles.

    Returns:
        Name -> seconds of each call.
    """
    times = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: Dict[str, List[float]]) -> Dict[str, float]:
    """
    Args:
        times: name -> measurements.

    Returns:
        Name -> median of its measurements.
    """
    return {name: statistics.median(values) for name, values in times.items()}


def _memory_ratio(peaks: Dict[str, Optional[float]]) -> Optional[float]:
    """
    Args:
        peaks: model -> peak bytes (None: not measured).

    Returns:
        Ours / Detectron2's peak, or None where either is unknown (or Detectron2's is 0).
    """
    if peaks.get(OURS) is None or not peaks.get(DETECTRON2):
        return None
    return peaks[OURS] / peaks[DETECTRON2]


def measure_memory(
    entry: Union[TrainEntry, InferenceEntry],
    steps: Steps,
    memory: Optional[PeakMemory],
    repeats: int,
    untracked: Collection[str] = (),
) -> None:
    """
    Median peak memory of each step over ``repeats`` interleaved calls. On the CPU also the
    allocator's view: the peak of the bytes held by tensors allocated during one call, from the
    profiler's memory events (:func:`cpu_allocator_peak`).

    Args:
        entry: receives ``peak_memory_bytes`` (a model's peak is None where unavailable), the
            allocator's ``peak_allocated_bytes`` (CPU only) and their ours/Detectron2 ratios.
        steps: model -> one call (a training iteration or an inference forward).
        memory: the measurement; None when ``repeats`` is 0.
        repeats: calls of each step.
        untracked: models whose memory neither measure sees (None for both): ONNX Runtime
            allocates outside PyTorch, from an arena it keeps between calls.
    """
    tracked = {name: step for name, step in steps.items() if name not in untracked}
    peaks = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in tracked.items():
            peaks[name].append(memory.measure(step))
    entry.peak_memory_bytes = {
        name: None if not values or None in values else statistics.median(values)
        for name, values in peaks.items()
    }
    entry.memory_ratio_ours_vs_detectron2 = _memory_ratio(entry.peak_memory_bytes)
    if memory is not None and memory.device.type == "cpu":
        entry.peak_allocated_bytes = {
            name: cpu_allocator_peak(steps[name]) if name in tracked else None for name in steps
        }
        entry.allocated_ratio_ours_vs_detectron2 = _memory_ratio(entry.peak_allocated_bytes)


def cpu_allocator_peak(fn: Callable[[], object]) -> int:
    """
    The CPU counterpart of ``torch.cuda.max_memory_allocated`` minus the allocation before a call.

    Args:
        fn: the call; it runs once, under the profiler.

    Returns:
        The most bytes that tensors allocated during the call held at once, as PyTorch's CPU
        allocator reports them.
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as directory:
        trace = Path(directory) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    # "Total Allocated" counts the bytes allocated since the profiler started and not yet freed.
    return max(
        (event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]"),
        default=0,
    )


def finish_model_results(
    results: Union[TrainResults, InferenceResults],
    all_steps: Sequence[Steps],
    targets: Callable[[Union[TrainEntry, InferenceEntry]], Dict[str, Target]],
    default_profile: int,
    profile: bool,
    memory_repeats: int,
    untracked: Collection[str] = (),
) -> None:
    """
    Complete the timed settings of a model benchmark: profile one call of every step in each
    setting that misses a time target (else in ``default_profile``), then measure memory (last:
    on the CPU the measurement changes how glibc allocates, see :class:`PeakMemory`), evaluate
    the targets, and record the load at the end.

    Args:
        results: the timed settings; their memory and targets, the profiles and the load are
            filled in.
        all_steps: the steps of each setting.
        targets: the targets of a setting (before memory is measured: its time targets).
        default_profile: index of the setting to profile when none misses a target.
        profile: whether to profile.
        memory_repeats: calls of each step for peak memory (0: not measured).
        untracked: models whose work PyTorch's profiler and allocator do not see: neither
            profiled nor measured (their memory is None).
    """
    entries, device = results.entries, torch.device(results.machine.device)
    if profile:
        missed = [
            index
            for index, entry in enumerate(entries)
            if not all(target.met for target in targets(entry).values())
        ]
        results.profiles = [
            _profile(
                entries[i],
                {name: step for name, step in all_steps[i].items() if name not in untracked},
                device,
            )
            for i in missed or [default_profile]
        ]
    memory = PeakMemory(device) if memory_repeats else None
    for entry, steps in zip(entries, all_steps):
        measure_memory(entry, steps, memory, memory_repeats, untracked)
        entry.targets = targets(entry)
    record_load(results.machine)


def _profile(
    entry: Union[TrainEntry, InferenceEntry], steps: Steps, device: torch.device
) -> Profile:
    """Self time per operator of one call of each step, in milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ops = {}
    for name, step in steps.items():
        with profile(activities=activities) as prof:
            step()
            synchronize(device)
        ops[name] = {
            event.key: OperatorTime(
                self_ms=(
                    event.self_device_time_total
                    if device.type == "cuda"
                    else event.self_cpu_time_total
                )
                / 1e3,
                calls=event.count,
            )
            for event in prof.key_averages()
        }
    return Profile(
        image_size=entry.image_size,
        batch_size=entry.batch_size,
        precision=entry.precision,
        time="self CUDA time" if device.type == "cuda" else "self CPU time",
        ops=ops,
    )


def write_results(name: str, results: BenchmarkResults, markdown: str, output_dir: Path) -> None:
    """
    Write ``<name>.json`` and ``<name>.md`` under ``output_dir``, and print the Markdown.

    Args:
        name: the benchmark's name.
        results: its results.
        markdown: its report.
        output_dir: created where missing.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(to_json(results), indent=2) + "\n")
    (output_dir / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {output_dir / (name + '.json')} and {output_dir / (name + '.md')}")
