"""
Sweeps as data: one YAML per paper table under ``configs/ablations/``, and presets that shrink them.

A table file names a base config, the overrides every row shares, and one entry per row: its
name, its label, its cells in the paper's key columns, its own overrides and the paper's
AP / AP50 / AP75 (a table beyond the paper may name extra metrics, such as one class's AP). A
preset (``configs/ablations/presets/NAME.yaml``) replaces the base config and the table's
scale-dependent overrides (``BASE_OPTS``: backbone, weights) and may keep fewer rows.
"""

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..model_zoo import CONFIGS_DIR

SWEEPS_DIR = CONFIGS_DIR / "ablations"
PRESETS_DIR = SWEEPS_DIR / "presets"

# Table id (as given to --table) → its file under SWEEPS_DIR, in the paper's order.
TABLE_FILES: Dict[str, str] = {
    "1a": "table_1a.yaml",
    "1b": "table_1b.yaml",
    "1c": "table_1c.yaml",
    "1d": "table_1d.yaml",
    "3": "table_3.yaml",
    "prior": "prior.yaml",
    "beyond": "table_beyond.yaml",
}
# What ``--table all`` runs: the paper's tables and the prior study, not the extensions beyond it
# (``beyond`` needs its own long-tailed dataset and is run on its own).
PAPER_TABLES: Tuple[str, ...] = ("1a", "1b", "1c", "1d", "3", "prior")
METRICS: Tuple[str, ...] = ("AP", "AP50", "AP75")

_SWEEP_KEYS = {
    "TABLE",
    "TITLE",
    "DESCRIPTION",
    "BASE_CONFIG",
    "BASE_OPTS",
    "OPTS",
    "COLUMNS",
    "XLABEL",
    "ROWS",
    "EXTRA_METRICS",
}
_ROW_KEYS = {"NAME", "LABEL", "COLUMNS", "OPTS", "PAPER", "PAPER_NOTE"}
_PRESET_KEYS = {"DESCRIPTION", "BASE_CONFIG", "BASE_OPTS", "TABLES"}
_PRESET_TABLE_KEYS = {"ROWS", "BASE_OPTS"}


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """
    One variant of a table: one training run.

    Attributes:
        name: identifier, unique within its table (e.g. ``alpha_0.75``).
        label: short text for plots (e.g. ``.75``).
        columns: the row's cells under the table's key columns, as the paper prints them.
        opts: the row's config overrides, a flat ``KEY, VALUE, ...`` tuple.
        paper: the paper's (AP, AP50, AP75); None where the paper gives no number.
        paper_note: what the paper reports instead of a number (e.g. "diverged"), or "".
    """

    name: str
    label: str
    columns: Tuple[str, ...]
    opts: Tuple[Any, ...]
    paper: Tuple[Optional[float], Optional[float], Optional[float]]
    paper_note: str = ""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """
    One table of the paper as a list of runs.

    Attributes:
        table: the id given to ``--table`` (e.g. ``1a``).
        title: the table's caption.
        description: the setting in a sentence (dataset, backbone, resolution).
        base_config: the config file every run starts from.
        base_opts: overrides that set the scale (backbone, weights); a preset replaces them.
        opts: overrides every row shares (the loss family, say); presets keep them.
        columns: the paper's key column headers (e.g. ``("γ", "α")``).
        xlabel: what the plot's x axis sweeps.
        rows: the variants, in the paper's order.
        preset: name of the preset applied, or "" for the paper's setting.
        preset_description: the preset's setting in a sentence, or "".
        extra_metrics: (column header, key) pairs of metrics shown after AP / AP50 / AP75, the
            key as in Detectron2's ``metrics.json`` without ``bbox/`` (e.g. ``AP-red_circle``,
            COCOEvaluator's per-category AP).
    """

    table: str
    title: str
    description: str
    base_config: Path
    base_opts: Tuple[Any, ...]
    opts: Tuple[Any, ...]
    columns: Tuple[str, ...]
    xlabel: str
    rows: Tuple[SweepRow, ...]
    preset: str = ""
    preset_description: str = ""
    extra_metrics: Tuple[Tuple[str, str], ...] = ()

    def run_opts(self, row: SweepRow) -> List[Any]:
        """
        Returns:
            the overrides of one row's run, applied after the base config, in order: the base
            overrides, the table's, then the row's.
        """
        return [*self.base_opts, *self.opts, *row.opts]


@dataclasses.dataclass(frozen=True)
class Preset:
    """
    A reduced version of the sweeps (e.g. for a CPU).

    Attributes:
        name: the name given to ``--preset``.
        description: what it changes, in a sentence.
        base_config: replaces every table's base config.
        base_opts: replaces every table's ``BASE_OPTS`` (a table entry may override it).
        tables: per table id, optional ``rows`` (names to keep, in order) and ``base_opts``.
    """

    name: str
    description: str
    base_config: Path
    base_opts: Tuple[Any, ...]
    tables: Mapping[str, Mapping[str, Tuple[Any, ...]]]


def _load_yaml(path: Path, what: str) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file '{path}' does not exist.")
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{what} file '{path}' must hold a mapping, got {type(data).__name__}.")
    return data


def _check_keys(data: Mapping[str, Any], allowed: set, required: set, where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(allowed)}."
        )
    missing = required - set(data)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}.")


def check_opts(opts: Sequence[Any], where: str) -> Tuple[Any, ...]:
    """
    Check a flat ``KEY, VALUE, ...`` override list.

    Args:
        opts: the list.
        where: names the list in the error message.

    Returns:
        the list as a tuple.
    """
    if not isinstance(opts, (list, tuple)):
        raise ValueError(f"{where}: overrides must be a flat list KEY, VALUE, ..., got {opts!r}.")
    if len(opts) % 2:
        raise ValueError(
            f"{where}: overrides must come in KEY VALUE pairs, "
            f"got an odd count ({len(opts)}): {opts}."
        )
    for key in opts[0::2]:
        if not isinstance(key, str) or not key or key != key.upper():
            raise ValueError(
                f"{where}: '{key}' is not a config key (like MODEL.RETINANET.FOCAL_LOSS_ALPHA)."
            )
    return tuple(opts)


def _parse_row(data: Any, num_columns: int, where: str) -> SweepRow:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a row must be a mapping with keys {sorted(_ROW_KEYS)}.")
    _check_keys(data, _ROW_KEYS, {"NAME", "COLUMNS", "OPTS", "PAPER"}, where)
    name = str(data["NAME"])
    columns = tuple(str(c) for c in data["COLUMNS"])
    if len(columns) != num_columns:
        raise ValueError(
            f"{where} ({name}): COLUMNS has {len(columns)} cells, "
            f"the table has {num_columns} columns."
        )
    paper = data["PAPER"]
    if not isinstance(paper, (list, tuple)) or len(paper) != len(METRICS):
        raise ValueError(
            f"{where} ({name}): PAPER must list the paper's {'/'.join(METRICS)} "
            "(null where not given)."
        )
    return SweepRow(
        name=name,
        label=str(data.get("LABEL", " ".join(columns))),
        columns=columns,
        opts=check_opts(data["OPTS"], f"{where} ({name}) OPTS"),
        paper=tuple(None if v is None else float(v) for v in paper),
        paper_note=str(data.get("PAPER_NOTE", "")),
    )


def _parse_extra_metrics(data: Any, where: str) -> Tuple[Tuple[str, str], ...]:
    if data is None:
        return ()
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise ValueError(
            f"{where}: EXTRA_METRICS must map column headers to metrics.json keys without "
            f"'bbox/' (e.g. {{'AP rarest': 'AP-blue_triangle'}}), got {data!r}."
        )
    clashing = [v for v in data.values() if v in METRICS]
    if clashing:
        raise ValueError(f"{where}: EXTRA_METRICS repeats the standard metrics {clashing}.")
    return tuple(data.items())


def load_sweep(path: Path) -> Sweep:
    """
    Read one table's sweep.

    Args:
        path: a YAML file such as ``configs/ablations/table_1a.yaml``; ``BASE_CONFIG`` in it is
            relative to the file's folder.

    Returns:
        the sweep, with the paper's setting (no preset).
    """
    path = Path(path)
    data = _load_yaml(path, "Sweep")
    where = str(path)
    _check_keys(data, _SWEEP_KEYS, {"TABLE", "TITLE", "BASE_CONFIG", "COLUMNS", "ROWS"}, where)
    columns = tuple(str(c) for c in data["COLUMNS"])
    rows = tuple(
        _parse_row(r, len(columns), f"{where} ROWS[{i}]") for i, r in enumerate(data["ROWS"])
    )
    names = [r.name for r in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}: row NAMEs must be unique, repeated: {duplicates}.")
    return Sweep(
        table=str(data["TABLE"]),
        title=str(data["TITLE"]),
        description=str(data.get("DESCRIPTION", "")),
        base_config=(path.parent / data["BASE_CONFIG"]).resolve(),
        base_opts=check_opts(data.get("BASE_OPTS", []), f"{where} BASE_OPTS"),
        opts=check_opts(data.get("OPTS", []), f"{where} OPTS"),
        columns=columns,
        xlabel=str(data.get("XLABEL", columns[0])),
        rows=rows,
        extra_metrics=_parse_extra_metrics(data.get("EXTRA_METRICS"), where),
    )


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """
    Read a preset.

    Args:
        name: the preset's file name without ``.yaml`` (e.g. ``synthetic``).
        presets_dir: where presets live.

    Returns:
        the preset; ``BASE_CONFIG`` in it is relative to the file's folder.
    """
    path = Path(presets_dir) / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))
        raise ValueError(f"Unknown preset '{name}': no {path}. Available presets: {available}.")
    data = _load_yaml(path, "Preset")
    where = str(path)
    _check_keys(data, _PRESET_KEYS, {"BASE_CONFIG"}, where)
    tables: Dict[str, Dict[str, Tuple[Any, ...]]] = {}
    for table, entry in (data.get("TABLES") or {}).items():
        table = str(table)
        if table not in TABLE_FILES:
            raise ValueError(
                f"{where}: TABLES has unknown table '{table}'; tables are {list(TABLE_FILES)}."
            )
        entry = entry or {}
        _check_keys(entry, _PRESET_TABLE_KEYS, set(), f"{where} TABLES.{table}")
        tables[table] = {}
        if "ROWS" in entry:
            tables[table]["rows"] = tuple(str(r) for r in entry["ROWS"])
        if "BASE_OPTS" in entry:
            tables[table]["base_opts"] = check_opts(
                entry["BASE_OPTS"], f"{where} TABLES.{table}.BASE_OPTS"
            )
    return Preset(
        name=name,
        description=str(data.get("DESCRIPTION", "")),
        base_config=(path.parent / data["BASE_CONFIG"]).resolve(),
        base_opts=check_opts(data.get("BASE_OPTS", []), f"{where} BASE_OPTS"),
        tables=tables,
    )


def apply_preset(sweep: Sweep, preset: Preset) -> Sweep:
    """
    Returns:
        the sweep with the preset's base config and base overrides, and only the rows it keeps.
    """
    entry = preset.tables.get(sweep.table, {})
    rows = sweep.rows
    if "rows" in entry:
        by_name = {r.name: r for r in sweep.rows}
        unknown = [n for n in entry["rows"] if n not in by_name]
        if unknown:
            raise ValueError(
                f"Preset '{preset.name}' keeps rows {unknown} of table {sweep.table}, "
                "which has no such rows; "
                f"its rows are {list(by_name)}."
            )
        rows = tuple(by_name[n] for n in entry["rows"])
    return dataclasses.replace(
        sweep,
        base_config=preset.base_config,
        base_opts=entry.get("base_opts", preset.base_opts),
        rows=rows,
        preset=preset.name,
        preset_description=preset.description,
    )


def load_sweeps(
    tables: Sequence[str],
    preset: Optional[str] = None,
    base_config: Optional[Path] = None,
    sweeps_dir: Path = SWEEPS_DIR,
) -> List[Sweep]:
    """
    Read the sweeps of some tables.

    Args:
        tables: table ids (keys of ``TABLE_FILES``), or ``["all"]`` (``PAPER_TABLES``).
        preset: a preset's name, or None for the paper's setting.
        base_config: if given, replaces every table's (and the preset's) base config.
        sweeps_dir: the folder holding the table files and ``presets/``.

    Returns:
        the sweeps, in the order asked (the paper's order for ``all``).
    """
    if list(tables) == ["all"]:
        tables = list(PAPER_TABLES)
    unknown = [t for t in tables if t not in TABLE_FILES]
    if unknown:
        raise ValueError(f"Unknown table(s) {unknown}; choose from {list(TABLE_FILES)} or 'all'.")
    sweeps = [load_sweep(Path(sweeps_dir) / TABLE_FILES[t]) for t in tables]
    if preset:
        loaded = load_preset(preset, Path(sweeps_dir) / "presets")
        sweeps = [apply_preset(s, loaded) for s in sweeps]
    if base_config:
        base_config = Path(base_config).resolve()
        if not base_config.is_file():
            raise FileNotFoundError(f"--base-config '{base_config}' does not exist.")
        sweeps = [dataclasses.replace(s, base_config=base_config) for s in sweeps]
    return sweeps
