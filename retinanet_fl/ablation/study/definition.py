"""A study's definition: its file, arms, points and seeds, and the runs they make."""

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..runner import (
    RunSpec,
    format_opts,
    make_run_spec,
)
from ..sweeps import SWEEPS_DIR, _check_keys, _load_yaml, check_opts

STUDIES_DIR = SWEEPS_DIR / "studies"
REGIME_DIR = "regime"
REGIME_NUM_IMAGES = 200
# A finished run's model on its validation images: how much of the loss the easy negatives carry.
TRAINED_REGIME_FILE = "regime_val.json"
TRAINED_REGIME_NUM_IMAGES = 50

# Fields of a trained model's regime that the collector averages over seeds, and their scale.
TRAINED_FIELDS: Dict[str, float] = {
    "easy_negative_fraction": 100.0,
    "easy_negative_ce_share": 100.0,
    "easy_negative_fl_share": 100.0,
    "negative_to_positive_ce": 1.0,
}

_STUDY_KEYS = {
    "STUDY",
    "TITLE",
    "DESCRIPTION",
    "BASE_CONFIG",
    "BASE_OPTS",
    "SEEDS",
    "REFERENCE",
    "ARMS",
    "POINTS",
}
_ARM_KEYS = {"NAME", "LABEL", "OPTS"}
_POINT_KEYS = {"NAME", "LABEL", "GROUP", "OPTS", "ARM_OPTS"}


@dataclasses.dataclass(frozen=True)
class StudyArm:
    """
    One of the methods compared at every point.

    Attributes:
        name: identifier (e.g. ``fl``).
        label: text for tables and plots.
        opts: its config overrides.
    """

    name: str
    label: str
    opts: Tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class StudyPoint:
    """
    One setting at which the arms are compared.

    Attributes:
        name: identifier (e.g. ``obj1``).
        label: text for tables and plots.
        group: the series it belongs to in the plot (e.g. "objects per image").
        opts: its config overrides, applied before the arm's.
        arm_opts: overrides of single arms at this point, applied after the arm's.
    """

    name: str
    label: str
    group: str
    opts: Tuple[Any, ...]
    arm_opts: Mapping[str, Tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class Study:
    """
    Attributes:
        name: the id given on the command line (e.g. ``imbalance``).
        title: caption of the table and the plot.
        description: the setting in a sentence.
        base_config: the config file every run starts from.
        base_opts: overrides of every run, first.
        seeds: the ``SEED`` of each repetition.
        reference: the arm the others are compared with.
        arms: the methods compared.
        points: the settings, in the order they run.
    """

    name: str
    title: str
    description: str
    base_config: Path
    base_opts: Tuple[Any, ...]
    seeds: Tuple[int, ...]
    reference: str
    arms: Tuple[StudyArm, ...]
    points: Tuple[StudyPoint, ...]


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One (point, arm, seed) training run."""

    point: StudyPoint
    arm: StudyArm
    seed: int
    spec: RunSpec


def _unique(names: Sequence[str], where: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: NAMEs must be unique, repeated: {repeated}.")


def load_study(path: Path) -> Study:
    """
    Read a study file.

    Args:
        path: e.g. ``configs/ablations/studies/imbalance.yaml``; its ``BASE_CONFIG`` is relative
            to its folder.

    Returns:
        the study.
    """
    path = Path(path)
    data = _load_yaml(path, "Study")
    where = str(path)
    _check_keys(data, _STUDY_KEYS, _STUDY_KEYS - {"DESCRIPTION", "BASE_OPTS"}, where)
    arms = []
    for i, arm in enumerate(data["ARMS"] or []):
        _check_keys(arm, _ARM_KEYS, {"NAME", "OPTS"}, f"{where} ARMS[{i}]")
        name = str(arm["NAME"])
        opts = check_opts(arm["OPTS"], f"{where} ARMS[{i}] ({name}) OPTS")
        arms.append(StudyArm(name, str(arm.get("LABEL", name)), opts))
    if len(arms) < 2:
        raise ValueError(f"{where}: a study compares at least 2 ARMS, got {len(arms)}.")
    _unique([a.name for a in arms], f"{where} ARMS")
    arm_names = [a.name for a in arms]
    reference = str(data["REFERENCE"])
    if reference not in arm_names:
        raise ValueError(f"{where}: REFERENCE '{reference}' is not an arm; arms are {arm_names}.")
    points = []
    for i, point in enumerate(data["POINTS"] or []):
        at = f"{where} POINTS[{i}]"
        _check_keys(point, _POINT_KEYS, {"NAME", "OPTS"}, at)
        name = str(point["NAME"])
        arm_opts = {}
        for arm, opts in (point.get("ARM_OPTS") or {}).items():
            if arm not in arm_names:
                raise ValueError(f"{at} ({name}): ARM_OPTS names '{arm}', not an arm {arm_names}.")
            arm_opts[str(arm)] = check_opts(opts, f"{at} ({name}) ARM_OPTS.{arm}")
        points.append(
            StudyPoint(
                name=name,
                label=str(point.get("LABEL", name)),
                group=str(point.get("GROUP", "")),
                opts=check_opts(point["OPTS"], f"{at} ({name}) OPTS"),
                arm_opts=arm_opts,
            )
        )
    if not points:
        raise ValueError(f"{where}: POINTS is empty.")
    _unique([p.name for p in points], f"{where} POINTS")
    seeds = data["SEEDS"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{where}: SEEDS must be a non-empty list of integers, got {seeds!r}.")
    return Study(
        name=str(data["STUDY"]),
        title=str(data["TITLE"]),
        description=str(data.get("DESCRIPTION", "")),
        base_config=(path.parent / data["BASE_CONFIG"]).resolve(),
        base_opts=check_opts(data.get("BASE_OPTS", []), f"{where} BASE_OPTS"),
        seeds=tuple(seeds),
        reference=reference,
        arms=tuple(arms),
        points=tuple(points),
    )


def available_studies(studies_dir: Path = STUDIES_DIR) -> List[str]:
    """Returns: the names of the study files in ``studies_dir``."""
    return sorted(p.stem for p in Path(studies_dir).glob("*.yaml"))


def select(
    study: Study, points: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None
) -> Study:
    """
    Returns:
        the study restricted to some points (in the order given) and with other seeds.
    """
    if points:
        by_name = {p.name: p for p in study.points}
        unknown = [p for p in points if p not in by_name]
        if unknown:
            raise ValueError(
                f"Study {study.name} has no point(s) {unknown}; its points are {list(by_name)}."
            )
        study = dataclasses.replace(study, points=tuple(by_name[p] for p in points))
    if seeds:
        study = dataclasses.replace(study, seeds=tuple(seeds))
    return study


def run_opts(study: Study, point: StudyPoint, arm: StudyArm, seed: int) -> List[Any]:
    """
    Returns:
        one run's overrides, in order: the study's, the point's, the arm's, the point's for that
        arm, then ``SEED``.
    """
    return [
        *study.base_opts,
        *point.opts,
        *arm.opts,
        *point.arm_opts.get(arm.name, ()),
        "SEED",
        seed,
    ]


def plan_study(
    study: Study, output_dir: Path, extra_opts: Sequence[Any] = (), num_gpus: int = 1
) -> List[StudyRun]:
    """
    The study's runs, point by point, each point seed by seed, each seed arm by arm: the first
    point is complete, with every seed, before the second starts.

    Args:
        study: the study.
        output_dir: runs go to ``output_dir/runs/<digest>``.
        extra_opts: overrides appended to every run (``--opts``).
        num_gpus: forwarded to every run.

    Returns:
        the runs in the order they are run.
    """
    runs = []
    for point in study.points:
        for seed in study.seeds:
            for arm in study.arms:
                opts = format_opts([*run_opts(study, point, arm, seed), *extra_opts])
                where = f"Study {study.name}, point {point.name}, arm {arm.name}"
                spec = make_run_spec(study.base_config, opts, output_dir, num_gpus, where)
                runs.append(StudyRun(point, arm, seed, spec))
    return runs
