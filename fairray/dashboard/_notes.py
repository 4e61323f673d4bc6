"""The descriptions MLflow's UI shows for a sweep: the parent run's front summary and each trial's place.

:func:`annotate_sweep` runs when a sweep ends (``fairray sweep``): it writes the parent run's description
(the overall front as a table, the hypervolume of every front, the command that opens the dashboard and
the runs-table link), each finished trial's description (its method and its place on every front), and
the runs-table view with the objectives as columns (:func:`fairray.tracking.publish_runs_view`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence

from fairray.frontier.plot import TIE_MARK, FrontPanel, front_panel
from fairray.frontier.query import load_sweep


def places(panels: Sequence[FrontPanel], trial_id: str) -> list[str]:
    """Where the trial stands in each panel: Pareto-optimal (its rank along the first objective) or dominated."""
    out = []
    for panel in panels:
        sign = -1.0 if panel.directions[0] in ("max", "maximize") else 1.0
        front = sorted((p for p in panel.points if p.on_front and all(math.isfinite(v) for v in p.values)),
                       key=lambda p, s=sign: s * p.values[0])
        names = [p.trial for p in front]
        if trial_id in names:
            point = front[names.index(trial_id)]
            tie = f" ({TIE_MARK} ties the next within noise)" if point.tie else ""
            out.append(f"{panel.title}: Pareto-optimal, {names.index(trial_id) + 1} of {len(names)} by "
                       f"{panel.objectives[0]}{tie}")
        else:
            out.append(f"{panel.title}: dominated")
    return out


def dashboard_command(experiment: str, tracking_uri: str, run_id: str, ablation: str | None = None) -> str:
    more = f" --ablation {shlex.quote(ablation)}" if ablation else ""
    return (f"fairray dashboard {shlex.quote(experiment)} --tracking-uri {shlex.quote(tracking_uri)} "
            f"--run-id {run_id}{more}")


def annotate_sweep(tracking_uri: str, experiment: str, run_id: str, *, ablation: str | None = None,
                   mlflow_ui: str | None = None) -> dict[str, str]:
    """Write the descriptions of the sweep ``run_id`` and of its finished trials; returns ``{run_id: text}``."""
    from fairray.dashboard._data import DEFAULT_MLFLOW_UI, sweep_fronts
    from fairray.tracking import client, publish_runs_view, set_descriptions, ui_url

    sweep = load_sweep(tracking_uri, experiment, run_id, ablation)
    parent = client(tracking_uri).get_run(sweep.run_id)
    experiment_id = parent.info.experiment_id
    objectives = [k for k, _ in sweep.objectives]
    params = sorted({k for t in sweep.trials for k in t.params})
    view = publish_runs_view(tracking_uri, experiment_id, sweep.run_id, objectives, params)
    base = mlflow_ui or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else DEFAULT_MLFLOW_UI)
    command = dashboard_command(experiment, tracking_uri, sweep.run_id, ablation)
    lines = [f"**fairray sweep `{experiment}`**{f' (ablation `{ablation}`)' if ablation else ''}: "
             f"{len(sweep.trials)} finished trials, {sweep.n_failed} failed or unfinished; objectives "
             + ", ".join(f"`{k}` ({d.value})" for k, d in sweep.objectives) + ".", ""]
    notes: dict[str, str] = {}
    if sweep.trials:
        stratum = sweep.base_params.get("dataset.stratum", "language")
        fronts_ = sweep_fronts(sweep, None if stratum in ("", "None", "null") else stratum)
        panels = [front_panel(f) for f in fronts_]
        overall = fronts_[0]
        lines += ["Pareto-optimal trials of the overall front:", "",
                  "| trial | " + " | ".join(objectives) + " |", "|---" * (len(objectives) + 1) + "|"]
        for t, on, values in zip(overall.trials, overall.on_front, overall.values, strict=True):
            if on:
                lines.append(f"| {t.trial_id} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
        lines += ["", "Hypervolume per front: " + "; ".join(f"{f.title} {f.hypervolume:.4f}" for f in fronts_), ""]
        method = sweep.base_params.get("method.name", "")
        for trial in sweep.trials:
            where = places(panels, trial.trial_id)
            values = ", ".join(f"`{k}` = {trial.metrics.get(k, math.nan):.4f}" for k in objectives)
            notes[trial.run_id] = (f"fairray trial `{trial.trial_id}` of sweep `{experiment}`, method "
                                   f"`{trial.params.get('method.name', method)}`: {values}.\n\n"
                                   + "\n".join(f"- {w}" for w in where))
    else:
        lines.append("No trial finished.")
    lines += [f"Explore the fronts per language and gender: `{command}`", "",
              f"Runs table with the objectives as columns: {ui_url(base, experiment_id, view=view)}"]
    notes[sweep.run_id] = "\n".join(lines)
    set_descriptions(tracking_uri, notes)
    return notes
