"""TrackingWriter subclasses that inject faults into a real writer actor (tests/tracking/test_writer.py). Workers
import this module by name: the test puts its folder on ``PYTHONPATH`` (as for ``_import_probe``). Each keys its
marker files on the SQLite store's path, so a restarted actor sees what its predecessor did."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fairray.tracking import TrackingWriter
from fairray.tracking._mlflow import _sqlite_file

RELEASE_WAIT_S = 120.0  # a blocked upload gives up waiting for its release (then stores as usual)


def marker(uri: str, name: str) -> Path:
    return Path(f"{_sqlite_file(uri)}.{name}")


class BlockedUploads(TrackingWriter):
    """Uploads wait until the file ``<db>.release`` exists; ``<db>.received`` records what each file arrived as."""

    def _upload(self, run, files, artifact_path):
        marker(self.uri, "received").write_text(" ".join(type(data).__name__ for _, data in files))
        deadline = time.monotonic() + RELEASE_WAIT_S
        while not marker(self.uri, "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        super()._upload(run, files, artifact_path)


class DiesBeforeParams(TrackingWriter):
    """The first ``open`` kills the writer's process right after ``create_run``, before the params' ``log_batch``;
    Ray restarts the actor and runs the call again."""

    def open(self, experiment_id, parent_run_id, trial_id, tags, params):
        died = marker(self.uri, "died")
        if not died.exists():
            died.touch()
            from mlflow.tracking import MlflowClient

            MlflowClient.log_batch = lambda *args, **kwargs: os._exit(1)  # this process only: it ends here
        return super().open(experiment_id, parent_run_id, trial_id, tags, params)
