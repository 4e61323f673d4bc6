"""The frontier page: self-contained, escaped, data round-trips, template found installed or not."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fairray.frontier import plot
from fairray.frontier.plot import FrontPanel, FrontPoint, render_frontier_html, write_frontier_html

EVIL = "</script><script>alert(1)</script>"
DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
DATA_RE = re.compile(r'<script type="application/json" id="frontier-data">(.*?)</script>', re.S)


def _panels() -> list[FrontPanel]:
    two = FrontPanel(
        title="English",
        objectives=("macro_recall", "recall_gap"),
        directions=("maximize", "min"),
        points=(
            FrontPoint(
                "t-001", (0.61, 0.08), True, {"lr": 1e-3, "method": "group_dro", "note": EVIL}, {"dev_loss": 0.9}
            ),
            FrontPoint("t-002", (0.55, 0.12), False, {"lr": np.float32(0.5), "method": "erm", "eta": np.int64(3)}),
            FrontPoint("t-003", (float("nan"), 0.01), False, {"lr": 2e-4, "path": Path("/x")}),
            FrontPoint("t-004", (0.70, float("inf")), False, {"flag": np.bool_(True), "nan_param": float("nan")}),
        ),
        hypervolume=0.5612,
        reference=(0.0, 1.0),
    )
    three = FrontPanel(
        title="German",
        objectives=("macro_recall", "recall_gap", "ece"),
        directions=("max", "min", "min"),
        points=(FrontPoint("g-1", (0.5, 0.1, 0.2), True, {"alpha": 0.3}),),
        hypervolume=0.1234,
        reference=(0.0, 1.0, 1.0),
    )
    return [two, three]


def _payload(page: str) -> dict:
    found = DATA_RE.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


def test_page_is_self_contained() -> None:
    page = render_frontier_html(_panels(), title="Sweep 7")
    assert "http://" not in page
    assert "https://" not in page
    assert re.search(r"\b(src|href)\s*=", page) is None
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page


def test_page_contains_every_trial_id_and_param_name() -> None:
    page = render_frontier_html(_panels(), title="Sweep 7")
    for panel in _panels():
        assert panel.title in page
        for point in panel.points:
            assert point.trial in page
            for name in [*point.params, *point.extra]:
                assert name in page


def test_malicious_strings_cannot_break_out() -> None:
    template = plot._load_template()
    page = render_frontier_html(_panels(), title=EVIL, subtitle="<b>x</b> & y")
    assert EVIL not in page
    assert "<script>alert" not in page
    assert page.lower().count("</script") == template.lower().count("</script")
    assert "<" not in DATA_RE.findall(page)[0]  # not even "</" or "<!--" inside the payload
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page  # the title, HTML-escaped
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page
    # ... and the param value survives exactly once decoded.
    assert _payload(page)["panels"][0]["points"][0]["params"]["note"] == EVIL


def test_embedded_json_round_trips_the_numbers() -> None:
    panels = _panels()
    data = _payload(render_frontier_html(panels, title="Sweep 7"))
    assert len(data["panels"]) == len(panels)
    for got, panel in zip(data["panels"], panels, strict=True):
        assert got["title"] == panel.title
        assert got["objectives"] == list(panel.objectives)
        assert got["hypervolume"] == panel.hypervolume
        assert got["reference"] == list(panel.reference)
        for got_point, point in zip(got["points"], panel.points, strict=True):
            assert got_point["trial"] == point.trial
            assert got_point["on_front"] is point.on_front
            decoded = [float(v) for v in got_point["values"]]  # "NaN"/"Infinity" read back by float()
            for a, b in zip(decoded, point.values, strict=True):
                assert (math.isnan(a) and math.isnan(b)) or a == b
            assert got_point["extra"] == dict(point.extra)
    first = data["panels"][0]
    assert first["directions"] == ["max", "min"]  # spellings normalised by Direction.parse
    assert first["points"][1]["params"] == {"lr": 0.5, "method": "erm", "eta": 3}
    assert first["points"][2]["params"]["path"] == "/x"
    assert first["points"][3]["params"] == {"flag": True, "nan_param": "NaN"}
    assert first["points"][3]["values"] == [0.7, "Infinity"]


def test_placeholders_are_filled_in_one_pass() -> None:
    page = render_frontier_html([], title="{{DATA}}", subtitle="{{TITLE}}")
    assert _payload(page) == {"panels": []}
    assert "<h1>{{DATA}}</h1><p>{{TITLE}}</p>" in page


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"directions": ("max",)}, "one direction per objective"),
        ({"objectives": (), "directions": ()}, "at least one objective"),
        ({"reference": (0.0,)}, "reference point needs 2 coordinates"),
        ({"points": (FrontPoint("bad", (0.1,), False, {}),)}, "trial 'bad' with values"),
        ({"directions": ("max", "down")}, "'down'"),
    ],
)
def test_inconsistent_panels_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_frontier_html([dataclasses.replace(_panels()[0], **change)], title="t")


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "out" / "frontier.html"
    target.parent.mkdir()
    target.write_text("old")
    write_frontier_html(target, _panels(), title="Sweep 7", subtitle="s")
    assert target.read_text(encoding="utf-8") == render_frontier_html(_panels(), title="Sweep 7", subtitle="s")
    assert [p.name for p in target.parent.iterdir()] == ["frontier.html"]  # no temp file left behind


def test_template_from_source_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fairray.dashboards", None)  # import now raises ModuleNotFoundError
    assert plot._load_template() == (DASHBOARDS / "frontier.html").read_text(encoding="utf-8")


def test_template_from_installed_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package = tmp_path / "dashboards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    marked = "<!-- installed copy -->" + (DASHBOARDS / "frontier.html").read_text(encoding="utf-8")
    (package / "frontier.html").write_text(marked, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(
        "fairray.dashboards", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "fairray.dashboards", module)
    assert render_frontier_html([], title="t").startswith("<!-- installed copy -->")


# A few lines of fake DOM, enough to run the page's script under node and count what it draws.
_NODE_SHIM = r"""
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
class N {
  constructor(tag, ns) { this.tag = tag; this.namespaceURI = ns; this.attrs = {}; this.kids = []; this.on = {};
                         this.style = {}; this.text = ""; this.hidden = false; this.offsetWidth = 200; }
  setAttribute(k, v) { this.attrs[k] = String(v); if (k === "hidden") this.hidden = true; }
  appendChild(c) { this.kids.push(c); return c; }
  append(...cs) { cs.forEach((c) => this.appendChild(typeof c === "string" ? Object.assign(new N("#"), { text: c }) : c)); }
  replaceChildren(...cs) { this.kids = []; this.append(...cs); }
  set textContent(t) { this.kids = []; this.text = String(t); }
  get textContent() { return this.text + this.kids.map((k) => k.textContent).join(""); }
  addEventListener(ev, f) { (this.on[ev] = this.on[ev] || []).push(f); }
  cloneNode() { const n = new N(this.tag, this.namespaceURI); n.attrs = { ...this.attrs }; return n; }
  getBoundingClientRect() { return { left: 0, right: 10, top: 0, bottom: 10, width: 460 }; }
  all(tag) { return (this.tag === tag ? [this] : []).concat(...this.kids.map((k) => k.all(tag))); }
}
const ids = {
  "frontier-data": { textContent: page.match(/id="frontier-data">([\s\S]*?)<\/script>/)[1] },
  panels: new N("main"),
  "plot-svg": { content: { firstElementChild: new N("svg", "svg-ns") } },
};
global.document = { getElementById: (id) => ids[id], createElement: (t) => new N(t), createElementNS: (ns, t) => new N(t, ns) };
for (const m of page.matchAll(/<script>([\s\S]*?)<\/script>/g)) eval(m[1]);
const circles = ids.panels.all("circle");
circles[circles.length - 1].on.focus[0]();
const tip = ids.panels.all("div").find((d) => d.attrs.class === "tip" && !d.hidden);
console.log(JSON.stringify({ panels: ids.panels.all("section").length, svgs: ids.panels.all("svg").length,
  circles: circles.length, steps: ids.panels.all("path").length, tip: tip.textContent,
  notes: ids.panels.all("span").map((s) => s.textContent) }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_page_script_runs_and_draws_each_plottable_point(tmp_path: Path) -> None:
    panels = _panels()
    panels[0] = dataclasses.replace(panels[0], points=(*panels[0].points, FrontPoint("t-005", (0.5, 0.05), True, {})))
    page = tmp_path / "page.html"
    write_frontier_html(page, panels, title="Sweep 7")
    script = tmp_path / "shim.js"
    script.write_text(_NODE_SHIM)
    out = subprocess.run(["node", str(script), str(page)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    drawn = json.loads(out.stdout)
    assert drawn["panels"] == 2
    assert drawn["svgs"] == 2
    assert drawn["circles"] == 3 + 1  # English: t-001, t-002, t-005 (NaN and inf rows left out); German: g-1
    assert drawn["steps"] == 1  # the staircase, only on the 2-objective panel with 2+ front points
    assert "1 invalid trial (NaN) not shown" in drawn["notes"]
    assert "1 trial with ±∞ not shown" in drawn["notes"]
    assert any("all 3 objectives" in n for n in drawn["notes"])
    # Focus on the last point drawn (German g-1) shows its id, objectives and hyperparameters.
    assert drawn["tip"].startswith("trial g-1")
    for text in ("ece", "alpha", "0.3"):
        assert text in drawn["tip"]
