"""The written page in a real headless Chromium: it draws one plot per panel, the selected trial is ringed in
every panel and fills the detail, the MLflow link is the trial's run, and the page makes no network request.

Skipped where Debian's ``chromium`` is absent, except in CI (``FAIRRAY_REQUIRE_BROWSER=1``, set by ``.ci/run``,
which installs it). Requests are read from Chromium's own net log: a request the page starts carries the page
as initiator, the browser's background requests (updates, accounts) do not.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fairray.cli import main

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("FAIRRAY_REQUIRE_BROWSER") == "1":
    raise RuntimeError("FAIRRAY_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install -y chromium)")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
DATA_RE = re.compile(r'<script type="application/json" id="fairray-data">(.*?)</script>', re.S)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _chromium(url: str, tmp: Path, *extra: str) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the http(s) URLs the page itself requested."""
    netlog = tmp / f"net-{len(list(tmp.glob('net-*')))}.json"
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=15000",
                          f"--log-net-log={netlog}", *extra, url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    events = json.loads(netlog.read_text()).get("events", [])
    requested = [e["params"]["url"] for e in events
                 if "url" in e.get("params", {}) and "initiator" in e["params"]
                 and e["params"]["initiator"] != "not an origin" and e["params"]["url"].startswith("http")]
    return out.stdout, requested


def _attr(dom: str, element_id: str, name: str) -> str:
    tag = re.search(rf'<[^>]*\bid="{element_id}"[^>]*>', dom)
    assert tag, element_id
    found = re.search(rf'\b{name}="([^"]*)"', tag.group(0))
    return html.unescape(found.group(1)) if found else ""


@needs_browser
def test_net_log_sees_a_request_the_page_makes(tmp_path):
    page = tmp_path / "probe.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/probe.png"></body></html>')
    _, requested = _chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert "http://127.0.0.1:9/probe.png" in requested  # the detector works, so an empty list means something


@needs_browser
def test_page_renders_links_the_panels_and_requests_nothing(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "dashboard.html"
    assert main(["dashboard", str(tiny_sweep.spec), "--ablation", tiny_sweep.ablation, "--out", str(out),
                 "--n-boot", "40"]) == 0
    capsys.readouterr()
    payload = json.loads(DATA_RE.findall(out.read_text(encoding="utf-8"))[0])
    trial = sorted(payload["trials"])[-1]
    dom, requested = _chromium(f"{out.as_uri()}#trial={trial}", tmp_path, "--dump-dom")
    assert requested == []
    assert _attr(dom, "fairray-body", "data-ready") == "1"
    # ringed in all six panels (every trial of this sweep has finite values in each), the detail filled
    assert _attr(dom, "fairray-body", "data-highlighted") == f"{trial} 6"
    assert re.search(rf'id="detail-title">{re.escape(trial)} \(', dom)
    assert _attr(dom, "detail-mlflow", "href") == payload["trials"][trial]["url"]
    assert payload["trials"][trial]["run_id"] in payload["trials"][trial]["url"]
    fronts = dom[dom.index('id="fronts"'):dom.index('id="detail-title"')]
    for title in ("all", "language=de", "language=en", "language=pl", "gender=F", "gender=M"):
        assert f">{title} · HV" in fronts  # plotly drew each subplot's title
    for div in ("heat-utility", "heat-gap", "curves", "parallel"):
        section = dom[dom.index(f'id="{div}"'):]
        assert "main-svg" in section[:20000], div  # a drawn plotly figure, not an empty div
    shot = tmp_path / "dashboard.png"
    _chromium(f"{out.as_uri()}#trial={trial}", tmp_path, "--window-size=1400,2400", f"--screenshot={shot}")
    assert shot.stat().st_size > 50_000  # saved for a look: a page of plots, not a blank one
