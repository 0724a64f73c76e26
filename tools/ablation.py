#!/usr/bin/env python
"""
The paper's ablations and our studies, as grids of ordinary ``train_net`` runs.

An experiment is ``configs/ablations/table_<name>.yaml``: a base config and overrides, named
override sets (``ROWS``; optionally ``ARMS`` compared within every row), the paper's numbers and
seeds. Every (row, arm, seed) is one ``python -m retinanet_fl.train_net`` run in
``OUTPUT/runs/<digest>``, the digest hashing the run's resolved config: rows of different tables
that are the same model train once, and a changed override makes a new run. The status file in the
run folder says whether it is running, finished or failed: finished runs are skipped, an
interrupted one resumes from its last checkpoint. After each run the collector writes
``OUTPUT/runs.csv`` (one line per run) and the report ``OUTPUT/table_<name>.{md,png}``.

    python tools/ablation.py --table 1b --dry-run
    python tools/ablation.py --table all --preset synthetic_sparse --seeds 0 1 2
    python tools/ablation.py --table imbalance --output-dir output/study_imbalance
    python tools/ablation.py --figure 1
    python tools/ablation.py --figure 4 --config-file CFG --opts MODEL.WEIGHTS model_final.pth
    python tools/ablation.py --stats --config-file CFG [--opts MODEL.WEIGHTS model_final.pth]
"""

import argparse
import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import ablation_report as report
import synthetic_pretrain
import yaml

logger = logging.getLogger("ablation")

ABLATIONS_DIR = Path(__file__).resolve().parents[1] / "configs" / "ablations"
# What ``--table all`` runs: the paper's tables and the prior study.
PAPER_TABLES = ("1a", "1b", "1c", "1d", "3", "prior")
STATUS_FILE = "ablation_status.json"
LOG_FILE = "train_net.log"
RUNS_CSV = "runs.csv"
# A run killed outright stays "running"; one stopped by an exception (Ctrl-C) is "interrupted".
RUNNING, INTERRUPTED, FINISHED, FAILED, PENDING = (
    "running",
    "interrupted",
    "finished",
    "failed",
    "pending",
)
# Where the synthetic variants an experiment names are generated (Detectron2's convention).
DATASETS_VARIABLE = "$DETECTRON2_DATASETS"


@dataclasses.dataclass(frozen=True)
class Variant:
    """
    A named set of config overrides: a row of a table (e.g. ``alpha_0.75``) or an arm.

    Attributes:
        name: identifier, unique among its kind in the experiment.
        label: short text for tables and plots.
        opts: flat ``KEY, VALUE, ...`` overrides.
        columns: a row's cells under the table's key columns.
        paper: the paper's (AP, AP50, AP75); None where it gives no number.
        paper_note: what the paper reports instead of a number (e.g. "diverged").
        group: the series a row belongs to in a plot.
        arm_opts: overrides of single arms at this row, applied after the arm's.
    """

    name: str
    label: str
    opts: Tuple[Any, ...]
    columns: Tuple[str, ...] = ()
    paper: Tuple[Optional[float], ...] = (None, None, None)
    paper_note: str = ""
    group: str = ""
    arm_opts: Mapping[str, Tuple[Any, ...]] = dataclasses.field(default_factory=dict)


# The arm of an experiment without ARMS: the rows alone.
NO_ARM = Variant("", "", ())


@dataclasses.dataclass(frozen=True)
class Experiment:
    """
    A grid: every row with every arm and seed.

    Attributes:
        name: the id given to ``--table`` (e.g. ``1a``, ``imbalance``).
        title: caption of the table and plot.
        description: the setting in a sentence.
        base_config: the config file every run starts from.
        base_opts: scale-dependent overrides (backbone, schedule); a preset replaces them.
        opts: overrides every row shares.
        columns: the key column headers.
        xlabel: what the plot's x axis sweeps.
        rows: the rows, in order.
        arms: the arms compared within every row (``(NO_ARM,)`` for a plain table).
        reference: the arm the others are compared with; without arms, the first row.
        seeds: the ``SEED`` of each repetition, or ``(None,)`` for the config's.
        extra_metrics: (header, key in runs.csv) of metrics shown after AP / AP50 / AP75.
        datasets: folder name under ``$DETECTRON2_DATASETS`` -> arguments of
            ``ensure_synthetic_coco``, generated before the runs that name the folder.
        regime: measure each row's class-imbalance regime and each trained model's (the study
            plot of ΔAP against negatives per positive).
        preset: the preset applied, or "".
    """

    name: str
    title: str
    description: str
    base_config: Path
    base_opts: Tuple[Any, ...]
    opts: Tuple[Any, ...]
    columns: Tuple[str, ...]
    xlabel: str
    rows: Tuple[Variant, ...]
    arms: Tuple[Variant, ...] = (NO_ARM,)
    reference: str = ""
    seeds: Tuple[Optional[int], ...] = (None,)
    extra_metrics: Tuple[Tuple[str, str], ...] = ()
    datasets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    regime: bool = False
    preset: str = ""

    def reference_of(self, row: str, arm: str) -> Tuple[str, str]:
        """Returns: the (row, arm) that (row, arm) is compared with, seed by seed."""
        return (row, self.reference) if self.arms != (NO_ARM,) else (self.rows[0].name, arm)


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``train_net`` run of an experiment: its cell of the grid and its command."""

    table: str
    row: Variant
    arm: Variant
    seed: Optional[int]
    config_file: Path
    opts: Tuple[str, ...]
    run_dir: Path
    num_gpus: int = 1

    @property
    def name(self) -> str:
        """Returns: "row", "row/arm", with " seed N" when seeded."""
        name = "/".join(n for n in (self.row.name, self.arm.name) if n)
        return name if self.seed is None else f"{name} seed {self.seed}"

    def command(self, resume: bool) -> List[str]:
        """Returns: the command line of the run, with ``--resume`` if asked."""
        cmd = [sys.executable, "-m", "retinanet_fl.train_net", "--config-file"]
        cmd += [str(self.config_file), "--num-gpus", str(self.num_gpus)]
        return cmd + ["--resume"] * resume + ["OUTPUT_DIR", str(self.run_dir), *self.opts]


# Runs one Run (resuming if asked) and returns its exit code; tests inject their own.
Launcher = Callable[[Run, bool], int]


def _load_yaml(path: Path, allowed: set, required: set) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist.")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping, got {type(data).__name__}.")
    _check_keys(data, allowed, required, str(path))
    return data


def _check_keys(data: Mapping[str, Any], allowed: set, required: set, where: str) -> None:
    unknown, missing = set(data) - allowed, required - set(data)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}.")
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}.")


def check_opts(opts: Any, where: str) -> Tuple[Any, ...]:
    """
    Args:
        opts: a flat ``KEY, VALUE, ...`` override list.
        where: names the list in the error message.

    Returns:
        the list as a tuple, once its keys look like config keys.
    """
    if not isinstance(opts, (list, tuple)) or len(opts) % 2:
        raise ValueError(f"{where}: overrides must be a flat list KEY, VALUE, ..., got {opts!r}.")
    for key in opts[0::2]:
        if not isinstance(key, str) or not key or key != key.upper():
            raise ValueError(f"{where}: '{key}' is not a config key (like SOLVER.BASE_LR).")
    return tuple(opts)


_ROW_KEYS = {"NAME", "LABEL", "COLUMNS", "OPTS", "PAPER", "PAPER_NOTE", "GROUP", "ARM_OPTS"}
_TABLE_KEYS = {
    "TABLE",
    "TITLE",
    "DESCRIPTION",
    "BASE_CONFIG",
    "BASE_OPTS",
    "OPTS",
    "COLUMNS",
    "XLABEL",
    "ROWS",
    "ARMS",
    "REFERENCE",
    "SEEDS",
    "EXTRA_METRICS",
    "DATASETS",
    "REGIME",
}
_PRESET_KEYS = {"DESCRIPTION", "BASE_CONFIG", "BASE_OPTS", "TABLES", "DATASETS"}


def _parse_variant(data: Any, where: str) -> Variant:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a mapping with keys {sorted(_ROW_KEYS)}.")
    _check_keys(data, _ROW_KEYS, {"NAME", "OPTS"}, where)
    name = str(data["NAME"])
    where = f"{where} ({name})"
    label = str(data.get("LABEL", name))
    paper = data.get("PAPER", [None] * len(report.METRICS))
    if not isinstance(paper, list) or len(paper) != len(report.METRICS):
        raise ValueError(f"{where}: PAPER must list the paper's {report.METRICS} (null: none).")
    return Variant(
        name=name,
        label=label,
        opts=check_opts(data["OPTS"], f"{where} OPTS"),
        columns=tuple(str(c) for c in data.get("COLUMNS", [label])),
        paper=tuple(None if v is None else float(v) for v in paper),
        paper_note=str(data.get("PAPER_NOTE", "")),
        group=str(data.get("GROUP", "")),
        arm_opts={
            str(arm): check_opts(opts, f"{where} ARM_OPTS.{arm}")
            for arm, opts in (data.get("ARM_OPTS") or {}).items()
        },
    )


def _unique(names: Sequence[str], where: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: NAMEs must be unique, repeated: {repeated}.")


def available_tables(directory: Optional[Path] = None) -> List[str]:
    """Returns: the experiments in ``directory`` (default ``ABLATIONS_DIR``), by name."""
    files = Path(directory or ABLATIONS_DIR).glob("table_*.yaml")
    return sorted(p.stem[len("table_") :] for p in files)


def load_experiment(
    name: str,
    preset: Optional[str] = None,
    rows: Optional[Sequence[str]] = None,
    seeds: Optional[Sequence[int]] = None,
    directory: Optional[Path] = None,
) -> Experiment:
    """
    Read an experiment, reduced by a preset and a choice of rows and seeds.

    Args:
        name: the experiment, ``directory/table_<name>.yaml`` (``BASE_CONFIG`` relative to it).
        preset: ``directory/presets/<preset>.yaml``: replaces the base config and ``BASE_OPTS``
            and may keep fewer rows.
        rows: keep these rows, in this order (None: all).
        seeds: replace the experiment's seeds.
        directory: where the experiments are (default ``ABLATIONS_DIR``).

    Returns:
        the experiment.
    """
    directory = Path(directory or ABLATIONS_DIR)
    path = directory / f"table_{name}.yaml"
    if not path.is_file():
        raise ValueError(f"Unknown table '{name}': choose from {available_tables(directory)}.")
    data = _load_yaml(path, _TABLE_KEYS, {"TABLE", "TITLE", "BASE_CONFIG", "ROWS"})
    where = str(path)
    all_rows = tuple(_parse_variant(r, f"{where} ROWS[{i}]") for i, r in enumerate(data["ROWS"]))
    arms = tuple(
        _parse_variant(a, f"{where} ARMS[{i}]") for i, a in enumerate(data.get("ARMS", []))
    )
    _unique([r.name for r in all_rows], f"{where} ROWS")
    _unique([a.name for a in arms], f"{where} ARMS")
    reference = str(data.get("REFERENCE", ""))
    if arms and reference not in [a.name for a in arms]:
        raise ValueError(f"{where}: REFERENCE '{reference}' is not one of the ARMS.")
    columns = tuple(str(c) for c in data.get("COLUMNS", ["row"]))
    for row in all_rows:
        if len(row.columns) != len(columns) or set(row.arm_opts) - {a.name for a in arms}:
            raise ValueError(
                f"{where} ({row.name}): COLUMNS must have {len(columns)} cells and "
                "ARM_OPTS name only ARMS."
            )
    experiment = Experiment(
        name=str(data["TABLE"]),
        title=str(data["TITLE"]),
        description=str(data.get("DESCRIPTION", "")),
        base_config=(path.parent / data["BASE_CONFIG"]).resolve(),
        base_opts=check_opts(data.get("BASE_OPTS", []), f"{where} BASE_OPTS"),
        opts=check_opts(data.get("OPTS", []), f"{where} OPTS"),
        columns=columns,
        xlabel=str(data.get("XLABEL", columns[0])),
        rows=all_rows,
        arms=arms or (NO_ARM,),
        reference=reference,
        seeds=tuple(data.get("SEEDS", [None])),
        extra_metrics=tuple((str(k), str(v)) for k, v in (data.get("EXTRA_METRICS") or {}).items()),
        datasets=data.get("DATASETS") or {},
        regime=bool(data.get("REGIME", False)),
    )
    if preset:
        experiment = _apply_preset(experiment, directory / "presets" / f"{preset}.yaml")
    if rows:
        experiment = dataclasses.replace(experiment, rows=_select(experiment, rows, where))
    if seeds:
        experiment = dataclasses.replace(experiment, seeds=tuple(seeds))
    return experiment


def _select(experiment: Experiment, names: Sequence[str], where: str) -> Tuple[Variant, ...]:
    by_name = {row.name: row for row in experiment.rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"{where}: no row(s) {unknown}; the rows are {list(by_name)}.")
    return tuple(by_name[n] for n in names)


def _apply_preset(experiment: Experiment, path: Path) -> Experiment:
    """Returns: the experiment with the preset's base config, base overrides and rows."""
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"Unknown preset '{path.stem}': choose from {available}.")
    data = _load_yaml(path, _PRESET_KEYS, {"BASE_CONFIG"})
    entry = (data.get("TABLES") or {}).get(experiment.name) or {}
    rows = _select(experiment, entry["ROWS"], str(path)) if "ROWS" in entry else experiment.rows
    return dataclasses.replace(
        experiment,
        base_config=(path.parent / data["BASE_CONFIG"]).resolve(),
        base_opts=check_opts(data.get("BASE_OPTS", []), f"{path} BASE_OPTS"),
        rows=rows,
        datasets={**experiment.datasets, **(data.get("DATASETS") or {})},
        preset=path.stem,
        description=f"{data.get('DESCRIPTION', '')} (preset `{path.stem}`); the paper: "
        + experiment.description,
    )


def datasets_root() -> str:
    """Returns: ``$DETECTRON2_DATASETS``, or Detectron2's default ``datasets``."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def format_opts(opts: Sequence[Any]) -> Tuple[str, ...]:
    """
    Returns:
        ``KEY, VALUE, ...`` as command-line strings that ``merge_from_list`` reads back as the
        same values (``[[1.0]]`` stays a list), with ``$DETECTRON2_DATASETS`` expanded.
    """
    strings = [v if i % 2 == 0 or isinstance(v, str) else repr(v) for i, v in enumerate(opts)]
    return tuple(v.replace(DATASETS_VARIABLE, datasets_root()) for v in strings)


def _dataset_identity(name: str) -> str:
    """
    A ``coco:<json>:<image_root>`` dataset as ``<folder>_<split>`` (``synthetic_obj1_train``),
    the name it was registered under before: the digest then stays the same wherever
    ``$DETECTRON2_DATASETS`` is, and the run store made with registered names keeps its runs.
    """
    if not name.startswith("coco:"):
        return name
    image_root = Path(name.rsplit(":", 1)[1])
    return f"{image_root.parent.name}_{image_root.name}"


def _num_classes(cfg) -> int:
    """
    The number of classes a run trains: ``NUM_CLASSES``, or for 0 ("the data's") the count of its
    data, so that the digest names the model as runs made with an explicit count do. The synthetic
    data's count is the generator's (a variant may not be generated yet); other data's is read
    where it is at hand, else 0 stays.
    """
    from retinanet_fl.data.by_path import register_path_datasets
    from retinanet_fl.data.classes import resolve_num_classes
    from retinanet_fl.data.synthetic import SYNTHETIC_CLASSES

    names = [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]
    if cfg.MODEL.RETINANET.NUM_CLASSES or not names:
        return cfg.MODEL.RETINANET.NUM_CLASSES
    if _dataset_identity(names[0]).startswith("synthetic"):
        return len(SYNTHETIC_CLASSES)
    register_path_datasets(names, skip_missing=True)
    resolve_num_classes(cfg)  # as train_net's load_config does; 0 stays when nothing is known
    return cfg.MODEL.RETINANET.NUM_CLASSES


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
    Fingerprint of a run's configuration: a hash of the values that differ from the defaults once
    the file and the overrides are applied. Overrides that restate a value do not change it, and
    neither does a new config key added with its default.

    Args:
        config_file: the base config file.
        opts: command-line overrides.

    Returns:
        12 hex digits (``OUTPUT_DIR`` is not part of the configuration).
    """
    from retinanet_fl.config import get_cfg

    defaults = _flatten(get_cfg())
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = defaults["OUTPUT_DIR"]
    cfg.MODEL.RETINANET.NUM_CLASSES = _num_classes(cfg)
    cfg.DATASETS.TRAIN = tuple(map(_dataset_identity, cfg.DATASETS.TRAIN))
    cfg.DATASETS.TEST = tuple(map(_dataset_identity, cfg.DATASETS.TEST))
    changed = {k: v for k, v in _flatten(cfg).items() if k not in defaults or defaults[k] != v}
    encoded = json.dumps(sorted(changed.items()), default=repr)
    return hashlib.sha1(encoded.encode()).hexdigest()[:12]


def plan(
    experiment: Experiment, output_dir: Path, extra_opts: Sequence[Any] = (), num_gpus: int = 1
) -> List[Run]:
    """
    The experiment's runs, in the order they run: with arms, row after row (every seed of a row
    before the next, so that the first row is complete first); without, the whole table seed
    after seed.

    Args:
        experiment: the grid.
        output_dir: runs go to ``output_dir/runs/<digest>``.
        extra_opts: overrides appended to every run (``--opts``), before ``SEED``.
        num_gpus: forwarded to every run.

    Returns:
        the runs.
    """
    if not experiment.base_config.is_file():
        raise FileNotFoundError(f"{experiment.name}: no base config {experiment.base_config}.")
    if experiment.arms != (NO_ARM,):
        cells = [
            (r, s, a) for r in experiment.rows for s in experiment.seeds for a in experiment.arms
        ]
    else:
        cells = [(r, s, NO_ARM) for s in experiment.seeds for r in experiment.rows]
    runs = []
    for row, seed, arm in cells:
        opts = format_opts(
            [
                *experiment.base_opts,
                *experiment.opts,
                *row.opts,
                *arm.opts,
                *row.arm_opts.get(arm.name, ()),
                *extra_opts,
                *(() if seed is None else ("SEED", seed)),
            ]
        )
        try:
            digest = config_digest(experiment.base_config, opts)
        except (KeyError, ValueError, AssertionError) as error:
            raise ValueError(f"{experiment.name} {row.name}: overrides {opts}: {error}") from error
        run_dir = Path(output_dir).resolve() / "runs" / digest
        runs.append(
            Run(experiment.name, row, arm, seed, experiment.base_config, opts, run_dir, num_gpus)
        )
    return runs


def read_status(run_dir: Path) -> Optional[Dict[str, Any]]:
    """
    Returns:
        the run's recorded status (``status``, ``error``, ...), or None if it never started; a
        file cut short by a crash reads as running (it resumes).
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
    tmp = Path(run_dir) / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(Path(run_dir) / STATUS_FILE)


def read_eval_results(run_dir: Path) -> Optional[Dict[str, float]]:
    """
    Returns:
        the box AP / AP50 / AP75 and per-class ``AP-<class>`` of the last line of Detectron2's
        ``metrics.json`` holding ``bbox/AP`` (NaN: no detections), or None if there is none.
    """
    path = Path(run_dir) / "metrics.json"
    results = None
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        if isinstance(record, dict) and "bbox/AP" in record:
            results = {
                key[len("bbox/") :]: float(value)
                for key, value in record.items()
                if key in ("bbox/AP50", "bbox/AP75", "bbox/AP") or key.startswith("bbox/AP-")
            }
    return results


def _failure_reason(run_dir: Path, returncode: int) -> str:
    """The last error line of the run's log (e.g. "FloatingPointError: ..."), else the exit code."""
    log_path = Path(run_dir) / LOG_FILE
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    errors = [line.strip() for line in lines if "Error" in line or "Exception" in line]
    return errors[-1][:300] if errors else f"train_net exited with code {returncode}"


def launch_train_net(run: Run, resume: bool) -> int:
    """Run ``train_net`` in a child process, its output in ``run_dir/train_net.log``."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / LOG_FILE, "ab") as log:
        return subprocess.call(run.command(resume), stdout=log, stderr=subprocess.STDOUT)


def ensure_datasets(experiment: Experiment, run: Run) -> None:
    """Generate the synthetic variants that the run's overrides name, where missing."""
    from retinanet_fl.data.synthetic import ensure_synthetic_coco

    for folder, arguments in experiment.datasets.items():
        root = os.path.join(datasets_root(), folder)
        if any(f"{root}/" in value for value in run.opts):
            ensure_synthetic_coco(
                root, **{k: tuple(v) if isinstance(v, list) else v for k, v in arguments.items()}
            )


def with_weights_file(run: Run) -> Run:
    """
    The package reads weights from files: a ``synthetic-pretrained://`` ``MODEL.WEIGHTS`` (of the
    base config or the overrides) becomes the cached backbone's file, built first if missing. The
    run keeps its folder, whose digest hashes the URL, so that the run store stays valid.

    Returns:
        the run, with a last ``MODEL.WEIGHTS <file>`` override where its weights are such a URL.
    """
    from retinanet_fl.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(run.config_file))
    cfg.merge_from_list(list(run.opts))
    weights = synthetic_pretrain.weights_file(cfg.MODEL.WEIGHTS)
    if weights == cfg.MODEL.WEIGHTS:
        return run
    return dataclasses.replace(run, opts=(*run.opts, "MODEL.WEIGHTS", weights))


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _done(run: Run, retry_failed: bool) -> Optional[str]:
    """Returns: the run's status if it is not to run again (finished, or failed and not retried)."""
    previous = (read_status(run.run_dir) or {}).get("status")
    return previous if previous == FINISHED or (previous == FAILED and not retry_failed) else None


def execute_run(run: Run, launcher: Launcher = launch_train_net, retry_failed: bool = False) -> str:
    """
    Run one cell unless it is done: a finished run is skipped, and so is a failed one unless
    ``retry_failed``; an interrupted (or killed: still "running") one continues with ``--resume``.
    A pretrained backbone it starts from is built before (:func:`with_weights_file`).

    Returns:
        the run's status afterwards.
    """
    done = _done(run, retry_failed)
    if done:
        return done
    resume = (read_status(run.run_dir) or {}).get("status") in (RUNNING, INTERRUPTED)
    run = with_weights_file(run)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    status = {"status": RUNNING, "row": run.name, "command": run.command(resume), "started": _now()}
    _write_status(run.run_dir, status)
    logger.info(f"{run.table} {run.name}: {'resuming' if resume else 'starting'} in {run.run_dir}")
    try:
        returncode = launcher(run, resume)
    except BaseException:
        _write_status(run.run_dir, {**status, "status": INTERRUPTED, "ended": _now()})
        raise
    results = read_eval_results(run.run_dir)
    if returncode == 0 and results is not None:
        status.update(status=FINISHED, returncode=0, error="", results=results)
    else:
        error = _failure_reason(run.run_dir, returncode) if returncode else "no bbox/AP"
        status.update(status=FAILED, returncode=returncode, error=error)
    _write_status(run.run_dir, {**status, "ended": _now()})
    logger.info(f"{run.table} {run.name}: {status['status']} {status['error']}")
    return status["status"]


def collect(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """
    Returns:
        one record per run: table, row, arm, seed, status, error, run folder and, when finished,
        its metrics (``AP``, ``AP50``, ``AP75``, ``AP-<class>``, and the trained model's regime
        ``val_<field>`` where measured).
    """
    records = []
    for run in runs:
        status = read_status(run.run_dir) or {}
        record = {
            "table": run.table,
            "row": run.row.name,
            "arm": run.arm.name,
            "seed": "" if run.seed is None else run.seed,
            "status": status.get("status", PENDING),
            "error": status.get("error", ""),
        }
        if record["status"] == FINISHED:
            record.update(read_eval_results(run.run_dir) or {})
            record.update(report.read_trained_regime(run.run_dir))
        records.append({**record, "run_dir": str(run.run_dir)})
    return records


def write_runs_csv(records: Sequence[Dict[str, Any]], tables: Sequence[str], path: Path) -> None:
    """Write ``records`` into ``path``, replacing the earlier lines of ``tables`` (long form)."""
    kept = [r for r in report.read_runs_csv(path) if r["table"] not in tables]
    lines = kept + list(records)
    header = list(dict.fromkeys(key for line in lines for key in line))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, restval="")
        writer.writeheader()
        writer.writerows(lines)


def describe(experiment: Experiment, runs: Sequence[Run], first_use: Dict[Path, str]) -> str:
    """The dry run of one experiment: a line per run with its status, folder and overrides."""
    lines = [f"{experiment.title}", f"  base config: {experiment.base_config}"]
    for run in runs:
        status = (read_status(run.run_dir) or {}).get("status", PENDING)
        shared = f", same run as {first_use[run.run_dir]}" if run.run_dir in first_use else ""
        first_use.setdefault(run.run_dir, f"{run.table}/{run.name}")
        lines.append(
            f"  {run.name} [{status}{shared}] runs/{run.run_dir.name}: {' '.join(run.opts)}"
        )
    return "\n".join(lines)


def run_experiment(
    experiment: Experiment,
    output_dir: Path,
    extra_opts: Sequence[Any] = (),
    launcher: Launcher = launch_train_net,
    num_gpus: int = 1,
    retry_failed: bool = False,
    collect_only: bool = False,
) -> List[Dict[str, Any]]:
    """
    Run the grid, skipping finished runs, and rewrite ``runs.csv`` and the report after each run
    (also when interrupted); a failed run is recorded and the grid goes on.

    Returns:
        every run's record.
    """
    runs = plan(experiment, output_dir, extra_opts, num_gpus)
    try:
        for run in [] if collect_only else runs:
            if _done(run, retry_failed):
                continue  # nothing new to report
            ensure_datasets(experiment, run)
            execute_run(run, launcher, retry_failed)
            _report(experiment, runs, output_dir, extra_opts)
    finally:
        records = _report(experiment, runs, output_dir, extra_opts)
    return records


def _report(
    experiment: Experiment, runs: Sequence[Run], output_dir: Path, extra_opts: Sequence[Any]
) -> List[Dict[str, Any]]:
    """Collect the runs into ``runs.csv`` and write the experiment's report from it."""
    path = Path(output_dir) / RUNS_CSV
    if experiment.regime:  # finished runs of another process, measured here
        for run in runs:
            if (read_status(run.run_dir) or {}).get("status") == FINISHED:
                report.measure_trained_regime(run.config_file, run.opts, run.run_dir)
    write_runs_csv(collect(runs), [experiment.name], path)
    records = [r for r in report.read_runs_csv(path) if r["table"] == experiment.name]
    regimes = {}
    if experiment.regime:
        for row in experiment.rows:
            first = next(r for r in runs if r.row == row)
            cache = Path(output_dir) / "regime" / f"{row.name}.json"
            if not cache.is_file():
                ensure_datasets(experiment, first)
            regimes[row.name] = report.measure_training_regime(first.config_file, first.opts, cache)
    shared = " ".join(map(str, [*experiment.base_opts, *experiment.opts, *extra_opts]))
    report.write_report(experiment, records, regimes, Path(output_dir), shared)
    return records


def build_parser() -> argparse.ArgumentParser:
    """Returns: the command line's parser (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python tools/ablation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", nargs="+", help=f"{available_tables()} or all (the paper's)")
    what.add_argument("--figure", type=int, choices=[1, 4], help="the paper's Figure 1 or 4")
    what.add_argument("--stats", action="store_true", help="the class-imbalance regime of a config")
    parser.add_argument("--preset", help="a reduced setting (configs/ablations/presets/)")
    parser.add_argument("--rows", nargs="+", help="run only these rows, in this order")
    parser.add_argument("--seeds", nargs="+", type=int, help="run every row with each SEED")
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides of every run (after the row's) or of --config-file",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="forwarded to train_net")
    parser.add_argument("--output-dir", type=Path, help="default output/ablations[_<preset>]")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their status")
    parser.add_argument("--collect-only", action="store_true", help="report, run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--config-file", help="the model's config (--figure 4, --stats)")
    parser.add_argument("--dataset", help="--stats: a dataset (default DATASETS.TRAIN[0])")
    parser.add_argument("--num-images", type=int, help="images measured (default 50; --stats 100)")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="--stats: the anchors of one blank H x W image instead",
    )
    parser.add_argument("--max-negatives", type=int, default=10_000_000, help="--figure 4")
    parser.add_argument("--output", type=Path, help="the figure's PNG, or --stats' JSON")
    return parser


def main(argv: Optional[Sequence[str]] = None, launcher: Launcher = launch_train_net) -> int:
    """
    The command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
        launcher: starts one run (tests inject their own).

    Returns:
        the exit code: 0, also when runs failed (they are in the report).
    """
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()  # the grid's progress; the runs log into their folders
    handler.setFormatter(logging.Formatter("[ablation] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    opts = check_opts(args.opts, "--opts")
    output_dir = args.output_dir or Path(
        f"output/ablations{'_' + args.preset if args.preset else ''}"
    )
    if args.figure or args.stats:
        return report.analysis_command(args, opts, output_dir)
    names = list(PAPER_TABLES) if args.table == ["all"] else args.table
    experiments = [load_experiment(n, args.preset, args.rows, args.seeds) for n in names]
    first_use: Dict[Path, str] = {}
    for experiment in experiments:
        if args.dry_run:
            print(describe(experiment, plan(experiment, output_dir, opts), first_use))
            continue
        records = run_experiment(
            experiment,
            output_dir,
            opts,
            launcher,
            args.num_gpus,
            args.retry_failed,
            args.collect_only,
        )
        failed = [report.run_name(r) for r in records if r["status"] == FAILED]
        print(
            f"{experiment.name}: {output_dir / f'table_{experiment.name}.md'}"
            + (f"; failed runs: {failed}" if failed else "")
        )
    if args.dry_run:
        print(f"{len(first_use)} distinct runs, in {output_dir.resolve()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("Interrupted. Run the same command again to resume where the grid stopped.")
