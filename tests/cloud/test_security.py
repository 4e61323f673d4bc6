"""Secure defaults: servers fairray starts bind 127.0.0.1 unless told otherwise, checkpoints are read with
``weights_only=True``, ``export`` never writes outside its output folder, and the cluster walk-through keeps
credentials out of command lines. (No secret in a store or log after a real sweep: tests/cloud/test_submit.py.)"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import numpy as np
import pytest

from fairray.cli import build_parser
from fairray.errors import DataError
from fairray.export import export_front
from fairray.frontier.pareto import Direction
from fairray.frontier.query import Front, Sweep, TrialRecord

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "fairray"


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_command_that_serves_binds_loopback_by_default():
    serving = {name: sub for name, sub in _subcommands(build_parser())
               if any("--host" in a.option_strings for a in sub._actions)}
    assert "ui" in serving
    for name, sub in serving.items():
        (host,) = [a for a in sub._actions if "--host" in a.option_strings]
        assert host.default == "127.0.0.1", f"fairray {name} --host defaults to {host.default!r}"


def test_the_package_never_binds_all_interfaces():
    hits = [f"{p.relative_to(REPO)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"0\.0\.0\.0|\"::\"|'::'", line)]
    assert hits == []


def test_every_torch_load_in_the_package_is_weights_only():
    """A checkpoint folder can come from a bucket or an MLflow server: unpickling it must not run code."""
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls  # the scan sees the checkpoint readers
    assert [where for where, safe in calls if not safe] == []


def _sweep_with(trial_id: str) -> tuple[Sweep, Front]:
    trial = TrialRecord(run_id="0123abcd", trial_id=trial_id, params={}, metrics={"dev/weighted_f1": 0.5})
    objectives = (("dev/weighted_f1", Direction.parse("max")),)
    sweep = Sweep(experiment="erm", run_id="parent", objectives=objectives, trials=(trial,), n_failed=0,
                  tracking_uri="sqlite:///nowhere.db", attribute="gender")
    front = Front(title="all", objectives=("dev/weighted_f1",), directions=(Direction.parse("max"),),
                  trials=(trial,), values=np.array([[0.5]]), on_front=np.array([True]), hypervolume=0.5,
                  reference=(0.0,))
    return sweep, front


@pytest.mark.parametrize("trial_id", ["../escape", "../../etc", "/tmp/abs", "a/../../b", "..", ".", "", "a\\b"])
def test_export_refuses_a_trial_id_that_would_leave_its_output_folder(tmp_path, trial_id):
    sweep, front = _sweep_with(trial_id)
    out = tmp_path / "out" / "pareto"
    with pytest.raises(DataError, match="not a plain folder name") as err:
        export_front(sweep, front, out)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written, inside or outside


def test_cluster_walkthrough_keeps_credentials_out_of_command_lines():
    text = (REPO / "clusters" / "README.md").read_text()
    assert not re.search(r"://[^/\s:@]+:[^@\s/]+@", text), "a user:password@ URI in clusters/README.md"
    assert not re.search(r"--from-literal=\S*(password|secret|token)", text, flags=re.I)
    blocks = re.findall(r"```\w*\n(.*?)```", text, flags=re.S)
    commands = [c.replace("\\\n", " ") for b in blocks for c in re.split(r"(?<!\\)\n", b)]
    servers = [c for c in commands if c.strip().startswith("mlflow server")]
    assert servers and all("--host 127.0.0.1" in s for s in servers), servers
    assert not [c for c in commands if "0.0.0.0" in c or re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)=", c)]


def test_a_database_password_in_the_tracking_uri_is_never_printed(postgres, capsys):
    """``--tracking-uri postgresql://user:PASSWORD@host/db`` against a real PostgreSQL: the one-line error for an
    unknown sweep names the store with its credentials masked."""
    import psycopg2

    from fairray.cli import main

    host, port, user, password = postgres
    conn = psycopg2.connect(host=host, port=port, user=user, password=password, dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE shown_uri")
    conn.close()
    uri = f"postgresql+psycopg2://{user}:{password}@{host}:{port}/shown_uri"
    assert main(["frontier", "no-such-sweep", "--tracking-uri", uri]) == 1  # TrackingError: nothing usable there
    out, err = capsys.readouterr()
    assert "no MLflow experiment 'no-such-sweep'" in err and f"postgresql+psycopg2://***@{host}:{port}/shown_uri" in err
    assert password not in out + err and len(err.strip().splitlines()) == 1


def test_a_tracking_uri_whose_database_driver_is_missing_is_one_line(capsys):
    """SQLAlchemy's default PostgreSQL driver is psycopg 3, which fairray does not install: one line naming the
    package, the password masked (no server needed: the driver is imported before any connection)."""
    import importlib.util

    from fairray.cli import main

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed here")
    assert main(["frontier", "x", "--tracking-uri", "postgresql://u:hunter22@127.0.0.1:9/db"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'psycopg[binary]'" in err and "hunter22" not in err
