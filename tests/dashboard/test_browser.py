"""The explorer in a real headless Chromium driven by Selenium (Debian's ``chromium`` and ``chromium-driver``), on
the tiny real sweep, both as the ``--out`` file and as served by ``fairray dashboard`` on 127.0.0.1:

- the page loads with no console error and requests nothing but itself (Chromium's browser log and its
  performance log of DevTools ``Network`` events; a probe page proves both detectors see what they look for);
- it draws one panel per language and per gender, named from the sweep's MLflow store;
- a real pointer move onto a trial's point shows that trial's hyperparameters and rings it in every panel;
- a click on a point fills the detail (hyperparameters, both heat tables, the curves, the export line) and its
  MLflow link is the trial's run in the store;
- a screenshot of each view (fronts, detail, parallel coordinates) is saved under the test's temp dir;
- MLflow's own UI, started by ``fairray ui`` on loopback, opens the sweep's link from its run description on
  the runs table with the objectives as columns, and the trial's link from the dashboard on its run.

Skipped with the reason where the browser, its driver or Selenium is missing, except in CI
(``FAIRRAY_REQUIRE_BROWSER=1``, set by ``.ci/run``, which installs them): there a missing one fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fairray.cli import main
from fairray.frontier.plot import _fmt
from fairray.frontier.query import load_sweep
from fairray.metrics import MetricKey
from fairray.tracking import NOTE_TAG

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True
MISSING = ("no chromium on PATH (apt-get install -y chromium)" if CHROMIUM is None else
           "no chromedriver on PATH (apt-get install -y chromium-driver)" if CHROMEDRIVER is None else
           "selenium is not installed (pip install -e .[test])" if not HAVE_SELENIUM else None)
REQUIRED = os.environ.get("FAIRRAY_REQUIRE_BROWSER") == "1"
N_BOOT = "40"
WAIT_S = 180  # a page or a server on a loaded 2-core machine; every wait is bounded
DATA_RE = re.compile(r'<script type="application/json" id="fairray-data">(.*?)</script>', re.S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        if REQUIRED:
            pytest.fail(f"FAIRRAY_REQUIRE_BROWSER=1 but {MISSING}")
        pytest.skip(f"needs a browser: {MISSING}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--enable-unsafe-swiftshader",  # software WebGL for the parallel coordinates, without a warning
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@dataclass
class Loaded:
    errors: list[str]  # console messages at level SEVERE (errors, uncaught exceptions, failed loads)
    requests: list[str]  # every URL the page requested (DevTools Network.requestWillBeSent), data: URLs aside


def _drain(driver) -> tuple[list[dict], list[dict]]:
    return driver.get_log("browser"), driver.get_log("performance")


def _loaded(driver) -> Loaded:
    console, perf = _drain(driver)
    requests = []
    for entry in perf:
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith("data:"):  # plotly's inline images (heatmaps), not a request to anywhere
                requests.append(url)
    return Loaded([e["message"] for e in console if e["level"] == "SEVERE"], requests)


def _wait(driver, script: str, what: str, timeout: float = WAIT_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = driver.execute_script(script)
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout} s")


def open_page(driver, url: str) -> Loaded:
    """Navigate, wait for the page script's ``data-ready``, return what the browser logged on the way."""
    driver.get("about:blank")
    _drain(driver)
    driver.get(url)
    _wait(driver, "return document.body && document.body.dataset.ready === '1'", f"{url} ready")
    return _loaded(driver)


def test_probe_page_errors_and_requests_are_seen(browser, tmp_path):
    """The detectors work: an empty list from them means something."""
    page = tmp_path / "probe.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/probe.png"><script>'
                    'console.error("probe error"); document.body.dataset.ready = "1";</script></body></html>')
    loaded = open_page(browser, page.as_uri())
    assert "http://127.0.0.1:9/probe.png" in loaded.requests
    assert any("probe error" in e for e in loaded.errors)
    assert any("probe.png" in e for e in loaded.errors)  # the failed load is an error too


# --- the two ways to open the page ----------------------------------------------------------------------------

MLFLOW_UI_PORT = _free_port()
MLFLOW_UI = f"http://127.0.0.1:{MLFLOW_UI_PORT}"


@pytest.fixture(scope="module")
def out_page(tiny_sweep, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("browser") / "dashboard.html"
    assert main(["dashboard", str(tiny_sweep.spec), "--ablation", tiny_sweep.ablation, "--out", str(out),
                 "--n-boot", N_BOOT, "--mlflow-ui", MLFLOW_UI]) == 0
    return out.as_uri()


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("fairray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fairray.cli"]


@pytest.fixture(scope="module")
def served_page(tiny_sweep):
    """``fairray dashboard`` as a user starts it (no --host): the URL it prints, on loopback."""
    proc = subprocess.Popen([*_cli(), "dashboard", str(tiny_sweep.spec), "--ablation", tiny_sweep.ablation,
                             "--port", "0", "--n-boot", N_BOOT, "--mlflow-ui", MLFLOW_UI],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = _printed(proc, r"on (http://\S+/) \(read-only", "fairray dashboard")
        assert url.startswith("http://127.0.0.1:")  # never beyond loopback unless --host is given
        yield url
    finally:
        _stop(proc)


def _printed(proc: subprocess.Popen, pattern: str, what: str) -> str:
    """The first match of ``pattern`` in the process's stderr (bounded: a reader thread, a deadline)."""
    import queue
    import threading

    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    seen = []
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found.group(1)
    raise AssertionError(f"{what} printed no {pattern!r} (exit {proc.poll()}):\n{''.join(seen)[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(params=["file", "served"])
def page(request, out_page, served_page) -> tuple[str, str]:
    return request.param, out_page if request.param == "file" else served_page


# --- what the store says the page must show --------------------------------------------------------------------

@dataclass(frozen=True)
class Expected:
    panels: list[str]
    params: dict[str, dict[str, str]]  # trial id -> searched hyperparameters
    run_ids: dict[str, str]
    experiment_id: str
    sweep_run_id: str
    curves: dict[str, set[str]]  # trial id -> metric histories the detail draws
    metrics: dict[str, dict[str, float]]


def _keys(sweep) -> list[MetricKey]:
    out = []
    for name in {k for t in sweep.trials for k in t.metrics}:
        try:
            out.append(MetricKey.parse(name))
        except ValueError:  # bookkeeping such as `epoch`
            continue
    return out


@pytest.fixture(scope="module")
def expected(tiny_sweep) -> Expected:
    sweep = load_sweep(tiny_sweep.uri, tiny_sweep.experiment, ablation=tiny_sweep.ablation)
    languages = json.loads(sweep.base_params["dataset.languages"])
    genders = sorted({k.group for k in _keys(sweep) if k.attr == sweep.attribute and k.group})
    assert languages and genders
    objectives = {k for k, _ in sweep.objectives}
    curves = {t.trial_id: objectives | {k for k in t.metrics if k.startswith("method/") or k in ("train/loss",
                                                                                                 "dev/loss")}
              for t in sweep.trials}
    exp = MlflowClient(tiny_sweep.uri).get_experiment_by_name(tiny_sweep.experiment).experiment_id
    return Expected(["all", *(f"language={x}" for x in sorted(languages)), *(f"gender={g}" for g in genders)],
                    {t.trial_id: dict(t.params) for t in sweep.trials}, {t.trial_id: t.run_id for t in sweep.trials},
                    exp, sweep.run_id, curves, {t.trial_id: dict(t.metrics) for t in sweep.trials})


# Every plotted marker of the fronts: [trial, panel, x px, y px], the pixels relative to the plot's centre
# (what a pointer move with an offset from the element takes).
POINTS = """
var f = document.getElementById('fronts'), L = f._fullLayout, out = [], box = f.getBoundingClientRect();
f._fullData.forEach(function (t) {
  if (!t.meta || (t.meta.role !== 'front' && t.meta.role !== 'dominated')) return;
  var xa = L[t.xaxis.replace('x', 'xaxis')], ya = L[t.yaxis.replace('y', 'yaxis')];
  for (var k = 0; k < t.x.length; k++)
    out.push([t.customdata[k], t.meta.panel, xa._offset + xa.l2p(t.x[k]) - box.width / 2,
              ya._offset + ya.l2p(t.y[k]) - box.height / 2]);
});
return out;
"""


def _point_of(driver, trial: str) -> tuple[float, float]:
    """The trial's point farthest from any other trial's point in its panel (a pointer there hovers it)."""
    from selenium.webdriver.common.by import By

    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", driver.find_element(By.ID, "fronts"))
    points = driver.execute_script(POINTS)
    best, room = None, -1.0
    for t, panel, x, y in points:
        if t != trial:
            continue
        others = [((x - x2) ** 2 + (y - y2) ** 2) ** 0.5 for t2, p2, x2, y2 in points if p2 == panel and t2 != t]
        if min(others, default=1e9) > room:
            best, room = (x, y), min(others, default=1e9)
    assert best is not None and room > 12, f"trial {trial} has no point clear of the others ({room:.0f} px)"
    return best


def _move(driver, xy: tuple[float, float]):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    fronts = driver.find_element(By.ID, "fronts")
    return ActionChains(driver, duration=50).move_to_element_with_offset(fronts, round(xy[0]), round(xy[1]))


def _other_than_first(driver, expected: Expected) -> str:
    first = driver.execute_script("return JSON.parse(document.getElementById('fairray-data').textContent).first")
    others = sorted(t for t in expected.params if t != first)
    assert others, "the tiny sweep has two trials"
    return others[0]


# --- the tests --------------------------------------------------------------------------------------------------

def test_page_loads_clean_with_a_panel_per_language_and_gender(browser, page, expected):
    kind, url = page
    loaded = open_page(browser, url)
    assert loaded.errors == [], "\n".join(loaded.errors)
    if kind == "file":
        assert loaded.requests == [url]
    else:  # the page itself; its poll of /state (every 10 s) and the browser's own favicon.ico: same origin only
        assert loaded.requests[0] == url, loaded.requests
        assert set(loaded.requests) <= {url, url + "state", url + "favicon.ico"}, loaded.requests
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#fronts .annotation-text')).map(function (a) "
        "{ return a.textContent; })")
    assert [t.split(" · ")[0] for t in titles if " · HV" in t] == expected.panels
    drawn = browser.execute_script(
        "return Array.from(document.querySelectorAll('#fronts .cartesianlayer > .subplot')).map(function (s) "
        "{ return s.querySelectorAll('.scatterlayer path.point').length; })")
    assert len(drawn) == len(expected.panels) and all(n >= 1 for n in drawn), drawn


def test_hovering_a_point_shows_the_trials_hyperparameters(browser, page, expected):
    open_page(browser, page[1])
    trial = _other_than_first(browser, expected)
    _move(browser, _point_of(browser, trial)).perform()
    label = _wait(browser, "var h = document.querySelector('#fronts .hoverlayer .hovertext'); "
                           "return h ? h.textContent : null", "hover label")
    assert label.startswith(trial)
    for name, value in expected.params[trial].items():
        assert f"{name} = {_fmt(value)}" in label, (name, value, label)
    # ringed in every panel
    assert browser.execute_script("return document.body.dataset.highlighted") == f"{trial} {len(expected.panels)}"
    assert browser.execute_script("return document.querySelectorAll('#fronts .shapelayer path').length") == len(
        expected.panels)


def test_clicking_a_point_fills_the_detail_and_links_the_trials_run(browser, page, expected, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, page[1])
    trial = _other_than_first(browser, expected)
    _move(browser, _point_of(browser, trial)).click().perform()
    _wait(browser, f"return document.getElementById('detail-title').textContent.indexOf({trial!r}) === 0",
          "detail of the clicked trial")
    assert browser.execute_script("return location.hash") == f"#trial={trial}"
    params = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
              for row in browser.find_elements(By.CSS_SELECTOR, "#detail-params tr")}
    assert params == expected.params[trial]
    # the heat tables drawn, their cells the trial's logged metrics (as the page prints them, 3 decimals)
    metrics = expected.metrics[trial]
    for div, key in (("heat-utility", "dev/weighted_f1/gender:F/language:en"),
                     ("heat-gap", "dev/tpr_gap/gender/worst:language")):
        cells = _wait(browser, f"var c = document.querySelectorAll('#{div} .heatmap-label'); return c.length ? "
                               "Array.from(c).map(function (e) { return e.textContent; }) : null", div)
        assert f"{metrics[key]:.3f}" in cells, (div, key)
    curves = _wait(browser, "var a = document.querySelectorAll('#curves .annotation-text'); return a.length ? "
                            "Array.from(a).map(function (e) { return e.textContent; }) : null", "curves")
    assert set(curves) == expected.curves[trial]
    export = browser.find_element(By.ID, "detail-export").text
    assert export.startswith(("fairray export", "# not Pareto")) and f"--run-id {expected.sweep_run_id}" in export
    href = browser.find_element(By.ID, "detail-mlflow").get_attribute("href")
    assert href == f"{MLFLOW_UI}/#/experiments/{expected.experiment_id}/runs/{expected.run_ids[trial]}"
    # one screenshot per view, for a look
    views = {"fronts": "fronts", "detail": "detail-body", "parallel": "parallel"}
    for name, element_id in views.items():
        element = browser.find_element(By.ID, element_id)
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        if name == "parallel":  # drawn when scrolled near the viewport
            _wait(browser, "return document.getElementById('parallel').dataset.drawn === '1'", "parallel coordinates")
        shot = tmp_path / f"{page[0]}-{name}.png"
        element.screenshot(str(shot))
        _assert_picture(shot)
    errors = _loaded(browser).errors
    assert errors == [], "\n".join(errors)


def _assert_picture(path: Path) -> None:
    """A PNG of a drawn view: not blank (many colours), not a sliver."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        width, height = img.size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert width >= 400 and height >= 200, (path.name, img.size)
    assert colours is not None and len(colours) >= 30, (path.name, len(colours or []))


# --- MLflow's own UI --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_ui(tiny_sweep):
    """``fairray ui`` (MLflow's UI server) on the tiny sweep's store, on loopback; the link it prints."""
    proc = subprocess.Popen([*_cli(), "ui", "--tracking-uri", tiny_sweep.uri, "--port", str(MLFLOW_UI_PORT)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        link = _printed(proc, r"open (http://\S+)", "fairray ui")
        assert link.startswith(f"{MLFLOW_UI}/") and "workflowType=machine_learning" in link
        end = time.monotonic() + WAIT_S
        import urllib.request

        while True:  # MLflow answers /health after ~11 s here
            try:
                with urllib.request.urlopen(f"{MLFLOW_UI}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < end and proc.poll() is None, "MLflow's UI server did not come up"
            time.sleep(0.5)
        yield link
    finally:
        _stop(proc)


def _text_appears(driver, needle: str, what: str):
    _wait(driver, f"return document.body && document.body.innerText.indexOf({needle!r}) >= 0", what)


def test_mlflow_ui_opens_the_runs_table_with_objective_columns(browser, mlflow_ui, tiny_sweep, expected, tmp_path):
    note = MlflowClient(tiny_sweep.uri).get_run(expected.sweep_run_id).data.tags[NOTE_TAG]
    link = re.search(r"Runs table with the objectives as columns: (\S+)", note).group(1)
    link = re.sub(r"^http://[^/]+", MLFLOW_UI, link)  # the description names MLflow's default port
    browser.get(link)
    # the runs table (not the GenAI overview): the trials' names and the objectives as column headers
    for trial in expected.params:
        _text_appears(browser, trial, f"trial {trial} in the runs table")
    _text_appears(browser, "matching runs", "the runs table of the model-training workflow")
    _text_appears(browser, "dev/weighted_f1", "the objective column")
    text = browser.execute_script("return document.body.innerText")
    assert "dev/tpr_gap/gender/worst:language" in text
    browser.save_screenshot(str(tmp_path / "mlflow-runs.png"))
    _assert_picture(tmp_path / "mlflow-runs.png")
    # the dashboard's link to a trial opens that run's page
    trial = sorted(expected.params)[0]
    browser.get(f"{MLFLOW_UI}/#/experiments/{expected.experiment_id}/runs/{expected.run_ids[trial]}")
    _text_appears(browser, expected.run_ids[trial], "the trial's run page")
    _text_appears(browser, trial, "the trial's run name")

