"""The fairness explorer (``fairray dashboard SWEEP``): fronts per language and gender with bootstrap
intervals, a trial's detail, parallel coordinates and ablation tables, from the MLflow store, as one
self-contained page or served read-only on loopback while the sweep runs."""

from fairray.dashboard._data import (
    AblationTable,
    Cache,
    DashboardData,
    SweepUnavailable,
    TrialDetail,
    check_store,
    collect,
    heat_tables,
)
from fairray.dashboard._notes import annotate_sweep, places
from fairray.dashboard._page import build_page, page_payload, parallel_figure
from fairray.dashboard._server import DashboardApp, make_server, sweep_state

__all__ = [
    "AblationTable",
    "Cache",
    "DashboardApp",
    "DashboardData",
    "SweepUnavailable",
    "TrialDetail",
    "annotate_sweep",
    "build_page",
    "check_store",
    "collect",
    "heat_tables",
    "make_server",
    "page_payload",
    "parallel_figure",
    "places",
    "sweep_state",
]
