"""A sweep against a real MLflow tracking *server* (started with `fairray ui`): nothing assumes a local store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "erm.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'server.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "fairray", "ui", "--port", str(port)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"MLflow server did not come up: {proc.stdout.read(4000) if proc.poll() is not None else ''}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sweep_frontier_export_against_a_tracking_server(server, tmp_path, capsys):
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=2, max_concurrent=2)
    raw["storage"] = {"path": str(tmp_path / "runs")}
    raw["tracking"] = {"uri": server, "experiment": "erm-server"}
    spec = tmp_path / "erm.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec), "--quiet"]) == 0
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to a local store
    runs = MlflowClient(server).search_runs([MlflowClient(server).get_experiment_by_name("erm-server").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    capsys.readouterr()
    assert main(["frontier", "erm-server", "--tracking-uri", server, "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)[0]
    assert any(t["pareto"] for t in front["trials"])
    out = tmp_path / "pareto"
    assert main(["export", "erm-server", "--tracking-uri", server, "--out", str(out)]) == 0
    exported = json.loads((out / "index.json").read_text())["exports"]
    assert exported and (out / exported[0]["path"] / "model.pt").is_file()
    assert main(["predict", str(out / exported[0]["path"]), "--out", str(tmp_path / "p.csv")]) == 0
