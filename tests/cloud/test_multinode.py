"""A sweep across a Ray cluster of several nodes: a head that offers no CPU and two worker nodes with one CPU each
(``ray start`` processes on loopback with token authentication, stopped by handle); every trial must run on a
worker node, which Ray's state API shows for the trials' actors."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.cloud.conftest import stop, wait_until

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"
AGENT_PORTS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
               "--metrics-export-port", "--node-manager-port", "--object-manager-port")


def distinct_ports(n: int) -> list[int]:
    """``n`` free ports on loopback, all different (held open together while they are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def ray_start(args: list[str], env: dict, log: Path, ports: list[int]) -> subprocess.Popen:
    """``ray start --block`` of one node; ``ports`` for its agents (len(AGENT_PORTS) of them)."""
    ports = [str(x) for flag, port in zip(AGENT_PORTS, ports, strict=True) for x in (flag, port)]
    with open(log, "wb") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block",
                                 "--node-ip-address", "127.0.0.1", *args, *ports],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def local_cluster(worker_cpus: tuple[int, ...] = (1, 1)):
    """A head that offers no CPU and one worker node per entry of ``worker_cpus``, on loopback with token
    authentication, each node a ``ray start --block`` process group stopped by handle: yields (GCS address, job API
    URL, client environment, [head, worker, ...] processes, Ray Client address ``ray://...`` of the head). Also used
    by ``benchmarks/faults.py``."""
    temp = Path(tempfile.mkdtemp(prefix="fr-mn-", dir="/tmp"))  # Ray's socket paths must stay short
    bin_dir = str(Path(sys.executable).parent)
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {**os.environ, **client_env, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    n = 1 + len(worker_cpus)
    # every port of the nodes picked at once: ports picked one by one may repeat
    gcs_port, dash_port, client_port, *node_ports = distinct_ports(3 + n * len(AGENT_PORTS))
    node_ports = [node_ports[i::n] for i in range(n)]
    gcs = f"127.0.0.1:{gcs_port}"
    procs = [ray_start(["--head", "--num-cpus", "0", "--port", str(gcs_port), "--include-dashboard", "true",
                        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                        "--ray-client-server-port", str(client_port), "--temp-dir", str(temp)],
                       env, temp / "head.log", node_ports[0])]
    url = f"http://127.0.0.1:{dash_port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in client_env.items():
                mp.setenv(k, v)
            from ray._raylet import AuthenticationTokenLoader  # after the settings: Ray reads them on import

            AuthenticationTokenLoader.instance().reset_cache()  # a token of an earlier test in this process
            from ray.util.state import list_nodes

            def alive_nodes() -> int:
                try:
                    return sum(n.state == "ALIVE" for n in list_nodes(address=url, raise_on_missing_output=False))
                except Exception:  # noqa: BLE001 - any failure of the state API while the head comes up
                    return 0

            wait_until(lambda: alive_nodes() >= 1, procs[0], "ray head", temp / "head.log", timeout_s=120)
            for i, cpus in enumerate(worker_cpus):  # one after the other: raylets starting at once time out
                procs.append(ray_start(["--address", gcs, "--num-cpus", str(cpus)], env, temp / f"worker{i}.log",
                                       node_ports[i + 1]))
                wait_until(lambda n=i + 2: alive_nodes() == n, procs[-1], "ray worker", temp / f"worker{i}.log",
                           timeout_s=120)
            yield gcs, url, client_env, procs, f"ray://127.0.0.1:{client_port}"
            AuthenticationTokenLoader.instance().reset_cache()
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, job API URL, client environment, [head, worker, worker] processes, Ray Client address):
    :func:`local_cluster`."""
    with local_cluster() as c:
        yield c


def _client_server_logs(head: subprocess.Popen) -> str:
    """The tails of the head's Ray Client server logs (``ray_client_server*``), to say why a connection failed."""
    args = list(head.args)
    logs = Path(args[args.index("--temp-dir") + 1]) / "session_latest" / "logs"
    return "".join(f"\n--- {f.name}:\n{f.read_text(errors='replace')[-2000:]}"
                   for f in sorted(logs.glob("ray_client_server*")))


def _small_sweep(tmp_path: Path, address: str, client_env: dict,
                 head: subprocess.Popen | None = None) -> subprocess.CompletedProcess:
    """``fairray sweep --address ADDRESS --quiet`` of minmaxgap.yaml at 2 trials x 2 epochs, 2 at a time, its store
    under ``tmp_path/runs``; asserts it exited 0 (with the Ray Client server logs of ``head`` when it did not)."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=2, max_concurrent=2)
    raw["storage"]["path"] = str(tmp_path / "runs")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    env = {**os.environ, **client_env}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "fairray", "sweep", str(spec), "--address", address, "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout[-3000:] + out.stderr[-3000:]
                                 + (_client_server_logs(head) if head is not None else ""))
    return out


def test_sweep_runs_its_trials_on_the_worker_nodes(cluster, tmp_path):
    gcs, url, client_env, *_ = cluster
    _small_sweep(tmp_path, gcs, client_env)

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("minmaxgap").experiment_id], max_results=100)
    assert sorted(r.info.status for r in runs if r.data.tags.get("fairray.kind") == "trial") == ["FINISHED"] * 2

    from ray.util.state import list_actors, list_nodes

    with pytest.MonkeyPatch.context() as mp:
        for k, v in client_env.items():
            mp.setenv(k, v)
        nodes = list_nodes(address=url, raise_on_missing_output=False)
        head = {n.node_id for n in nodes if n.is_head_node}
        workers = {n.node_id for n in nodes if not n.is_head_node}
        actors = list_actors(address=url, detail=True, limit=1000, raise_on_missing_output=False)
    assert len(head) == 1 and len(workers) == 2
    # the sweep's MLflow writer runs on the driver's node (here the head), which reaches the store; the trials
    # send it their metrics and artifacts from the worker nodes (fairray/tracking/_writer.py)
    writers = [a for a in actors if a.class_name == "TrackingWriter"]
    assert len(writers) == 1 and writers[0].node_id in head, [(a.class_name, a.node_id in head) for a in actors]
    trial_actors = [a for a in actors if a.class_name not in ("_StatsActor", "TrackingWriter") and a.node_id]
    placed = {a.node_id for a in trial_actors}
    assert placed, [(a.class_name, a.node_id) for a in actors]
    assert placed <= workers, [(a.class_name, a.node_id in head) for a in trial_actors]


def test_a_sweep_through_ray_client_tracks_every_trial(cluster, tmp_path):
    """``fairray sweep --address ray://head:10001`` (the CLI's own example): the driver is a Ray Client, Tune's
    controller runs on the cluster, and the trials still reach MLflow through the sweep's writer: each trial run
    FINISHED with its metrics and its checkpoint artifact, the sweep run FINISHED, none left RUNNING."""
    _, url, client_env, procs, client = cluster
    out = _small_sweep(tmp_path, client, client_env, head=procs[0])
    assert "2 trials finished, 0 errored" in out.stdout, out.stdout[-3000:]

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("minmaxgap").experiment_id], max_results=100)
    trials = [r for r in runs if r.data.tags.get("fairray.kind") == "trial"]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3, [(r.info.status, r.data.tags) for r in runs]
    assert len(trials) == 2
    for r in trials:
        assert "dev/weighted_f1" in r.data.metrics and "method.lambda_max" in r.data.params
        assert any(f.path == "checkpoint" for f in c.list_artifacts(r.info.run_id))

    from ray.util.state import list_actors

    with pytest.MonkeyPatch.context() as mp:
        for k, v in client_env.items():
            mp.setenv(k, v)
        actors = list_actors(address=url, detail=True, limit=1000, raise_on_missing_output=False)
    assert any(a.class_name == "TrackingWriter" for a in actors), sorted({a.class_name for a in actors})
