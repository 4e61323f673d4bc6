"""The explorer page built from a real tiny sweep: what it plots is the frontier module's, whiskers are the
bootstrap intervals, every panel and detail is there, the file is offline, the server is read-only on
loopback, bad input is one line and exit 2, and MLflow's UI gets a training experiment with descriptions."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.dashboard import DashboardApp, collect, make_server
from fairray.dashboard._data import DEFAULT_MLFLOW_UI
from fairray.frontier.plot import fronts_figure
from fairray.frontier.query import fronts, load_sweep, neighbour_noise
from fairray.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NOTE_TAG, SHARED_VIEW_PREFIX

pytestmark = pytest.mark.slow

N_BOOT = 40
PANELS = ["all", "language=de", "language=en", "language=pl", "gender=F", "gender=M"]
DATA_RE = re.compile(r'<script type="application/json" id="fairray-data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def data(tiny_sweep):
    return collect(tiny_sweep.uri, tiny_sweep.experiment, ablation="tiny", n_boot=N_BOOT,
                   compare=(tiny_sweep.uri, tiny_sweep.experiment, None, "tiny"))


def _sweep(tiny_sweep):
    return load_sweep(tiny_sweep.uri, tiny_sweep.experiment, ablation=tiny_sweep.ablation)


def _traces(fig, panel: int, role: str):
    found = [t for t in fig.data if t.meta and t.meta["panel"] == panel and t.meta["role"] == role]
    assert len(found) == 1, (panel, role)
    return found[0]


def test_every_panel_plots_the_frontier_modules_pareto_set(tiny_sweep, data):
    assert [p.title for p in data.panels] == PANELS
    sweep = _sweep(tiny_sweep)
    expected = [*fronts(sweep), *fronts(sweep, by=["language"]), *fronts(sweep, by=["gender"])]
    fig = fronts_figure(list(data.panels), compare=data.compare)
    for i, front in enumerate(expected):
        on = {t.trial_id for t, o, v in zip(front.trials, front.on_front, front.values, strict=True)
              if o and np.isfinite(v).all()}
        off = {t.trial_id for t, o, v in zip(front.trials, front.on_front, front.values, strict=True)
               if not o and np.isfinite(v).all()}
        assert set(_traces(fig, i, "front").customdata) == on
        assert set(_traces(fig, i, "dominated").customdata) == off
        assert front.title in fig.layout.annotations[i].text
        assert f"HV {front.hypervolume:.4f}" in fig.layout.annotations[i].text
        # the compared sweep (here the same run) drawn on the same axes: its Pareto-optimal trials
        compared = _traces(fig, i, "compare")
        assert set(compared.customdata) == on and list(compared.x) == list(_traces(fig, i, "front").x)


def test_whiskers_are_the_speaker_bootstrap_intervals(tiny_sweep, data):
    sweep = _sweep(tiny_sweep)
    fig = fronts_figure(list(data.panels))
    for i, front in enumerate([*fronts(sweep), *fronts(sweep, by=["language"])]):
        noise = neighbour_noise(sweep, front, n_boot=N_BOOT)  # the same seeded resample, recomputed here
        trace = _traces(fig, i, "front")
        ix, iy = 1, 0  # the gap on x, the utility on y
        for k, trial in enumerate(trace.customdata):
            ci = noise[trial]["ci"]
            lo_y, hi_y = ci[front.objectives[iy]].lo, ci[front.objectives[iy]].hi
            lo_x, hi_x = ci[front.objectives[ix]].lo, ci[front.objectives[ix]].hi
            assert trace.y[k] + trace.error_y.array[k] == pytest.approx(max(hi_y, trace.y[k]))
            assert trace.y[k] - trace.error_y.arrayminus[k] == pytest.approx(min(lo_y, trace.y[k]))
            assert trace.x[k] + trace.error_x.array[k] == pytest.approx(max(hi_x, trace.x[k]))
            assert trace.x[k] - trace.error_x.arrayminus[k] == pytest.approx(min(lo_x, trace.x[k]))
        ties = [t for t, mark in zip(trace.customdata, trace.text, strict=True) if mark == "~"]
        gap = front.objectives[1]
        assert ties == [t for t in trace.customdata if gap in noise[t] and noise[t][gap].defined
                        and noise[t][gap].lo <= 0 <= noise[t][gap].hi]


def test_each_trial_has_its_detail(tiny_sweep, data):
    sweep = _sweep(tiny_sweep)
    assert set(data.details) == {t.trial_id for t in sweep.trials}
    for trial in sweep.trials:
        d = data.details[trial.trial_id]
        assert d.params == trial.params and d.method == trial.params["method.name"]
        assert d.url == f"{DEFAULT_MLFLOW_UI}/#/experiments/{data.experiment_id}/runs/{trial.run_id}"
        assert f"--run-id {sweep.run_id}" in d.export and d.export.startswith(("fairray export", "# not Pareto"))
        utility = d.heat["utility"]
        assert {"F · en", "M · pl", "F · all", "all · de", "all"} <= set(utility["x"])
        row, col = utility["y"].index("dev/weighted_f1"), utility["x"].index("F · en")
        assert utility["z"][row][col] == pytest.approx(trial.metrics["dev/weighted_f1/gender:F/language:en"])
        assert utility["z"][row][utility["x"].index("all")] == pytest.approx(trial.metrics["dev/weighted_f1"])
        gap = d.heat["gap"]
        row = gap["y"].index("dev/tpr_gap")
        assert gap["z"][row][gap["x"].index("worst")] == pytest.approx(
            trial.metrics["dev/tpr_gap/gender/worst:language"])
        steps, values = d.curves["dev/weighted_f1"]
        assert len(steps) >= 2 and values[-1] == pytest.approx(trial.metrics["dev/weighted_f1"])
        assert "train/loss" in d.curves
        assert ("method/lambda" in d.curves) == (d.method == "minmaxgap")  # the method's own logs


def test_ablation_is_shown_as_its_report_table(tiny_sweep, data):
    from fairray.dashboard._page import markdown_html
    from fairray.report.minmaxgap import minmaxgap_report, render_minmaxgap_markdown

    assert [a.name for a in data.ablations] == ["tiny"]
    table = data.ablations[0]
    assert table.markdown is not None, table.note
    tables, _ = minmaxgap_report(_sweep(tiny_sweep), split="test", n_boot=N_BOOT)  # what `fairray report` prints
    assert table.markdown.splitlines()[1:] == render_minmaxgap_markdown(tables, title="t").splitlines()[1:]
    page = markdown_html(table.markdown)
    assert page.count("<table") == len(tables) and "<td>erm" in page.lower()
    assert "--ablation tiny" in data.command


def test_out_file_is_self_contained(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "dash.html"
    assert main(["dashboard", str(tiny_sweep.spec), "--ablation", "tiny", "--out", str(out),
                 "--n-boot", str(N_BOOT)]) == 0
    page = out.read_text(encoding="utf-8")

    class Loads(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags, self.urls = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.urls += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "action", "srcset", "data")]

    loads = Loads()
    loads.feed(page)
    assert "link" not in loads.tags and "iframe" not in loads.tags and "img" not in loads.tags
    external = [u for u in loads.urls if re.match(r"(https?:)?//", u[2])]
    assert external and all(tag == "a" and url.startswith(f"{DEFAULT_MLFLOW_UI}/#/experiments/")
                            for tag, _, url in external)  # plain anchors to MLflow's UI, nothing loaded
    assert not [u for u in loads.urls if u[1] == "src"]
    payload = json.loads(DATA_RE.findall(page)[0])
    assert payload["served"] is False and len(payload["trials"]) == 2
    for panel in PANELS:
        assert panel in page
    assert "parallel" in page and "Hyperparameters against objectives" in page


def test_parallel_coordinates_show_searched_parameters_and_objectives(data):
    from fairray.dashboard import parallel_figure

    dims = {d.label: d for d in parallel_figure(data).data[0].dimensions}
    assert list(dims["method.name"].ticktext) == ["erm", "minmaxgap"]  # a categorical parameter as codes
    assert "dev/weighted_f1" in dims and "dev/tpr_gap/gender/worst:language" in dims and "Pareto-optimal" in dims
    front = data.fronts[0]
    assert list(dims["dev/weighted_f1"].values) == pytest.approx(front.values[:, 0].tolist())


def _request(url: str, method: str = "GET", host: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"x" if method in ("POST", "PUT", "PATCH") else None)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_server_is_read_only_on_loopback_and_rebuilds_when_the_sweep_changes(tiny_sweep):
    app = DashboardApp(tiny_sweep.uri, tiny_sweep.experiment, ablation="tiny", n_boot=0)
    server = make_server(app, port=0)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        status, page = _request(base + "/")
        assert status == 200 and "fairness explorer" in page and '"served":true' in page
        status, state = _request(base + "/state")
        assert status == 200 and re.fullmatch(r"[0-9a-f]{16}", state)
        assert _request(base + "/")[1] == page  # unchanged sweep: the same page, not rebuilt
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert _request(base + "/", method)[0] == 405
        assert _request(base + "/api/2.0/mlflow/runs/delete")[0] == 404
        assert _request(base + "/", host="attacker.example")[0] == 403  # DNS rebinding
        assert _request(base + "/state", host=f"localhost:{port}")[0] == 200
        # a new trial starts: the token changes and the next page says so
        c = MlflowClient(tiny_sweep.uri)
        sweep = _sweep(tiny_sweep)
        exp = c.get_experiment_by_name(tiny_sweep.experiment).experiment_id
        run = c.create_run(exp, tags={"mlflow.parentRunId": sweep.run_id, "fairray.trial_id": "running-1"})
        try:
            assert _request(base + "/state")[1] != state
            assert "1 failed or running" in _request(base + "/")[1]
        finally:
            c.delete_run(run.info.run_id)
        assert _request(base + "/state")[1] == state
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairray: error: "), err
    return lines[0]


def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "x.html"
    args = ["--out", str(out), "--n-boot", "0"]
    assert main(["dashboard", "no-such-sweep", "--tracking-uri", tiny_sweep.uri, *args]) == 2
    assert "no MLflow experiment 'no-such-sweep'" in _one_line(capsys.readouterr().err)
    c = MlflowClient(tiny_sweep.uri)
    empty = c.create_experiment("empty-sweep")
    c.create_run(empty, tags={"fairray.kind": "sweep", "fairray.objectives": '[["dev/weighted_f1", "max"]]'})
    assert main(["dashboard", "empty-sweep", "--tracking-uri", tiny_sweep.uri, *args]) == 2
    assert "no finished trial" in _one_line(capsys.readouterr().err)
    assert main(["dashboard", str(tiny_sweep.spec), *args]) == 2  # only the ablation has run
    assert "holds no fairray sweep run (besides ablations)" in _one_line(capsys.readouterr().err)
    assert main(["dashboard", str(tiny_sweep.spec), "--ablation", "nope", *args]) == 2
    assert "holds no fairray run of ablation 'nope'" in _one_line(capsys.readouterr().err)
    unreachable = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["dashboard", "x", "--tracking-uri", unreachable, *args]) == 2
    assert f"cannot read the MLflow store {unreachable}" in _one_line(capsys.readouterr().err)
    missing = tmp_path / "nowhere" / "mlflow.db"
    assert main(["dashboard", "x", "--tracking-uri", f"sqlite:///{missing}", *args]) == 2
    assert f"no MLflow store at sqlite:///{missing}" in _one_line(capsys.readouterr().err)
    assert not missing.exists() and not missing.parent.exists()  # a read-only command creates no store
    assert main(["dashboard", str(tiny_sweep.spec), "--ablation", "tiny", "--compare", "no-such-sweep", *args]) == 2
    assert "no MLflow experiment 'no-such-sweep'" in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no page, no partial or temporary file
    # an --out that cannot be written: one line, and no temporary file left beside it
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["dashboard", str(tiny_sweep.spec), "--ablation", "tiny", "--out", str(blocked / "x.html"),
                 "--n-boot", "0"]) == 2
    assert f"cannot write {blocked / 'x.html'}" in _one_line(capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_server_fails_before_it_binds(tiny_sweep, monkeypatch, capsys):
    import fairray.dashboard

    bound = []
    monkeypatch.setattr(fairray.dashboard, "make_server", lambda *a, **k: bound.append(a) or make_server(*a, **k))
    port = _free_port()
    assert main(["dashboard", "no-such-sweep", "--tracking-uri", tiny_sweep.uri, "--port", str(port)]) == 2
    assert "no MLflow experiment 'no-such-sweep'" in _one_line(capsys.readouterr().err)
    unreachable = f"http://127.0.0.1:{_free_port()}"
    assert main(["dashboard", "x", "--tracking-uri", unreachable, "--port", str(port)]) == 2
    _one_line(capsys.readouterr().err)
    assert bound == []  # the sweep is read first: no socket was ever opened
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens on the port asked for


def test_bad_input_through_the_installed_command(tiny_sweep, tmp_path):
    """The same failures as a user sees them: the ``fairray`` console script in its own process."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("fairray")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "fairray.cli"]
    missing = tmp_path / "mlflow.db"
    closed = _free_port()  # nothing listens there
    for uri, needle in ((f"http://127.0.0.1:{_free_port()}", "cannot read the MLflow store"),
                        (f"sqlite:///{missing}", "no MLflow store at"),
                        # a database server that does not answer: one attempt, not MLflow's ~100 s of retries
                        (f"postgresql+psycopg2://fairray:secret@127.0.0.1:{closed}/mlflow",
                         f"cannot reach the MLflow store at 127.0.0.1:{closed}/mlflow (connection to server")):
        out = tmp_path / "page.html"
        proc = subprocess.run([*cli, "dashboard", "x", "--tracking-uri", uri, "--out", str(out)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        line = _one_line(proc.stderr)
        assert needle in line and "secret" not in line and proc.stdout == ""
        assert not out.exists() and not missing.exists()


def _parser_host(argv):
    from fairray.cli import build_parser

    return build_parser().parse_args(argv).host


def test_loopback_unless_host_is_given(tiny_sweep):
    assert _parser_host(["dashboard", "x"]) == "127.0.0.1" and _parser_host(["ui"]) == "127.0.0.1"
    app = DashboardApp(tiny_sweep.uri, tiny_sweep.experiment, ablation="tiny", n_boot=0)
    server = make_server(app, port=0)  # the library's default too
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    server = make_server(app, host="0.0.0.0", port=0)  # --host given: bound there, any Host header answered
    try:
        assert server.server_address[0] == "0.0.0.0"
    finally:
        server.server_close()


def test_ui_opens_an_ablations_runs_table(tiny_sweep, monkeypatch, capsys):
    import os

    started = []
    monkeypatch.setattr(os, "execve", lambda exe, cmd, env: started.append((cmd, env)))  # MLflow's server: not here
    sweep = _sweep(tiny_sweep)
    assert main(["ui", str(tiny_sweep.spec), "--ablation", "tiny", "--port", "5055"]) == 0
    err = capsys.readouterr().err
    exp = MlflowClient(tiny_sweep.uri).get_experiment_by_name(tiny_sweep.experiment).experiment_id
    assert (f"open http://127.0.0.1:5055/#/experiments/{exp}/runs?workflowType=machine_learning"
            f"&viewStateShareKey=fairray-{sweep.run_id[:12]}") in err
    cmd, env = started[0]
    # the store's URI reaches MLflow's server through its environment, not its command line (process listings)
    assert env["MLFLOW_BACKEND_STORE_URI"] == tiny_sweep.uri and tiny_sweep.uri not in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    # the search has not run in this store: without --ablation the spec's sweep is not there
    assert main(["ui", str(tiny_sweep.spec)]) == 2
    assert "holds no fairray sweep run (besides ablations)" in _one_line(capsys.readouterr().err)
    assert main(["ui", str(tiny_sweep.spec), "--ablation", "nope"]) == 2
    assert "holds no fairray run of ablation 'nope'" in _one_line(capsys.readouterr().err)
    assert main(["ui", "--ablation", "tiny"]) == 2
    assert "--ablation tiny needs the SWEEP" in _one_line(capsys.readouterr().err)
    assert len(started) == 1


def test_mlflow_ui_gets_a_training_experiment_with_descriptions(tiny_sweep):
    c = MlflowClient(tiny_sweep.uri)
    exp = c.get_experiment_by_name(tiny_sweep.experiment)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    sweep = _sweep(tiny_sweep)
    front = fronts(sweep)[0]
    note = c.get_run(sweep.run_id).data.tags[NOTE_TAG]
    assert (f"fairray dashboard {tiny_sweep.experiment} --tracking-uri {tiny_sweep.uri} --run-id {sweep.run_id} "
            "--ablation tiny") in note
    for trial, on in zip(front.trials, front.on_front, strict=True):
        assert (f"| {trial.trial_id} |" in note) == bool(on)  # the front's summary table
        trial_note = c.get_run(trial.run_id).data.tags[NOTE_TAG]
        assert f"method `{trial.params['method.name']}`" in trial_note
        assert ("all: Pareto-optimal" if on else "all: dominated") in trial_note
        assert "language=en:" in trial_note and "gender=F:" in trial_note
    view = json.loads(exp.tags[f"{SHARED_VIEW_PREFIX}fairray-{sweep.run_id[:12]}"])
    assert "metrics.`dev/weighted_f1`" in view["selectedColumns"]
    assert "params.`method.name`" in view["selectedColumns"]
    assert view["orderByKey"] == "metrics.`dev/weighted_f1`" and view["orderByAsc"] is False
    assert "workflowType=machine_learning" in note and "viewStateShareKey=" in note


def test_curves_are_read_in_bulk_as_the_per_run_histories(tiny_sweep):
    """A SQL store's curves come from one query per metric key over many runs: the same points, in the same
    order, as MLflow's per-run ``get_metric_history``."""
    from fairray.dashboard._data import metric_histories

    sweep = _sweep(tiny_sweep)
    wanted = {t.run_id: sorted(k for k in t.metrics if k.startswith("method/") or k in
                               ("train/loss", "dev/loss", "dev/weighted_f1", "no/such_metric")) for t in sweep.trials}
    assert any("method/lambda" in keys for keys in wanted.values())
    got = metric_histories(tiny_sweep.uri, wanted)
    c = MlflowClient(tiny_sweep.uri)
    for run_id, keys in wanted.items():
        assert set(got[run_id]) == set(keys) - {"no/such_metric"}
        for key in got[run_id]:
            history = sorted(c.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            steps, values = got[run_id][key]
            assert steps == [m.step for m in history] and len(steps) >= 2
            assert values == pytest.approx([m.value for m in history])


def test_page_read_through_a_tracking_server_is_the_page_read_from_its_store(tiny_sweep, data):
    """Through a tracking server (MLflow's own, started by ``fairray ui`` on loopback) the curves are read per
    run and key, a few requests at a time: the same details as from the SQLite store itself."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    port = _free_port()
    # its own session: the server (``mlflow ui`` and the uvicorn it starts) is stopped as one process group
    proc = subprocess.Popen([sys.executable, "-m", "fairray.cli", "ui", "--tracking-uri", tiny_sweep.uri, "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < end and proc.poll() is None, "MLflow's server did not come up"
            time.sleep(0.5)
        served = collect(url, tiny_sweep.experiment, ablation="tiny", n_boot=0)
    finally:  # how fast the server shuts down is not what this tests (on a loaded machine: more than 30 s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of that group, and only of it
        proc.wait(timeout=30)
    assert set(served.details) == set(data.details)
    for trial_id, d in data.details.items():
        other = served.details[trial_id]
        assert set(other.curves) == set(d.curves) and other.params == d.params
        for key, (steps, values) in d.curves.items():
            assert other.curves[key][0] == steps and other.curves[key][1] == pytest.approx(values)
        assert other.heat["utility"]["y"] == d.heat["utility"]["y"] and other.heat["gap"]["x"] == d.heat["gap"]["x"]
