"""Joining a cluster with ``--address`` (``fairray.sweep.runner._join``): a Ray Client server that fails to start
its per-client server is tried again, any other failure to connect is one ClusterError line. ``ray.init`` is
scripted here; the real connection through Ray Client is tests/cloud/test_multinode.py's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fairray.errors import ClusterError
from fairray.sweep import runner

ABORT = ConnectionAbortedError("Initialization failure from server:\nTraceback ...\nRuntimeError: Starting Ray "
                               "client server failed. See ray_client_server_23000.err for detailed logs.")


@pytest.fixture
def scripted(monkeypatch):
    """``ray.init`` raising each scripted exception in turn, then connecting; returns the list of calls."""
    import ray

    calls: list[dict] = []
    script: list[BaseException] = []

    def init(**kw):
        calls.append(kw)
        if script:
            raise script.pop(0)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    monkeypatch.setattr(runner, "_reachable", lambda address: None)
    return calls, script


def test_a_client_server_that_failed_to_start_is_tried_again(scripted):
    calls, script = scripted
    script += [ABORT, ABORT]
    runner._join("ray://127.0.0.1:10001")
    assert len(calls) == 3 and {c["address"] for c in calls} == {"ray://127.0.0.1:10001"}


def test_after_the_last_attempt_it_is_one_line_naming_the_address_and_the_logs(scripted):
    calls, script = scripted
    script += [ABORT] * runner.CLIENT_ATTEMPTS
    with pytest.raises(ClusterError) as err:
        runner._join("ray://127.0.0.1:10001")
    msg = str(err.value)
    assert len(calls) == runner.CLIENT_ATTEMPTS and "\n" not in msg
    assert "ray://127.0.0.1:10001" in msg and "Starting Ray client server failed" in msg
    assert "ray_client_server_*.err" in msg and err.value.exit_code == 1


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://127.0.0.1:10001"])
def test_a_cluster_that_is_not_there_is_not_retried(scripted, address):
    calls, script = scripted
    script.append(ConnectionError("Could not find any running Ray instance."))
    with pytest.raises(ClusterError, match="could not join the Ray cluster at .* after 1 attempt"):
        runner._join(address)
    assert len(calls) == 1


def test_a_gcs_address_is_not_retried_on_an_abort(scripted):
    calls, script = scripted
    script.append(ABORT)
    with pytest.raises(ClusterError):
        runner._join("127.0.0.1:6379")
    assert len(calls) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reachable_passes_a_listening_address_and_refuses_a_closed_one():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        runner._reachable(f"127.0.0.1:{port}")
        runner._reachable(f"ray://127.0.0.1:{port}")
    closed = _closed_port()
    with pytest.raises(ClusterError, match=f"nothing answers at 127.0.0.1:{closed}"):
        runner._reachable(f"ray://127.0.0.1:{closed}")
    runner._reachable("auto")  # no port: left to Ray


def test_sweep_at_an_address_where_nothing_listens_is_one_line_and_writes_nothing(tmp_path):
    """``ray.init`` alone retries such an address for minutes; the sweep says so at once, exit 1, and leaves no
    store behind."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml").read_text())
    raw["storage"]["path"] = str(tmp_path / "runs")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-m", "fairray", "sweep", str(spec), "--address",
                          f"127.0.0.1:{_closed_port()}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("fairray: error: could not join the Ray cluster at"), lines
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*")), \
        sorted(str(p) for p in (tmp_path / "runs").rglob("*"))
