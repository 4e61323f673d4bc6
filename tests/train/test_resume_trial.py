"""A trial interrupted after an epoch and restarted from its checkpoint ends where an uninterrupted one ends:
weights, optimiser, method state (λ), the best epoch on disk and the per-epoch seeds all come back."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairray.config import load_spec
from fairray.sweep import prepare_data
from fairray.train import LocalSession, run_trial

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


@pytest.mark.parametrize(("accumulate", "interval"), [(1, 0), (2, 0), (1, 1e9)])
def test_a_resumed_trial_matches_an_uninterrupted_one(tmp_path, accumulate, interval):
    """``checkpoint_interval_s: 0`` checkpoints every epoch (the cut trial resumes at epoch 2); a long interval
    checkpoints only the last epoch, so the cut trial starts over, and still ends where the whole one does."""
    loaded = load_spec(SPEC, ["train.epochs=4", f"train.accumulate={accumulate}", "train.batch_size=32",
                              f"train.checkpoint_interval_s={interval}"])
    data = prepare_data(loaded.spec)
    whole = run_trial(loaded.raw, {}, data, LocalSession(tmp_path / "whole"))

    seen = []

    def stop_after_two(metrics):
        seen.append(metrics["epoch"])
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt  # after epoch 2 is logged, before its checkpoint: resume from epoch 1's

    with pytest.raises(KeyboardInterrupt):
        run_trial(loaded.raw, {}, data, LocalSession(tmp_path / "cut"), on_epoch=stop_after_two)
    resumed_epochs = []
    resumed = run_trial(loaded.raw, {}, data, LocalSession(tmp_path / "cut"), on_epoch=lambda m: resumed_epochs.append(
        (m["epoch"], m["method/lambda"])))
    assert seen == [0, 1, 2] and [e for e, _ in resumed_epochs] == ([2, 3] if interval == 0 else [0, 1, 2, 3])
    assert resumed["selected_epoch"] == whole["selected_epoch"]
    for key in ("dev/loss", "test/loss", "dev/weighted_f1", "test/weighted_f1", "dev/tpr_gap/gender/worst:language"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
