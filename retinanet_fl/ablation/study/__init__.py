"""
Multi-seed studies: arms (e.g. FL and α-balanced CE) compared at several points (e.g. datasets with
more or fewer negatives per positive anchor), every (point, arm) trained with several seeds.

A study is data, ``configs/ablations/studies/NAME.yaml``: a base config and overrides, the seeds,
the arms with their overrides, the reference arm, and the points with theirs (plus overrides of one
arm at one point, ``ARM_OPTS``, e.g. a learning rate for FL only). Every (point, arm, seed) is an
ordinary ``train_net.py`` run of :mod:`.runner`, so a run that two points share (the same config)
trains once, finished runs are skipped and an interrupted one resumes.

The collector computes, per point, each arm's mean and standard deviation of AP over seeds and the
*paired* difference arm − reference (same seed, both finished), and measures the point's regime
(:mod:`.regime`: negatives per positive anchor) on its training data; it writes
``study_<name>.md``, ``.csv`` (one line per point and arm), ``_runs.csv`` (one line per run) and
``.png`` (ΔAP against negatives per positive, with error bars).
"""

from .definition import (
    REGIME_DIR,
    REGIME_NUM_IMAGES,
    STUDIES_DIR,
    TRAINED_FIELDS,
    TRAINED_REGIME_FILE,
    TRAINED_REGIME_NUM_IMAGES,
    Study,
    StudyArm,
    StudyPoint,
    StudyRun,
    available_studies,
    load_study,
    plan_study,
    run_opts,
    select,
)
from .report import plot_study, write_runs_csv, write_study, write_study_csv, write_study_markdown
from .results import (
    PointResult,
    RunResult,
    Spread,
    collect_runs,
    measure_trained_regime,
    measure_training_regime,
    point_regime,
    summarize,
)
from .run import run_study

__all__ = [
    "PointResult",
    "REGIME_DIR",
    "REGIME_NUM_IMAGES",
    "RunResult",
    "STUDIES_DIR",
    "Spread",
    "Study",
    "StudyArm",
    "StudyPoint",
    "StudyRun",
    "TRAINED_FIELDS",
    "TRAINED_REGIME_FILE",
    "TRAINED_REGIME_NUM_IMAGES",
    "available_studies",
    "collect_runs",
    "load_study",
    "measure_trained_regime",
    "measure_training_regime",
    "plan_study",
    "plot_study",
    "point_regime",
    "run_opts",
    "run_study",
    "select",
    "summarize",
    "write_runs_csv",
    "write_study",
    "write_study_csv",
    "write_study_markdown",
]
