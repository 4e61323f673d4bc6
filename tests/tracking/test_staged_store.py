"""A fresh SQLite store's schema is built aside (``stage_sqlite_store``, overlapped with Ray's start by
``fairray sweep``) and only then placed at its path: nothing exists there before ``place``; ``discard`` leaves
nothing anywhere; a store that appeared meanwhile is kept, not replaced."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from fairray.tracking import ensure_experiment
from fairray.tracking._mlflow import stage_sqlite_store


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}"))


def test_staged_store_appears_only_when_placed_and_opens_as_a_store(tmp_path):
    db = tmp_path / "runs" / "mlflow.db"  # its folder does not exist yet: staged in the temp folder
    uri = f"sqlite:///{db}"
    staged = stage_sqlite_store(uri)
    assert staged is not None and not db.exists() and not db.parent.exists()
    staged.place()
    assert db.is_file() and not staged.staged.exists() and _leftovers(db.parent, db.name) == []
    experiment_id = ensure_experiment(uri, "e", str(tmp_path))
    run = MlflowClient(uri).create_run(experiment_id)
    assert MlflowClient(uri).get_run(run.info.run_id).info.experiment_id == experiment_id
    assert stage_sqlite_store(uri) is None  # it exists now: nothing to stage
    assert stage_sqlite_store("http://127.0.0.1:1") is None


def test_discarded_store_leaves_nothing_and_a_store_made_meanwhile_is_kept(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    staged = stage_sqlite_store(uri)
    assert staged.staged.parent == tmp_path  # the store's folder exists: staged beside it
    staged.discard()
    assert not db.exists() and _leftovers(tmp_path, db.name) == []

    staged = stage_sqlite_store(uri)
    experiment_id = ensure_experiment(uri, "made-meanwhile", str(tmp_path))  # another process created the store
    staged.place()
    assert MlflowClient(uri).get_experiment(experiment_id).name == "made-meanwhile"
    assert _leftovers(tmp_path, db.name) == []
