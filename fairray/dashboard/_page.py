"""The explorer page: fronts side by side, a trial's detail, parallel coordinates, ablation tables.

One self-contained HTML document: plotly.js inline (from the plotly wheel), the figures as plotly JSON,
the trials' details as one JSON element read by ``page.js``. The only URLs in it are plain anchors to
the MLflow UI; a served page also polls ``state`` on its own origin.
"""

from __future__ import annotations

import html
import math
from importlib import resources

from fairray.dashboard._data import DashboardData, heat_tables
from fairray.dashboard._notes import places
from fairray.frontier.plot import (
    COMPARE_COLOR,
    FRONT_COLOR,
    TIE_MARK,
    embed_json,
    figure_div,
    fronts_figure,
    plotly_script,
)
from fairray.metrics import METRICS

POLL_MS = 10_000
"""How often a served page asks whether the sweep changed."""

_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:0 1.5rem 2rem;color:#222}
h1{font-size:1.35rem;margin:1rem 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
p.sub,li.note{color:#555;margin:.2rem 0}code{background:#f4f4f4;padding:0 .25rem;border-radius:3px}
#stale{background:#fff3cd;border:1px solid #e0c060;padding:.4rem .8rem;margin:.5rem 0}
table.params th{text-align:left;padding-right:1rem;font-weight:500;color:#444}
table.md{border-collapse:collapse;font-size:.85rem}table.md td,table.md th{border:1px solid #ddd;padding:.2rem .45rem}
table.md th{background:#f4f4f4}.detail-grid{display:grid;grid-template-columns:minmax(260px,1fr) 3fr;gap:1rem}
"""


def markdown_html(markdown: str) -> str:
    """``fairray report``'s markdown (headings, notes, pipe tables) as HTML, every cell escaped."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f'<table class="md"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(c and set(c) <= {"-", ":"} for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level, _, text = line.partition(" ")
            out.append(f"<p><b>{html.escape(text)}</b></p>" if level == "#" else f"<h4>{html.escape(text)}</h4>")
        elif line.strip():
            out.append(f'<p class="sub">{html.escape(line)}</p>')
    flush()
    return "\n".join(out)


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def parallel_figure(data: DashboardData):
    """Parallel coordinates: each searched hyperparameter (categorical ones as codes), then each objective
    of the overall front and whether the trial is Pareto-optimal; lines coloured by the first objective."""
    import plotly.graph_objects as go

    trials = data.sweep.trials
    front = data.fronts[0]
    dims = []
    for name in sorted({k for t in trials for k in t.params}):
        raw = [t.params.get(name) for t in trials]
        numbers = [_number(v) for v in raw]
        if all(n is not None for n in numbers):
            dims.append({"label": name, "values": numbers})
        else:
            levels = sorted({str(v) for v in raw})
            dims.append({"label": name, "values": [levels.index(str(v)) for v in raw],
                         "tickvals": list(range(len(levels))), "ticktext": levels})
    for j, key in enumerate(front.objectives):
        values = [float(v) if math.isfinite(v) else None for v in front.values[:, j]]
        dims.append({"label": key, "values": values})
    dims.append({"label": "Pareto-optimal", "values": [int(b) for b in front.on_front], "tickvals": [0, 1],
                 "ticktext": ["no", "yes"]})
    color = [float(v) if math.isfinite(v) else 0.0 for v in front.values[:, 0]]
    fig = go.Figure(go.Parcoords(dimensions=dims, line={"color": color, "colorscale": "Viridis", "showscale": True,
                                                        "colorbar": {"title": {"text": front.objectives[0]}}},
                                 meta={"role": "parallel"}))
    fig.update_layout(height=460, margin={"l": 80, "r": 80, "t": 60, "b": 30})
    return fig


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _heat_layouts(data: DashboardData) -> dict[str, dict]:
    """The heat tables' shared layout: every row any trial logged, in ``heat_tables``' order, with its metric
    keys and direction; a trial then carries only its values (``_heat_values``), not its own copy of the keys."""
    union = {k: 0.0 for t in data.sweep.trials for k in t.metrics}
    full = heat_tables(union, data.sweep.attribute, data.stratum, data.groups, data.strata)
    return {kind: {"x": t["x"], "y": t["y"], "keys": t["keys"],
                   "dirs": [METRICS[row.split("/", 1)[1]].direction for row in t["y"]]}
            for kind, t in full.items()}


def _heat_values(heat: dict[str, dict], layouts: dict[str, dict]) -> dict[str, list]:
    out = {}
    for kind, layout in layouts.items():
        rows = dict(zip(heat[kind]["y"], heat[kind]["z"], strict=True))
        out[kind] = [[_round(v) for v in rows[name]] if name in rows else None for name in layout["y"]]
    return out


def page_payload(data: DashboardData, *, served: bool = False, state: str = "") -> dict:
    """The JSON the page script reads: the heat tables' shared layout, every trial's detail (its heat values
    in that layout), the first trial to show, the refresh token."""
    overall = data.fronts[0]
    pareto = {t.trial_id for t, on in zip(overall.trials, overall.on_front, strict=True) if on}
    first = next((t.trial_id for t, on in zip(overall.trials, overall.on_front, strict=True) if on),
                 overall.trials[0].trial_id)
    layouts = _heat_layouts(data)
    trials = {}
    for tid, d in data.details.items():
        curves = {k: [steps, [_round(v, 6) for v in values]] for k, (steps, values) in d.curves.items()}
        trials[tid] = {"run_id": d.run_id, "method": d.method, "params": d.params, "url": d.url, "export": d.export,
                       "heat": _heat_values(d.heat, layouts), "curves": curves, "pareto": tid in pareto,
                       "places": places(data.panels, tid)}
    return {"heat": layouts, "trials": trials, "first": first, "served": served, "state": state,
            "poll_ms": POLL_MS}


def figure_json(fig) -> str:
    """A figure as JSON for a ``<script type="application/json">`` element (drawn later by the page script)."""
    import json

    import plotly.io as pio

    return embed_json(json.loads(pio.to_json(fig, validate=False)))


def build_page(data: DashboardData, *, served: bool = False, state: str = "") -> str:
    """The whole page as one HTML string (``served`` adds the refresh check against ``state``)."""
    sweep = data.sweep
    script = resources.files("fairray.dashboard").joinpath("page.js").read_text(encoding="utf-8")
    e = html.escape
    parent_url = f"{data.mlflow_ui.rstrip('/')}/#/experiments/{data.experiment_id}/runs/{sweep.run_id}"
    objectives = ", ".join(f"{k} ({d.value})" for k, d in sweep.objectives)
    compare = (f'; <span style="color:{COMPARE_COLOR}">◆ {e(data.compare_label)}</span>: its Pareto-optimal '
               "trials on the same objectives" if data.compare else "")
    notes = "".join(f'<li class="note">{e(n)}</li>' for n in data.notes)
    ablations = []
    for table in data.ablations:
        body = markdown_html(table.markdown) if table.markdown else ""
        ablations.append(f"<h3>{e(table.name)}</h3><p class=\"sub\">{e(table.note)}</p>{body}")
    ablation_html = "\n".join(ablations) or '<p class="sub">The spec declares no ablation.</p>'
    fronts = fronts_figure(list(data.panels), compare=data.compare, compare_label=data.compare_label)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>fairray — {e(sweep.experiment)}</title><style>{_CSS}</style>
{plotly_script()}</head>
<body id="fairray-body">
<h1>fairray — fairness explorer of sweep <code>{e(sweep.experiment)}</code></h1>
<p class="sub">{len(sweep.trials)} finished trials, {sweep.n_failed} failed or running; sweep run
<a href="{e(parent_url)}">{e(sweep.run_id)}</a> ({e(data.status)}) at <code>{e(sweep.tracking_uri)}</code>;
objectives {e(objectives)}.</p>
<p class="sub">Open again: <code>{e(data.command)}</code></p>
<ul>{notes}</ul>
<div id="stale" hidden>The sweep has changed since this page was built: <a href="">reload</a> (the selected
trial stays selected).</div>
<h2>Fronts per language and per gender</h2>
<p class="sub">Dev metrics restricted to each language or gender (a gap stays the gap between groups).
Grey: dominated trials; <span style="color:{FRONT_COLOR}">●</span> Pareto-optimal trials on their attainment
staircase with 95% speaker-bootstrap whiskers; {TIE_MARK}: its gap ties the next Pareto-optimal trial's within
noise{compare}. Hover a point to ring the trial in every panel; click it to show its detail.</p>
<p>Trial: <select id="trial-picker"></select></p>
{figure_div(fronts, "fronts")}
<h2>Trial <span id="detail-title"></span></h2>
<p id="detail-empty" class="sub">Click a point to show its trial.</p>
<div id="detail-body" hidden>
<p><a id="detail-mlflow" href="{e(parent_url)}">run in the MLflow UI</a> · export: <code id="detail-export"></code></p>
<div class="detail-grid"><div><table class="params" id="detail-params"></table><ul id="detail-places"></ul></div>
<div><div id="heat-utility"></div><div id="heat-gap"></div></div></div>
<h3>Over epochs</h3><div id="curves"></div>
</div>
<h2>Hyperparameters against objectives</h2>
<p class="sub">Drag along an axis to filter trials; objectives of the overall front.</p>
<div id="parallel" style="height:460px;width:100%"></div>
<script type="application/json" id="parallel-figure">{figure_json(parallel_figure(data))}</script>
<h2>Ablations declared in the spec (<code>fairray report</code>)</h2>
{ablation_html}
<script type="application/json" id="fairray-data">{embed_json(page_payload(data, served=served, state=state))}</script>
<script>{script}</script>
</body></html>
"""
