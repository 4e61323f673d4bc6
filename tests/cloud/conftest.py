"""Fixtures of the cloud tests: the KubeRay CRD schemas (shared material beside the corpora) and servers that each
test starts on 127.0.0.1 and stops by handle.

The CRDs come from FAIRRAY_KUBERAY, else the ``kuberay`` folder beside the corpora folder (FAIRRAY_CORPORA, default
../shared/corpora, so ../shared/kuberay). Absent, the tests that need them skip with a reason, unless
FAIRRAY_REQUIRE_CORPORA=1 (CI), where their absence is an error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def kuberay_root() -> Path:
    if os.environ.get("FAIRRAY_KUBERAY"):
        return Path(os.environ["FAIRRAY_KUBERAY"]).resolve()
    corpora = Path(os.environ.get("FAIRRAY_CORPORA", REPO.parent / "shared" / "corpora")).resolve()
    return corpora.parent / "kuberay"


@pytest.fixture(scope="session")
def kuberay() -> Path:
    root = kuberay_root()
    if not (root / "ray.io_rayclusters.yaml").is_file():
        if os.environ.get("FAIRRAY_REQUIRE_CORPORA") == "1":
            pytest.fail(f"FAIRRAY_REQUIRE_CORPORA=1 but no KubeRay CRDs at {root} (set FAIRRAY_KUBERAY)")
        pytest.skip(f"KubeRay CRD schemas not found at {root}; set FAIRRAY_KUBERAY to run this test")
    return root


#: Credentials in the environment of the head, the driver and every trial: none may reach a store or a log.
SECRETS = {"AWS_SECRET_ACCESS_KEY": "fairray-test-secret-XYZ", "MLFLOW_TRACKING_PASSWORD": "fairray-test-pw-QRS"}
#: ... and the names a test greps for (the Ray token too).
SECRET_NAMES = (*SECRETS, "RAY_AUTH_TOKEN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout_s: float = 90) -> None:
    """Poll ``ready`` until it is true; fail with the process's output when it exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace")[-3000:] if proc.stdout else ""
            pytest.fail(f"{what} exited with {proc.returncode}: {out}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up within {timeout_s:.0f} s")


def http_ok(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen, timeout_s: float = 40) -> None:
    """Stop a server this test started with ``start_new_session=True``: SIGTERM to it (a ``ray start --block`` head
    drains and stops its own processes), then SIGKILL to whatever is left of its process group, and only of it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):  # ProcessLookupError: nothing of the group is left
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster on loopback with token authentication, its dashboard and job API on 127.0.0.1:
    (job API URL, a job client, the environment a client on this machine needs: token and the test's secrets)."""
    temp = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    bin_dir = str(Path(sys.executable).parent)
    token = secrets.token_hex(16)
    env = {**os.environ, **SECRETS, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    ports = {flag: free_port() for flag in ("--port", "--dashboard-port", "--ray-client-server-port",
                                            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--runtime-env-agent-port", "--metrics-export-port",
                                            "--node-manager-port", "--object-manager-port")}
    log = open(temp / "head.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                             "--include-dashboard", "true", "--temp-dir", str(temp),
                             *[str(x) for kv in ports.items() for x in kv]],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **SECRETS}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in client_env.items():
                mp.setenv(k, v)
            from ray.job_submission import JobSubmissionClient

            def ready() -> bool:
                try:
                    JobSubmissionClient(url)
                    return True
                except (ConnectionError, RuntimeError):
                    return False

            wait_until(ready, proc, f"ray head (log {temp / 'head.log'})", timeout_s=120)
            yield url, JobSubmissionClient(url), client_env
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
