"""
Run a sweep as ordinary ``train_net.py`` runs, resumably.

Each run lives in ``OUTPUT/runs/<digest>/``, where the digest hashes the run's full config (base
file and overrides resolved): rows of different tables that are the same model (Table 1b's γ = 2,
Table 1c's 3 × 3, Table 3's FL) share one run, and changing an override (``--opts``) gives a new
run instead of reusing stale results. ``ablation_status.json`` in the run folder records whether
the run is running, finished or failed, so a sweep started again skips what is done and resumes
an interrupted run from its last checkpoint.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import get_cfg
from .sweeps import Sweep, SweepRow

logger = logging.getLogger(__name__)

STATUS_FILE = "ablation_status.json"
LOG_FILE = "train_net.log"
RUNS_DIR = "runs"

# A run killed outright stays "running"; one stopped by an exception (Ctrl-C) is "interrupted".
RUNNING, INTERRUPTED, FINISHED, FAILED, PENDING = (
    "running",
    "interrupted",
    "finished",
    "failed",
    "pending",
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """
    One ``train_net.py`` run.

    Attributes:
        config_file: the ``--config-file``.
        opts: ``KEY VALUE`` overrides as command-line strings, applied in order after the file.
        run_dir: the run's ``OUTPUT_DIR``.
        num_gpus: the ``--num-gpus`` (worker processes on a machine without CUDA).
        seed: the ``SEED`` the overrides set when the sweep repeats rows over seeds, else None.
    """

    config_file: Path
    opts: Tuple[str, ...]
    run_dir: Path
    num_gpus: int = 1
    seed: Optional[int] = None

    def command(self, resume: bool) -> List[str]:
        """
        Args:
            resume: add ``--resume`` (continue from ``run_dir/last_checkpoint`` if there is one).

        Returns:
            the command line of the run.
        """
        cmd = [
            sys.executable,
            "-m",
            "retinanet_fl.train_net",
            "--config-file",
            str(self.config_file),
        ]
        cmd += ["--num-gpus", str(self.num_gpus)]
        if resume:
            cmd.append("--resume")
        return cmd + ["OUTPUT_DIR", str(self.run_dir), *self.opts]


# Runs one RunSpec (resuming if asked) and returns its exit code; tests inject their own.
Launcher = Callable[[RunSpec, bool], int]


def format_opt_value(value: Any) -> str:
    """
    Returns:
        a YAML value of a sweep file as the command line passes it, so that Detectron2's
        ``merge_from_list`` reads it back as the same value (``[[1.0]]`` stays a list).
    """
    if isinstance(value, str):
        return value
    return repr(value)


def format_opts(opts: Sequence[Any]) -> Tuple[str, ...]:
    """
    Returns:
        a flat ``KEY, VALUE, ...`` list with every value as a command-line string.
    """
    return tuple(key if i % 2 == 0 else format_opt_value(key) for i, key in enumerate(opts))


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested config as ``{"MODEL.RETINANET.FOCAL_LOSS_ALPHA": 0.25, ...}``."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def config_digest(config_file: Path, opts: Sequence[str]) -> str:
    """
    Fingerprint of a run's configuration: a hash of the values that differ from the defaults
    (``get_cfg()``), once the file and the overrides are applied. Overrides that restate a value
    do not change it, and neither does a new config key added with its default to the project.

    Args:
        config_file: the base config file.
        opts: command-line overrides.

    Returns:
        12 hex digits (``OUTPUT_DIR`` is not part of the configuration).
    """
    defaults = _flatten(get_cfg())
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = defaults["OUTPUT_DIR"]
    changed = {k: v for k, v in _flatten(cfg).items() if k not in defaults or defaults[k] != v}
    encoded = json.dumps(sorted(changed.items()), default=repr)
    return hashlib.sha1(encoded.encode()).hexdigest()[:12]


def plan_runs(
    sweep: Sweep,
    output_dir: Path,
    extra_opts: Sequence[Any] = (),
    num_gpus: int = 1,
    seeds: Optional[Sequence[int]] = None,
) -> List[Tuple[SweepRow, RunSpec]]:
    """
    The runs of a sweep.

    Args:
        sweep: the table.
        output_dir: the sweep's output folder; runs go to ``output_dir/runs/<digest>``.
        extra_opts: overrides appended to every run (``--opts``), e.g. a short schedule.
        num_gpus: forwarded to every run.
        seeds: if given, every row runs once per seed (``SEED`` appended last), the whole table
            with the first seed before the second.

    Returns:
        (row, run) pairs: in the table's order, seed after seed if seeds are given.
    """
    if seeds:
        return [
            (row, dataclasses.replace(spec, seed=seed))
            for seed in seeds
            for row, spec in plan_runs(sweep, output_dir, [*extra_opts, "SEED", seed], num_gpus)
        ]
    if not sweep.base_config.is_file():
        raise FileNotFoundError(
            f"Table {sweep.table}: base config '{sweep.base_config}' does not exist; "
            "fix BASE_CONFIG in the "
            "table (or preset) file, or pass --base-config."
        )
    runs = []
    for row in sweep.rows:
        opts = format_opts([*sweep.run_opts(row), *extra_opts])
        where = f"Table {sweep.table}, row {row.name}"
        runs.append((row, make_run_spec(sweep.base_config, opts, output_dir, num_gpus, where)))
    return runs


def make_run_spec(
    config_file: Path, opts: Sequence[str], output_dir: Path, num_gpus: int, where: str
) -> RunSpec:
    """
    Args:
        config_file: the run's base config.
        opts: its overrides, as command-line strings.
        output_dir: the sweep's output folder; the run goes to ``output_dir/runs/<digest>``.
        num_gpus: forwarded to the run.
        where: names the run in the error raised when the overrides do not apply.

    Returns:
        the run.
    """
    try:
        digest = config_digest(config_file, opts)
    except (KeyError, ValueError, AssertionError) as error:
        raise ValueError(
            f"{where}: the overrides {list(opts)} do not apply to {config_file}: {error}"
        ) from error
    run_dir = Path(output_dir).resolve() / RUNS_DIR / digest
    return RunSpec(Path(config_file), tuple(opts), run_dir, num_gpus)


def read_status(run_dir: Path) -> Optional[Dict[str, Any]]:
    """
    Returns:
        the run's recorded status (keys ``status``, ``returncode``, ``error``, ...), or None if it
        never started. A file cut short by a crash reads as an interrupted run.
    """
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"status": RUNNING}


def _write_status(run_dir: Path, status: Dict[str, Any]) -> None:
    # Write then rename, so an interruption never leaves a half-written status.
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(path)


def read_eval_results(run_dir: Path) -> Optional[Dict[str, float]]:
    """
    Read a run's final box AP from Detectron2's ``metrics.json`` (one JSON object per line).

    Returns:
        ``{"AP": ..., "AP50": ..., "AP75": ...}`` from the last line holding ``bbox/AP`` (COCO AP
        in percent; NaN when the model detected nothing), with COCOEvaluator's per-category
        ``AP-<class>`` where the line has them, or None if there is none.
    """
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    results = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        if isinstance(record, dict) and "bbox/AP" in record:
            results = {
                metric: float(record.get(f"bbox/{metric}", "nan"))
                for metric in ("AP", "AP50", "AP75")
            }
            results.update(
                {
                    key[len("bbox/") :]: float(value)
                    for key, value in record.items()
                    if key.startswith("bbox/AP-")
                }
            )
    return results


def _failure_reason(run_dir: Path, returncode: int) -> str:
    """The last error line of the run's log (e.g. "FloatingPointError: ..."), else the exit code."""
    log_path = Path(run_dir) / LOG_FILE
    if log_path.is_file():
        lines = [
            line.strip()
            for line in log_path.read_text(errors="replace").splitlines()
            if line.strip()
        ]
        errors = [line for line in lines if "Error" in line or "Exception" in line]
        if errors:
            return errors[-1][:300]
    return f"train_net.py exited with code {returncode}"


def launch_train_net(spec: RunSpec, resume: bool) -> int:
    """
    Run ``train_net.py`` in a child process, its output going to ``run_dir/train_net.log``.

    Returns:
        the exit code.
    """
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    with open(spec.run_dir / LOG_FILE, "ab") as log:
        return subprocess.call(spec.command(resume), stdout=log, stderr=subprocess.STDOUT)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def execute_run(
    row: SweepRow, spec: RunSpec, launcher: Launcher = launch_train_net, retry_failed: bool = False
) -> str:
    """
    Run one row unless it is already done.

    A finished run is skipped; so is a failed one unless ``retry_failed``. A run that was
    interrupted (or killed: its status still says running) continues with ``--resume``.

    Args:
        row: the table row, for the log.
        spec: the run.
        launcher: starts the run and returns its exit code.
        retry_failed: run a failed run again, from scratch.

    Returns:
        the run's status afterwards: "finished" or "failed".
    """
    previous = read_status(spec.run_dir)
    previous_status = previous["status"] if previous else None
    if previous_status == FINISHED or (previous_status == FAILED and not retry_failed):
        logger.info(f"{row.name}: already {previous_status} ({spec.run_dir}), skipped")
        return previous_status
    resume = previous_status in (RUNNING, INTERRUPTED)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    status = {
        "status": RUNNING,
        "row": row.name,
        "command": spec.command(resume),
        "started": _now(),
    }
    _write_status(spec.run_dir, status)
    logger.info(f"{row.name}: {'resuming' if resume else 'starting'} in {spec.run_dir}")
    try:
        returncode = launcher(spec, resume)
    except BaseException:
        status.update(status=INTERRUPTED, ended=_now())
        _write_status(spec.run_dir, status)
        raise
    results = read_eval_results(spec.run_dir)
    if returncode == 0 and results is not None:
        status.update(status=FINISHED, returncode=0, error="", results=results)
    else:
        error = (
            _failure_reason(spec.run_dir, returncode)
            if returncode
            else "no bbox/AP in metrics.json"
        )
        status.update(status=FAILED, returncode=returncode, error=error)
    status["ended"] = _now()
    _write_status(spec.run_dir, status)
    logger.info(
        f"{row.name}: {status['status']}" + (f" ({status['error']})" if status["error"] else "")
    )
    return status["status"]
