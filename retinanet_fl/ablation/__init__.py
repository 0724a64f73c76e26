"""
The paper's ablations as sweeps of ordinary ``train_net.py`` runs (Table 1a–d, Table 3, the prior
study), the collector that lays their results out like the paper's tables (one seed, or mean ± sd
over seeds), Figures 1 and 4, the class-imbalance regime of a config (``stats``) and multi-seed
studies (``study``). Command line: ``python -m retinanet_fl.ablation --help``.
"""

from .cli import describe_sweeps, main, run_sweep
from .collect import RowResult, collect_results
from .figures import figure1, figure4
from .regime import RegimeStats, regime_stats
from .runner import RunSpec, execute_run, launch_train_net, plan_runs, read_eval_results
from .study import Study, load_study, plan_study, run_study
from .sweeps import TABLE_FILES, Preset, Sweep, SweepRow, load_preset, load_sweep, load_sweeps
from .tables import write_table

__all__ = [
    "Preset",
    "RegimeStats",
    "RowResult",
    "RunSpec",
    "Study",
    "Sweep",
    "SweepRow",
    "TABLE_FILES",
    "collect_results",
    "describe_sweeps",
    "execute_run",
    "figure1",
    "figure4",
    "launch_train_net",
    "load_preset",
    "load_sweep",
    "load_study",
    "load_sweeps",
    "main",
    "plan_runs",
    "plan_study",
    "read_eval_results",
    "regime_stats",
    "run_study",
    "run_sweep",
    "write_table",
]
