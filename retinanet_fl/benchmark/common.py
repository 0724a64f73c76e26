"""Measurement helpers shared by the benchmarks: machine description, peak memory, interleaved
timing, and writing the JSON and Markdown reports."""
import ctypes
import datetime
import gc
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

DEFAULT_OUTPUT_DIR = Path("benchmarks/results")


def machine_info(device: torch.device) -> Dict[str, object]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class PeakMemory:
    """
    Peak memory a call needs on top of what is allocated before it. On CUDA from the caching
    allocator's statistics; on Linux CPUs from the process's resident-set high-water mark, reset
    before the call through /proc/self/clear_refs, with glibc told to map every allocation over
    64 KiB separately so that freed tensors leave the resident set at once.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.libc = None
        self.available = device.type == "cuda" or self._setup_cpu()

    def _setup_cpu(self) -> bool:
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
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        """Run ``fn`` once; returns the peak bytes above the starting allocation, or None."""
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Dict[str, Callable[[], object]], repeats: int, device: torch.device, seed: int
) -> Dict[str, List[float]]:
    """Seconds per call of each step; every repeat runs all steps once, in a shuffled order."""
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


def write_results(name: str, results: Dict[str, object], markdown: str, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {output_dir / (name + '.json')} and {output_dir / (name + '.md')}")
