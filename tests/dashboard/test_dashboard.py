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


def test_bad_input_is_one_line_and_exit_2(tiny_sweep, tmp_path, capsys):
    out = str(tmp_path / "x.html")
    assert main(["dashboard", "no-such-sweep", "--tracking-uri", tiny_sweep.uri, "--out", out]) == 2
    assert "no MLflow experiment 'no-such-sweep'" in capsys.readouterr().err
    c = MlflowClient(tiny_sweep.uri)
    empty = c.create_experiment("empty-sweep")
    c.create_run(empty, tags={"fairray.kind": "sweep", "fairray.objectives": '[["dev/weighted_f1", "max"]]'})
    assert main(["dashboard", "empty-sweep", "--tracking-uri", tiny_sweep.uri, "--out", out]) == 2
    assert "no finished trial" in capsys.readouterr().err
    assert main(["dashboard", str(tiny_sweep.spec), "--out", out]) == 2  # only the ablation has run
    assert "holds no fairray sweep run (besides ablations)" in capsys.readouterr().err
    unreachable = f"http://127.0.0.1:{_free_port()}"
    assert main(["dashboard", "x", "--tracking-uri", unreachable, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the MLflow store {unreachable}" in err and len(err.strip().splitlines()) == 1


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
