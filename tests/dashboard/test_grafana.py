"""The cluster view ``dashboards/grafana/fairray-sweep.json`` against a real Ray head and a real Prometheus.

A one-node Ray head (``ray start --head --block`` on 127.0.0.1, its own temp dir, stopped by handle) runs a tiny
Tune experiment with fairray's :class:`~fairray.sweep.metrics.TrialStateMetrics`; Debian's ``prometheus`` (2.42,
on 127.0.0.1, a temp dir, 1 s scrapes) scrapes the metrics port the head lists in its service discovery file;
every query of every panel must then return a series through Prometheus's HTTP API, and the ``sweep`` variable
must list the experiment. The GPU panels are the named exception: Ray reports GPU metrics only from nodes with
GPUs.

Skipped where ``prometheus`` is absent, except in CI (``FAIRRAY_REQUIRE_PROMETHEUS=1``, set by ``.ci/run``, which
installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "grafana" / "fairray-sweep.json"
PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("FAIRRAY_REQUIRE_PROMETHEUS") == "1":
    raise RuntimeError("FAIRRAY_REQUIRE_PROMETHEUS=1 but no prometheus on PATH (apt-get install -y prometheus)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None,
                                      reason="needs Debian's prometheus (apt-get install -y prometheus)")
#: metrics Ray's reporter agent records only for GPUs it sees (``reporter_agent.py``: no GPU, no series)
GPU_METRICS = ("ray_node_gpus_utilization", "ray_node_gram_used")
#: what Grafana puts in place of the dashboard's variables: every sweep, and a rate window of 30 scrapes
VARIABLES = {"$sweep": ".*", "$__rate_interval": "30s"}
SWEEP = "grafana-probe"
#: the Tune experiment the head runs: two trials, each reporting twice, then the driver stays until told to go
WORKLOAD = """
import sys, time
import ray
from ray import tune
from fairray.sweep.metrics import TrialStateMetrics

def trainable(config):
    for step in range(2):
        tune.report({"loss": config["x"] / (step + 1)})

ray.init(address=sys.argv[1], log_to_driver=False)
tune.Tuner(trainable, param_space={"x": tune.grid_search([1.0, 2.0])},
           run_config=tune.RunConfig(name="probe", storage_path=sys.argv[2], verbose=0,
                                     callbacks=[TrialStateMetrics(sys.argv[3])])).fit()
print("DONE", flush=True)
sys.stdin.read()  # the driver's metrics live as long as the driver does
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to a process this test started in its own session (a ``ray start --block`` head stops what it
    started), then SIGKILL to what is left of that process group, and only of it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


def _wait(ready, procs: dict[str, tuple[subprocess.Popen, Path]], what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if (value := ready()):
                return value
        time.sleep(0.5)
    logs = "\n".join(f"--- {n}: {log.read_text(errors='replace')[-1500:]}" for n, (_, log) in procs.items())
    pytest.fail(f"{what} not within {timeout_s:.0f} s\n{logs}")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables filled as Grafana fills them) for every target of every panel."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def test_dashboard_model_is_importable():
    """What Grafana's import needs: unique panel ids, every query on the datasource variable, no variable
    the test (and so Grafana) would not fill, and the panels the issue asks for."""
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    for title, expr in _queries(dashboard):
        assert "$" not in expr, (title, expr)
    titles = {p["title"] for p in panels}
    assert {"Running trials", "Pending trials", "Finished trials", "Trial throughput", "CPU use per node",
            "GPU use per node", "Object store memory per node"} <= titles


def test_wheel_installs_the_dashboard():
    """The JSON lies outside any package: pyproject's data-files put it under <prefix>/share/fairray/grafana."""
    pyproject = tomllib.loads((DASHBOARD.parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    files = pyproject["tool"]["setuptools"]["data-files"]["share/fairray/grafana"]
    assert [DASHBOARD.parents[2] / f for f in files] == [DASHBOARD]


@pytest.fixture(scope="module")
def prometheus():
    """A Ray head that ran a tiny Tune experiment with fairray's trial metrics, scraped by a real Prometheus:
    the Prometheus base URL, once it has a sample of the experiment's trial gauge."""
    temp = Path(tempfile.mkdtemp(prefix="fr-prom-", dir="/tmp"))  # Ray's socket paths must stay short
    bin_dir = Path(sys.executable).parent
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    ports = {flag: _free_port() for flag in ("--port", "--dashboard-port", "--ray-client-server-port",
                                            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--runtime-env-agent-port", "--metrics-export-port",
                                            "--node-manager-port", "--object-manager-port")}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = temp / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    **kwargs)
        procs[name] = (proc, log)
        return proc

    try:
        start("ray head", [str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", "1",
                           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                           "--include-dashboard", "true", "--temp-dir", str(temp / "ray"),
                           *[str(x) for kv in ports.items() for x in kv]])
        # Prometheus and the Tune driver start while the head is still coming up; Ray's service discovery
        # file lists this head's metrics port once its agent serves it
        metrics_target = f"127.0.0.1:{ports['--metrics-export-port']}"
        (temp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: ray\n"
            f"    static_configs: [{{targets: ['{metrics_target}']}}]\n")
        web = f"127.0.0.1:{_free_port()}"
        start("prometheus", [PROMETHEUS, f"--config.file={temp / 'prometheus.yml'}", f"--web.listen-address={web}",
                             f"--storage.tsdb.path={temp / 'tsdb'}", "--storage.tsdb.retention.time=1h"])
        _wait(lambda: "Ray runtime started" in procs["ray head"][1].read_text(), procs, "the Ray head", 90)
        workload = temp / "workload.py"
        workload.write_text(WORKLOAD)
        driver = start("tune driver", [sys.executable, str(workload), f"127.0.0.1:{ports['--port']}",
                                       str(temp / "tune"), SWEEP], stdin=subprocess.PIPE, cwd=temp)
        # Ray lists its targets under the host's address, not --node-ip-address: this Prometheus stays on
        # loopback and scrapes the same port there. The autoscaler's and dashboard's metrics ports it also lists
        # are fixed (44217, 44227), so another Ray head on this machine may hold them: only this head's counts.
        discovery = temp / "ray" / "prom_metrics_service_discovery.json"
        port = metrics_target.rsplit(":", 1)[1]
        _wait(lambda: any(t.endswith(f":{port}") for g in json.loads(discovery.read_text()) for t in g["targets"]),
              procs, "this head's metrics port in Ray's service discovery file", 90)
        _wait(lambda: "DONE" in procs["tune driver"][1].read_text(), procs, "the Tune experiment", 90)
        url = f"http://{web}"
        query = urllib.parse.quote(f'ray_fairray_sweep_trials{{sweep="{SWEEP}", state="TERMINATED"}} == 2')
        _wait(lambda: _get(f"{url}/api/v1/query?query={query}")["data"]["result"], procs,
              "both trials TERMINATED in Prometheus", 30)
        yield url, procs
        driver.stdin.close()
    finally:
        for proc, _ in reversed(procs.values()):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


@needs_prometheus
def test_every_panel_query_returns_a_series(prometheus):
    url, procs = prometheus
    queries = _queries(_dashboard())
    gpu_only = [(t, e) for t, e in queries if any(m in e for m in GPU_METRICS)]
    # the exceptions are exactly the GPU panels, named by the metrics they read, so none hides here by accident
    assert {t for t, _ in gpu_only} == {"GPU use per node", "GPU memory per node"}
    has_gpu = shutil.which("nvidia-smi") is not None
    expected = queries if has_gpu else [q for q in queries if q not in gpu_only]

    def empty() -> list[tuple[str, str]]:
        return [(t, e) for t, e in expected
                if not _get(f"{url}/api/v1/query?query={urllib.parse.quote(e)}")["data"]["result"]]

    # rate() needs two samples of the throughput counter in its window: a few scrapes after the trials ended
    deadline = time.monotonic() + 30
    while (missing := empty()) and time.monotonic() < deadline:
        time.sleep(1)
    assert missing == [], f"queries with no series: {missing}"
    # the sweep variable's query (label_values) lists the experiment
    match = urllib.parse.quote("ray_fairray_sweep_trials")
    assert SWEEP in _get(f"{url}/api/v1/label/sweep/values?match[]={match}")["data"]
    trials = _get(f"{url}/api/v1/query?query="
                  + urllib.parse.quote(f'sum(ray_fairray_sweep_trials{{sweep="{SWEEP}"}})'))["data"]["result"]
    assert float(trials[0]["value"][1]) == 2  # every trial is in exactly one state
    if not has_gpu:
        for title, expr in gpu_only:  # honest about what this machine cannot show
            assert not _get(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")["data"]["result"], title
