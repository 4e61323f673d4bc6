"""What a sweep writes on its trials' MLflow runs besides what the trials log: pruned and feasibility marks.

Written from the driver, where the scheduler and the constraints are known: a Tune callback marks each trial
when Tune is done with it (:class:`TrialMarks`), and :func:`close_pruned_runs` ends every pruned run as KILLED with
the pruning as its reason once the trials' processes are gone (a stopped trial's own process would otherwise
leave it RUNNING or call it interrupted).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray.tune import Callback

from fairray.config import Constraint
from fairray.frontier.query import TAG_FEASIBLE, TAG_PRUNED, TAG_PRUNED_RUNG, TAG_PRUNED_VALUES, TAG_VIOLATIONS
from fairray.sweep.scheduler import Pruned
from fairray.tracking import TAG_TRIAL, client, end_run

PARENT_TAG = "mlflow.parentRunId"


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str):
    """The MLflow run of Tune trial ``trial_id`` in sweep ``parent_run_id``, or None (not opened yet)."""
    runs = client(uri).search_runs([experiment_id], filter_string=f"tags.`{TAG_TRIAL}` = '{trial_id}' and "
                                   f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=1)
    return runs[0] if runs else None


def pruned_tags(record: Pruned) -> dict[str, str]:
    return {TAG_PRUNED: "true", TAG_PRUNED_RUNG: str(record.rung), TAG_PRUNED_VALUES: json.dumps(list(record.values))}


def feasibility_tags(constraints: Sequence[Constraint], metrics: Mapping[str, Any]) -> dict[str, str]:
    """``fairray.feasible`` and, when infeasible, the violated constraints with how far each misses."""
    if not constraints:
        return {}
    violations = {str(c): v for c in constraints if (v := c.violation(metrics.get(c.metric))) > 0}
    tags = {TAG_FEASIBLE: "false" if violations else "true"}
    if violations:
        tags[TAG_VIOLATIONS] = json.dumps(violations)
    return tags


def _set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(uri)
    for key, value in tags.items():
        c.set_tag(run_id, key, value)


class TrialMarks(Callback):
    """Marks a trial's MLflow run when Tune completes it: pruned (with rung and values) or its feasibility."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, constraints: Sequence[Constraint],
                 pruned: Callable[[str], Pruned | None]) -> None:
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.constraints, self.pruned = tuple(constraints), pruned

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        record = self.pruned(trial.trial_id)
        tags = pruned_tags(record) if record is not None else feasibility_tags(self.constraints, trial.last_result)
        if not tags:
            return
        run = find_trial_run(self.uri, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run is not None:
            _set_tags(self.uri, run.info.run_id, tags)


def close_pruned_runs(uri: str, experiment_id: str, parent_run_id: str, pruned: Mapping[str, Pruned]) -> int:
    """End each pruned trial's run as KILLED, tagged, with the pruning as its reason; returns how many."""
    done = 0
    for trial_id, record in pruned.items():
        run = find_trial_run(uri, experiment_id, parent_run_id, trial_id)
        if run is None:
            continue
        _set_tags(uri, run.info.run_id, pruned_tags(record))
        end_run(uri, run.info.run_id, "KILLED", record.reason())
        done += 1
    return done
