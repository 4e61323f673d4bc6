"""The Tune trainable of ``backend: train`` with ``resources.reuse_workers: true``, kept light.

The Tune trial process only hands each trial to its worker group (:mod:`fairray.train._group`) and passes rank 0's
reports on to Tune, so this module, which it unpickles the trainable from, imports neither torch nor fairray's
training stack (nor :mod:`fairray.sweep.runner`): the sweep's datasets go to the workers as one object reference
that the trial process never dereferences, and each trial's MLflow tracking is built on the workers. That saves
the trial process the ~10 CPU s of importing torch and fairray (README, Benchmarks). Checked by
``tests/sweep/test_reuse_workers.py`` (what the trial process imports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fairray.train._group import GroupShape


@dataclass(frozen=True)
class GroupTrialArgs:
    """What every trial of the sweep passes to its workers (``tune.with_parameters``' one value)."""

    raw: Mapping[str, Any]
    variants: Any  # ray.ObjectRef of the sweep's DataVariants, datasets by reference
    tracking: Mapping[str, Any]  # fairray.train.TrialTracking's fields but trial_id
    keep: frozenset[str]  # the metrics the driver reads from Tune (fairray.sweep.runner.tune_keys)
    shape: GroupShape


def group_trainable(config: dict, args: GroupTrialArgs) -> None:
    """One trial on this trial process's worker group, made on its first trial and kept for the next; rank 0's
    reports become this trial's ``tune.report``s, its checkpoints Tune checkpoints."""
    import shutil
    import tempfile

    from ray import tune

    from fairray.train._group import TrialJob, group_for, pack_dir, unpack_dir

    trial_id = tune.get_context().get_trial_id()
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry: every worker resumes from the trial's latest checkpoint
        with restored.as_directory() as d:
            restored = pack_dir(d)
    job = TrialJob(args.raw, dict(config), args.variants, args.tracking, trial_id)
    reports = group_for(args.shape).run(job, args.keep, restored)
    try:
        for metrics, blob in reports:
            if blob is None:
                tune.report(metrics)
                continue
            d = unpack_dir(blob, tempfile.mkdtemp(prefix="fairray-ckpt-"))
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))  # Tune copies it to storage
            finally:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        reports.close()  # stopped by Tune at this report (SystemExit from tune.report): the workers stop there too
