"""The opt-in authenticated MLflow server (clusters/README.md, step 0.3): ``mlflow server --app-name basic-auth``
refuses anonymous requests, and fairray logs to it and reads from it with the credentials of its environment
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), which never reach a param or tag of the run."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "erm.yaml"


def test_basic_auth_server_refuses_anonymous_and_fairray_uses_env_credentials(mlflow_auth_server, tmp_path,
                                                                              monkeypatch):
    url, user, password = mlflow_auth_server
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert err.value.code == 401

    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = "erm-auth"
    raw["train"]["epochs"] = 1
    raw["storage"] = {"path": str(tmp_path / "runs")}
    raw["tracking"] = {"uri": url}
    (tmp_path / "erm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(MlflowException, match="401"):  # the client fairray uses, without credentials
        MlflowClient(url).search_experiments()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    ok = subprocess.run([sys.executable, "-m", "fairray", "train", "erm.yaml", "--quiet"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert ok.returncode == 0, ok.stderr[-2000:]
    c = MlflowClient(url)
    (run,) = c.search_runs([c.get_experiment_by_name("erm-auth").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == "erm"
    values = [*run.data.params.values(), *run.data.tags.values()]
    assert not [v for v in values if password in v]
    assert password not in ok.stdout + ok.stderr
