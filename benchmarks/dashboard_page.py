"""How fast the fairness explorer opens and hovers with a 500-trial sweep, measured in a real headless Chromium.

A sweep of 500 trials is not trained: a tiny real sweep (the minmaxgap spec, 2 trials of 2 epochs, real Ray,
Optuna and MLflow) gives two real trial runs, and the benchmark logs 500 trial runs of a new sweep from them
with the tracking code a sweep uses (:func:`fairray.tracking.start_sweep_run`, :class:`~fairray.tracking.TrialRun`):
hyperparameters sampled from the spec's search space, every metric of a template trial (per language x
gender, every epoch) jittered so the trials spread over a front, the template's logged predictions (so the
Pareto points get their speaker-bootstrap whiskers), FINISHED runs and the sweep's MLflow descriptions.

Then, side by side in one run:

- the server side: :func:`fairray.dashboard.collect` and :func:`~fairray.dashboard.build_page` on a cold cache
  (what ``fairray dashboard`` does once at start) and on a warm one (a rebuild while the sweep runs), the
  page's size;
- in Chromium via Selenium, for the page served by ``fairray dashboard`` on 127.0.0.1 and for the ``--out``
  file: time from navigation to the fronts drawn (every panel's markers in the DOM) and to the whole page
  ready (detail, heat tables, curves, parallel coordinates), the median of ``--loads`` loads;
- hover latency: a real pointer move (WebDriver actions) onto ``--hovers`` random trials' points, measured
  inside the page from the ``mousemove`` event to the frame after every panel ringed the trial; median, p95.

It prints figures and the ratio of each to the 2 s / one-frame budgets of issue 14; it asserts nothing about
speed (the figures depend on the machine and on its load).

    python benchmarks/dashboard_page.py [--trials 500] [--loads 3] [--hovers 50] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "search_spaces" / "minmaxgap.yaml"
EXPERIMENT = "dashboard-bench"


def tiny_real_sweep(tmp: Path) -> tuple[str, str, dict]:
    """The template: the minmaxgap spec, 2 trials (ERM and MinMaxGAP) of 2 epochs, run by ``fairray sweep``."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["train"]["epochs"] = 2
    raw["budget"].update(num_samples=2, max_concurrent=2, max_failures=0)
    raw["search"]["sampler"] = "random"
    raw["storage"]["path"] = str(tmp / "template")
    raw["ablations"] = {"tiny": {"seeds": [0], "cells": [{"method.name": ["erm", "minmaxgap"]}]}}
    spec = tmp / "template.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp / 'template' / 'mlflow.db'}"
    if (tmp / "template" / "mlflow.db").exists():  # --keep: reuse it
        return uri, raw["tracking"]["experiment"], raw
    out = subprocess.run([sys.executable, "-m", "fairray.cli", "sweep", str(spec), "--ablation", "tiny", "--quiet"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the template sweep failed:\n{out.stderr[-3000:]}")
    return uri, raw["tracking"]["experiment"], raw


def _sample(space: dict, rng: random.Random) -> dict[str, str]:
    """One point of a spec's ``search.space`` (uniform, loguniform, int, categorical), as MLflow params."""
    out = {}
    for key, dist in space.items():
        kind = dist["type"]
        if kind == "categorical":
            value = rng.choice(dist["choices"])
        elif kind == "int":
            lo, hi = int(dist["low"]), int(dist["high"])
            value = (round(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if dist.get("log")
                     else rng.randint(lo, hi))
        elif kind == "loguniform":
            value = math.exp(rng.uniform(math.log(float(dist["low"])), math.log(float(dist["high"]))))
        else:
            value = rng.uniform(float(dist["low"]), float(dist["high"]))
        out[key] = str(value)
    return out


def synthesize_sweep(template_uri: str, template_experiment: str, raw: dict, dest: Path, n_trials: int,
                     seed: int = 0) -> tuple[str, str]:
    """Log a sweep of ``n_trials`` FINISHED trial runs into a new store under ``dest``, from the template's
    trials (see the module docstring); returns ``(tracking_uri, experiment)``."""
    import numpy as np
    from mlflow.entities import Metric

    from fairray.dashboard import annotate_sweep
    from fairray.metrics import MetricKey
    from fairray.tracking import TrialRun, client, end_run, ensure_experiment, start_sweep_run
    from fairray.tracking._mlflow import TAG_METHOD, TAG_SEARCHED

    src = client(template_uri)
    exp = src.get_experiment_by_name(template_experiment)
    templates = [r for r in src.search_runs([exp.experiment_id], filter_string="tags.`fairray.kind` = 'trial'")
                 if r.info.status == "FINISHED"]
    if not templates:
        raise SystemExit(f"no finished trial in {template_uri}")
    histories, predictions = [], []
    for r in templates:
        hist = {k: sorted(src.get_metric_history(r.info.run_id, k), key=lambda m: m.step) for k in r.data.metrics}
        histories.append(hist)
        pred = dest / "templates" / r.info.run_id
        pred.mkdir(parents=True)
        src.download_artifacts(r.info.run_id, "predictions", str(pred))
        src.download_artifacts(r.info.run_id, "groups", str(pred))
        predictions.append(pred)
    storage = dest / "runs"
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    storage.mkdir(parents=True)
    spec = {k: v for k, v in raw.items() if k != "ablations"}
    spec["tracking"] = {**spec["tracking"], "experiment": EXPERIMENT}
    spec["storage"] = {"path": str(storage)}
    spec["budget"] = {**spec["budget"], "num_samples": n_trials}
    objectives = [(o["metric"], o["direction"]) for o in spec["search"]["objectives"]]
    exp_id = ensure_experiment(uri, EXPERIMENT, str(storage))
    parent = start_sweep_run(uri, exp_id, EXPERIMENT, str(storage), spec, objectives)
    rng = random.Random(seed)
    c = client(uri)
    searched = json.dumps(sorted(spec["search"]["space"]))
    for i in range(n_trials):
        k = rng.randrange(len(templates))
        template, hist = templates[k], histories[k]
        params = dict(template.data.params)
        params.update(_sample(spec["search"]["space"], rng))
        # spread the trials over a front: utilities scaled together, gaps by their own factor
        utility, gap = rng.uniform(0.75, 1.12), rng.uniform(0.3, 1.6)
        trial_id = f"{i:05d}_{rng.getrandbits(24):06x}"
        run = TrialRun.open(uri, exp_id, parent.run_id, trial_id,
                            {TAG_METHOD: params.get("method.name", ""), TAG_SEARCHED: searched}, params)
        metrics = []
        for key, points in hist.items():
            try:
                factor = gap if MetricKey.parse(key).is_gap else utility
            except ValueError:
                factor = 1.0
            for m in points:
                value = m.value * factor if math.isfinite(m.value) else m.value
                metrics.append(Metric(key, float(np.clip(value, 0.0, 1.0)) if 0 <= m.value <= 1 else value,
                                      m.timestamp, m.step))
        for j in range(0, len(metrics), 900):
            c.log_batch(run.run_id, metrics=metrics[j:j + 900])
        run.log_artifacts(predictions[k] / "predictions", "predictions")
        run.log_artifacts(predictions[k] / "groups", "groups")
        run.finish()
    end_run(uri, parent.run_id, "FINISHED")
    annotate_sweep(uri, EXPERIMENT, parent.run_id)
    return uri, EXPERIMENT


# --- the browser --------------------------------------------------------------------------------------------

FRONTS_DRAWN = """
var f = document.getElementById('fronts');
return !!(f && f._fullLayout && f.querySelectorAll('.subplot').length > 0 && f.querySelectorAll('.scatterlayer .trace').length > 0);
"""

# Installed before the page's scripts run (CDP Page.addScriptToEvaluateOnNewDocument): when the fronts are first
# drawn and when the page's script says it is ready; and the hover probe.
PROBE = """
(function () {
  window.__fr = {hovers: []};
  new MutationObserver(function () {
    var f = document.getElementById('fronts');
    if (!window.__fr.fronts && f && f.querySelector('.scatterlayer .trace .points path')) window.__fr.fronts = performance.now();
    if (!window.__fr.ready && document.body && document.body.dataset.ready === '1') window.__fr.ready = performance.now();
  }).observe(document, {subtree: true, childList: true, attributes: true});
  var lastMove = 0;
  document.addEventListener('mousemove', function (e) { lastMove = performance.now(); }, true);
  new MutationObserver(function (records) {
    records.forEach(function (r) {
      if (r.attributeName !== 'data-highlighted') return;
      var t0 = lastMove, value = document.body.dataset.highlighted;
      requestAnimationFrame(function () { window.__fr.hovers.push([value, performance.now() - t0]); });
    });
  }).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-highlighted']});
})();
"""


def chrome(width: int = 1500, height: int = 1100):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader",
                 f"--window-size={width},{height}", "--disable-background-networking", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    return driver


def time_load(driver, url: str, timeout: float = 120.0) -> dict[str, float]:
    """Milliseconds from navigation start to the fronts drawn and to the page ready, in the page's own clock."""
    driver.get("about:blank")
    driver.get(url)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = driver.execute_script("return window.__fr && window.__fr.ready && window.__fr.fronts ? window.__fr : null")
        if got:
            return {"fronts_ms": got["fronts"], "ready_ms": got["ready"]}
        time.sleep(0.02)
    raise SystemExit(f"{url}: not ready after {timeout} s")


POINTS = """
// every plotted marker of the fronts: [trial, panel, x px, y px] relative to the graph div's centre
var f = document.getElementById('fronts'), L = f._fullLayout, out = [], box = f.getBoundingClientRect();
f._fullData.forEach(function (t) {
  if (!t.meta || (t.meta.role !== 'front' && t.meta.role !== 'dominated')) return;
  var xa = L[t.xaxis.replace('x', 'xaxis')], ya = L[t.yaxis.replace('y', 'yaxis')];
  for (var k = 0; k < t.x.length; k++) {
    out.push([t.customdata[k], t.meta.panel, xa._offset + xa.l2p(t.x[k]) - box.width / 2,
              ya._offset + ya.l2p(t.y[k]) - box.height / 2]);
  }
});
return out;
"""


def time_hovers(driver, n: int, seed: int = 0) -> list[float]:
    """Hover latencies (ms) of ``n`` random points reached by a real pointer move."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    fronts = driver.find_element(By.ID, "fronts")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", fronts)
    points = driver.execute_script(POINTS)
    rng = random.Random(seed)
    picked = rng.sample(points, min(n, len(points)))
    latencies = []
    for trial, _panel, dx, dy in picked:
        driver.execute_script("window.__fr.hovers = []")
        ActionChains(driver, duration=0).move_to_element_with_offset(fronts, int(dx), int(dy)).perform()
        end = time.monotonic() + 10
        while time.monotonic() < end:
            got = driver.execute_script("return window.__fr.hovers")
            hit = [ms for value, ms in got if value.split(" ")[0] == trial]
            if hit:
                latencies.append(hit[0])
                break
            time.sleep(0.01)
        # leave the point (the plot's empty top margin) so the next move is a new hover
        ActionChains(driver, duration=0).move_to_element_with_offset(fronts, 0, -int(fronts.size["height"] / 2) + 5
                                                                     ).perform()
    return latencies


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--loads", type=int, default=3, help="page loads per variant (median reported)")
    ap.add_argument("--hovers", type=int, default=50)
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates of the whiskers (as the CLI)")
    ap.add_argument("--keep", metavar="DIR", help="build the store in DIR and keep it (reused when it exists)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the whiskers read 40-odd predictions

    from fairray.dashboard import Cache, DashboardApp, build_page, collect, make_server

    tmp_ctx = tempfile.TemporaryDirectory(prefix="fairray-dash-bench-") if not args.keep else None
    tmp = Path(args.keep or tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp / 'bench' / 'runs' / 'mlflow.db'}"
    if not (tmp / "bench" / "runs" / "mlflow.db").exists():
        t0 = time.perf_counter()
        template_uri, template_exp, raw = tiny_real_sweep(tmp)
        t1 = time.perf_counter()
        uri, _ = synthesize_sweep(template_uri, template_exp, raw, tmp / "bench", args.trials)
        t2 = time.perf_counter()
        print(f"store: template sweep (2 real trials) {t1 - t0:.0f} s; {args.trials} trial runs logged in "
              f"{t2 - t1:.0f} s")

    print("load average before: {:.2f} {:.2f} {:.2f} (1, 5, 15 min; {} cores)".format(*os.getloadavg(), os.cpu_count()))
    cache = Cache()
    t0 = time.perf_counter()
    data = collect(uri, EXPERIMENT, n_boot=args.n_boot, cache=cache)
    t1 = time.perf_counter()
    page = build_page(data)
    t2 = time.perf_counter()
    collect(uri, EXPERIMENT, n_boot=args.n_boot, cache=cache)
    t3 = time.perf_counter()
    collect(uri, EXPERIMENT, n_boot=0, cache=Cache())  # what the cold read costs besides the intervals
    t4 = time.perf_counter()
    n = len(data.sweep.trials)
    print(f"server: {n} trials, {len(data.panels)} panels; collect {t1 - t0:.2f} s cold ({t4 - t3:.2f} s of it "
          f"without the intervals, --n-boot 0, imports warm), {t3 - t2:.2f} s warm cache; build_page "
          f"{t2 - t1:.2f} s; page {len(page.encode()) / 1e6:.1f} MB")
    out = tmp / "dashboard.html"
    out.write_text(page, encoding="utf-8")

    app = DashboardApp(uri, EXPERIMENT, n_boot=args.n_boot)
    app.page()
    server = make_server(app, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served = f"http://127.0.0.1:{server.server_address[1]}/"
    driver = chrome()
    try:
        for name, url in (("served", served), ("--out file", out.as_uri())):
            loads = [time_load(driver, url) for _ in range(args.loads)]
            fronts = statistics.median(x["fronts_ms"] for x in loads)
            ready = statistics.median(x["ready_ms"] for x in loads)
            print(f"browser, {name}: fronts drawn {fronts:.0f} ms, page ready {ready:.0f} ms (median of "
                  f"{args.loads}; {ready / 2000:.2f} x the 2 s budget)")
        lat = time_hovers(driver, args.hovers)
        if lat:
            print(f"hover: {len(lat)} of {args.hovers} points hit; latency median {statistics.median(lat):.0f} ms, "
                  f"p95 {_p(lat, 0.95):.0f} ms, max {max(lat):.0f} ms ({statistics.median(lat) / (1000 / 60):.1f} "
                  "frames of 60 Hz at the median)")
        else:
            print(f"hover: none of {args.hovers} pointer moves rang a trial")
    finally:
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        driver.quit()
        server.shutdown()
        server.server_close()
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
