"""A sweep against production-shaped storage, all on loopback and started by the tests: an MLflow tracking server
backed by PostgreSQL with its artifacts proxied to an S3 bucket (moto's S3 server, reached with the real S3
clients), Ray's results and checkpoints in the same bucket; then ``frontier``, ``export`` and ``predict`` against
that server and bucket. Nothing may land on the local disk but the export and the predictions asked for, and no
credential of the environment may reach the database or the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from fairray.cli import main

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "erm.yaml"


def test_sweep_frontier_export_predict_on_postgres_and_s3(mlflow_server, postgres, tmp_path, monkeypatch, capsys):
    import boto3
    import psycopg2

    url, s3_env, bucket = mlflow_server
    for k, v in s3_env.items():  # the S3 client settings Ray's storage (pyarrow) reads; no MLflow credential
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = "erm-remote"
    raw["train"]["epochs"] = 1
    raw["budget"].update(num_samples=2, max_concurrent=2)
    raw["storage"] = {"path": f"s3://{bucket}/fairray"}
    raw["tracking"] = {"uri": url}
    (tmp_path / "erm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", "erm.yaml", "--quiet"]) == 0

    c = MlflowClient(url)
    runs = c.search_runs([c.get_experiment_by_name("erm-remote").experiment_id])
    assert sorted(r.data.tags["fairray.kind"] for r in runs) == ["sweep", "trial", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)
    host, port, user, password = postgres
    with psycopg2.connect(host=host, port=port, user=user, password=password, dbname="mlflow") as conn, \
            conn.cursor() as cur:  # the runs are rows of the PostgreSQL store
        cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
        assert dict(cur.fetchall()) == {"FINISHED": 3}
        cur.execute("SELECT value FROM params UNION ALL SELECT value FROM tags")
        stored = [v for (v,) in cur.fetchall()]
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("/checkpoint/model.pt") for k in keys)  # proxied artifacts
    assert any(k.startswith("fairray/ray/erm-remote-") for k in keys)  # Ray results in the same bucket
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    assert not [v for v in stored if secret in (v or "")]
    assert not [k for k in keys if secret.encode() in s3.get_object(Bucket=bucket, Key=k)["Body"].read()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erm.yaml"]  # no local store, no local results

    capsys.readouterr()
    assert main(["frontier", "erm-remote", "--tracking-uri", url, "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)[0]
    assert len(front["trials"]) >= 1 and all(t["pareto"] for t in front["trials"])
    assert main(["export", "erm-remote", "--tracking-uri", url, "--out", "pareto"]) == 0
    exported = json.loads((tmp_path / "pareto" / "index.json").read_text())["exports"]
    folder = tmp_path / "pareto" / exported[0]["path"]
    assert (folder / "model.pt").is_file() and (folder / "MODEL_CARD.md").is_file()
    assert main(["predict", str(folder), "--split", "test", "--out", "preds.csv"]) == 0
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0].startswith("uid,") and len(lines) == 601  # the 600 test clips of the built-in data
