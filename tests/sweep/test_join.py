"""Joining a cluster with ``--address`` (``fairray.sweep.runner._join``): a Ray Client server that fails to start
its per-client server is tried again, any other failure to connect is one ClusterError line. ``ray.init`` is
scripted here; the real connection through Ray Client is tests/cloud/test_multinode.py's."""

from __future__ import annotations

import pytest

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
