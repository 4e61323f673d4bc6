"""Pareto fronts as plotly figures, and ``fairray frontier --plot``'s self-contained page.

A :class:`FrontPanel` is one plot (one language, one gender, or the whole sweep): its objectives, their
directions and every trial as a :class:`FrontPoint`. :func:`fronts_figure` draws panels side by side —
dominated trials in grey, the front as points on its attainment staircase with their speaker-bootstrap
interval whiskers and ``~`` where a point ties its neighbour within noise, another sweep's front as
diamonds (``compare``) and an empty "selected" trace per panel that the dashboard's script fills. Every
plotted marker carries its trial id in ``customdata``, so a script can find one trial in every panel.

The page embeds plotly.js (from the plotly wheel): it opens offline and makes no network request.
:func:`fairray.dashboard.build_page` builds the full explorer on the same figure.

Example
-------
>>> point = FrontPoint(trial="t1", values=(0.61, 0.08), on_front=True, params={"lr": 1e-3})
>>> panel = FrontPanel(title="en", objectives=("dev/macro_f1", "dev/tpr_gap/gender"), directions=("max", "min"),
...                    points=(point,), hypervolume=0.5612, reference=(0.0, 1.0))
>>> "t1" in render_frontier_html([panel], title="Sweep 42")
True
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairray._atomic import atomic_write_text
from fairray.frontier.pareto import Direction

__all__ = [
    "FrontPanel",
    "FrontPoint",
    "axes_of",
    "embed_json",
    "figure_div",
    "front_panel",
    "fronts_figure",
    "plotly_script",
    "render_frontier_html",
    "write_frontier_html",
]

FRONT_COLOR = "#1b6ca8"
COMPARE_COLOR = "#d1495b"
DOMINATED_COLOR = "#b0b0b0"
HIGHLIGHT_COLOR = "#f4a261"
TIE_MARK = "~"
_MAX_COLUMNS = 4  # panels per row


@dataclass(frozen=True)
class FrontPoint:
    """One trial in a panel: its objective values (in panel order), front membership and settings.

    ``intervals`` holds one ``(lo, hi)`` speaker-bootstrap interval per objective (None where not computed);
    ``tie`` is True when the point's gap differs from the next Pareto-optimal trial's only within noise.
    """

    trial: str
    values: tuple[float, ...]
    on_front: bool
    params: Mapping[str, object]
    extra: Mapping[str, float | str] = field(default_factory=dict)
    intervals: tuple[tuple[float, float] | None, ...] | None = None
    tie: bool = False


@dataclass(frozen=True)
class FrontPanel:
    """One plot, e.g. one language: the objectives, their directions and every trial.

    ``hypervolume`` and ``reference`` are shown in the panel title; ``reference`` is in the objectives' own
    units, as :func:`fairray.frontier.pareto.hypervolume` takes it.
    """

    title: str
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    points: tuple[FrontPoint, ...]
    hypervolume: float
    reference: tuple[float, ...]


def _check(panel: FrontPanel) -> tuple[Direction, ...]:
    n_obj = len(panel.objectives)
    if n_obj < 2 or len(panel.directions) != n_obj:
        raise ValueError(
            f"panel {panel.title!r} needs one direction per objective and at least two objectives; "
            f"got objectives {list(panel.objectives)} and directions {list(panel.directions)}"
        )
    if len(panel.reference) != n_obj:
        raise ValueError(
            f"panel {panel.title!r}: the reference point needs {n_obj} coordinates, one per objective; "
            f"got {list(panel.reference)}"
        )
    for point in panel.points:
        if len(point.values) != n_obj:
            raise ValueError(
                f"panel {panel.title!r}: every point needs {n_obj} values, one per objective; "
                f"got trial {point.trial!r} with values {list(point.values)}"
            )
        if point.intervals is not None and len(point.intervals) != n_obj:
            raise ValueError(
                f"panel {panel.title!r}: trial {point.trial!r} needs one interval (or None) per objective; "
                f"got {list(point.intervals)}"
            )
    return tuple(Direction.parse(d) for d in panel.directions)


def axes_of(objectives: Sequence[str]) -> tuple[int, int]:
    """Objective indices on (x, y): the gap on x and the utility on y when the first two are one of each
    (upper left is better for a maximised utility and a minimised gap), else the first two in order."""
    from fairray.metrics import MetricKey

    def is_gap(key: str) -> bool:
        try:
            return MetricKey.parse(key).is_gap
        except ValueError:
            return False

    if len(objectives) >= 2 and is_gap(objectives[0]) != is_gap(objectives[1]):
        return (0, 1) if is_gap(objectives[0]) else (1, 0)
    return 0, 1


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        return f"{float(str(value)):.4g}" if "." in str(value) else str(value)
    except ValueError:
        return str(value)


def _hover(panel: FrontPanel, point: FrontPoint, label: str = "") -> str:
    lines = [f"<b>{html.escape(label + point.trial)}</b>" + (" (Pareto-optimal)" if point.on_front else "")]
    for j, key in enumerate(panel.objectives):
        text = f"{html.escape(key)} = {point.values[j]:.4f}"
        iv = point.intervals[j] if point.intervals else None
        if iv is not None and _finite(iv):
            text += f" [{iv[0]:.4f}, {iv[1]:.4f}]"
        lines.append(text)
    if point.tie:
        lines.append(f"{TIE_MARK} gap within noise of the next Pareto-optimal trial")
    lines += [f"{html.escape(str(k))} = {html.escape(_fmt(v))}" for k, v in sorted(point.params.items())]
    lines += [f"{html.escape(str(k))}: {html.escape(_fmt(v))}" for k, v in point.extra.items() if k != "run_id"]
    return "<br>".join(lines)


def _staircase(xs: list[float], ys: list[float], x_dir: Direction) -> tuple[list[float], list[float]]:
    """The attainment staircase through the front points (sorted by x): for a minimised x each step goes
    right at the point's y and then to the next point's y ('hv'), for a maximised x the other way ('vh')."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out_x, out_y = [], []
    for a, b in zip(order, order[1:], strict=False):
        out_x += [xs[a], xs[b] if x_dir is Direction.MIN else xs[a]]
        out_y += [ys[a], ys[a] if x_dir is Direction.MIN else ys[b]]
    if order:
        out_x.append(xs[order[-1]])
        out_y.append(ys[order[-1]])
    return out_x, out_y


def _whiskers(points: Sequence[FrontPoint], j: int) -> dict[str, Any] | None:
    """plotly ``error_x``/``error_y`` of objective ``j``: the interval's distance to the plotted value."""
    if not any(p.intervals and p.intervals[j] is not None and _finite(p.intervals[j]) for p in points):
        return None
    plus, minus = [], []
    for p in points:
        iv = p.intervals[j] if p.intervals else None
        ok = iv is not None and _finite(iv)
        plus.append(max(iv[1] - p.values[j], 0.0) if ok else float("nan"))
        minus.append(max(p.values[j] - iv[0], 0.0) if ok else float("nan"))
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1.2, "width": 3,
            "color": FRONT_COLOR}


def fronts_figure(panels: Sequence[FrontPanel], *, compare: Mapping[str, FrontPanel] | None = None,
                  compare_label: str = "other sweep", height_per_row: int = 340):
    """One subplot per panel, in order; ``compare`` maps a panel title to another sweep's panel on the same
    objectives, whose Pareto-optimal points are drawn on the same axes.

    Each trace's ``meta`` is ``{"panel": i, "role": ...}`` with role ``dominated``, ``front``, ``staircase``,
    ``compare``, ``compare-staircase`` or ``selected``; markers carry their trial id as ``customdata``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    directions = [_check(p) for p in panels]
    n = max(len(panels), 1)
    cols = min(n, _MAX_COLUMNS)
    rows = math.ceil(n / cols)
    titles = []
    for panel in panels:
        dropped = sum(not _finite(p.values) for p in panel.points)
        note = f" · {dropped} not finite" if dropped else ""
        more = f" · first 2 of {len(panel.objectives)} objectives" if len(panel.objectives) > 2 else ""
        hv = f"HV {panel.hypervolume:.4f}" if math.isfinite(panel.hypervolume) else "HV n/a"
        titles.append(f"{html.escape(panel.title)} · {hv}{note}{more}")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or None, horizontal_spacing=0.07,
                        vertical_spacing=0.16 if rows > 1 else 0.1)
    for i, (panel, dirs) in enumerate(zip(panels, directions, strict=True)):
        row, col = divmod(i, cols)
        where = {"row": row + 1, "col": col + 1}
        ix, iy = axes_of(panel.objectives)
        plotted = [p for p in panel.points if _finite(p.values)]
        dominated = [p for p in plotted if not p.on_front]
        front = [p for p in plotted if p.on_front]

        def marker_trace(pts, role, name, marker, legend, panel=panel, ix=ix, iy=iy, i=i, label="", **kw):
            return go.Scatter(
                x=[p.values[ix] for p in pts], y=[p.values[iy] for p in pts], customdata=[p.trial for p in pts],
                hovertext=[_hover(panel, p, label) for p in pts], hovertemplate="%{hovertext}<extra></extra>",
                name=name, legendgroup=role, showlegend=legend, marker=marker, meta={"panel": i, "role": role}, **kw)

        fig.add_trace(marker_trace(dominated, "dominated", "dominated trials",
                                   {"color": DOMINATED_COLOR, "size": 7}, i == 0, mode="markers"), **where)
        sx, sy = _staircase([p.values[ix] for p in front], [p.values[iy] for p in front], dirs[ix])
        fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line={"color": FRONT_COLOR, "width": 1.5},
                                 hoverinfo="skip", showlegend=False, legendgroup="front",
                                 meta={"panel": i, "role": "staircase"}), **where)
        fig.add_trace(marker_trace(front, "front", "Pareto-optimal (95% speaker-bootstrap CI)",
                                   {"color": FRONT_COLOR, "size": 9}, i == 0, mode="markers+text",
                                   text=[TIE_MARK if p.tie else "" for p in front], textposition="top right",
                                   textfont={"size": 16, "color": FRONT_COLOR},
                                   error_x=_whiskers(front, ix), error_y=_whiskers(front, iy)), **where)
        other = (compare or {}).get(panel.title)
        if other is not None:
            other_dirs = _check(other)
            if tuple(other.objectives) != tuple(panel.objectives):
                raise ValueError(f"panel {panel.title!r}: the compared front has objectives {list(other.objectives)}, "
                                 f"not {list(panel.objectives)}")
            ofront = [p for p in other.points if p.on_front and _finite(p.values)]
            cx, cy = _staircase([p.values[ix] for p in ofront], [p.values[iy] for p in ofront], other_dirs[ix])
            fig.add_trace(go.Scatter(x=cx, y=cy, mode="lines", line={"color": COMPARE_COLOR, "width": 1.2,
                                                                     "dash": "dash"},
                                     hoverinfo="skip", showlegend=False, meta={"panel": i, "role": "compare-staircase"}),
                          **where)
            fig.add_trace(marker_trace(ofront, "compare", f"Pareto-optimal: {compare_label}",
                                       {"color": COMPARE_COLOR, "size": 9, "symbol": "diamond"}, i == 0,
                                       mode="markers", label=f"{compare_label}: ",
                                       error_x=_whiskers(ofront, ix), error_y=_whiskers(ofront, iy)), **where)
        fig.add_trace(go.Scatter(x=[], y=[], customdata=[], mode="markers", hoverinfo="skip", name="selected trial",
                                 showlegend=i == 0, legendgroup="selected",
                                 marker={"size": 17, "color": "rgba(0,0,0,0)",
                                         "line": {"color": HIGHLIGHT_COLOR, "width": 3}},
                                 meta={"panel": i, "role": "selected"}), **where)
        arrow = {Direction.MAX: "↑ better", Direction.MIN: "↓ better"}
        fig.update_xaxes(title_text=f"{panel.objectives[ix]} ({'← better' if dirs[ix] is Direction.MIN else '→ better'})",
                         title_font={"size": 11}, **where)
        fig.update_yaxes(title_text=f"{panel.objectives[iy]} ({arrow[dirs[iy]]})", title_font={"size": 11}, **where)
    fig.update_layout(height=height_per_row * rows + 80, margin={"l": 60, "r": 20, "t": 90, "b": 50},
                      hovermode="closest", clickmode="event", template="plotly_white",
                      legend={"orientation": "h", "x": 0, "y": 0.99, "yanchor": "top", "yref": "container"})
    return fig


def front_panel(front, noise: Mapping[str, Mapping[str, Any]] | None = None, *, title: str | None = None
                ) -> FrontPanel:
    """A :class:`~fairray.frontier.query.Front` as a panel; ``noise`` is
    :func:`~fairray.frontier.query.neighbour_noise` of that front (intervals and ``~`` ties), if computed."""
    from fairray.metrics import MetricKey, within_noise

    gaps = [k for k in front.objectives if MetricKey.parse(k).is_gap]
    points = []
    dto = front.dto if front.dto is not None else [None] * len(front.trials)
    for trial, on, values, d in zip(front.trials, front.on_front, front.values, dto, strict=True):
        entry = (noise or {}).get(trial.trial_id)
        intervals = None
        tie = False
        if entry:
            intervals = tuple((float(entry["ci"][k].lo), float(entry["ci"][k].hi)) if k in entry["ci"] else None
                              for k in front.objectives)
            tie = any(k in entry and entry[k].defined and within_noise(entry[k]) for k in gaps)
        extra = {} if d is None or d != d else {"dto": float(d)}
        if entry and "next" in entry:
            extra["next Pareto-optimal"] = entry["next"]
        points.append(FrontPoint(trial=trial.trial_id, values=tuple(map(float, values)), on_front=bool(on),
                                 params=trial.params, extra={"run_id": trial.run_id, **extra},
                                 intervals=intervals, tie=tie))
    return FrontPanel(title=title or front.title, objectives=tuple(front.objectives),
                      directions=tuple(d.value for d in front.directions), points=tuple(points),
                      hypervolume=float(front.hypervolume), reference=tuple(map(float, front.reference)))


def plotly_script() -> str:
    """plotly.js from the plotly wheel, as one inline ``<script>`` (no CDN, no network)."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def figure_div(fig, div_id: str) -> str:
    """The figure's ``<div>`` and the script that draws it (plotly.js must already be on the page)."""
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, include_mathjax=False,
                       config={"displaylogo": False, "responsive": True})


def embed_json(payload: object) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` only as escapes; NaN/±inf as null."""

    def clean(obj: object) -> object:
        if isinstance(obj, (float, np.floating)):
            return float(obj) if math.isfinite(float(obj)) else None
        if isinstance(obj, (np.integer,)):
            return int(obj)
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, Mapping):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple, np.ndarray)):
            return [clean(v) for v in obj]
        return obj

    text = json.dumps(clean(payload), ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222}}h1{{font-size:1.3rem;margin:.2rem 0}}
p.sub{{color:#555;margin:.2rem 0 1rem}}</style>{plotlyjs}</head>
<body><h1>{title}</h1><p class="sub">{subtitle}</p>{fronts}
<p class="sub">Grey: dominated trials; blue: Pareto-optimal trials on their attainment staircase, whiskers: 95%
speaker-bootstrap interval (<code>--noise</code>), {tie}: the gap ties the next Pareto-optimal trial within noise.
Hover a point for its hyperparameters. <code>fairray dashboard SWEEP</code> opens the full explorer.</p>
</body></html>
"""


def render_frontier_html(panels: Sequence[FrontPanel], *, title: str, subtitle: str = "") -> str:
    """The page of ``fairray frontier --plot``: the panels side by side, self-contained.

    Raises
    ------
    ValueError
        When a panel's objectives, directions, reference point, intervals and point values disagree in
        length, or a direction is not a valid spelling.
    """
    fronts = figure_div(fronts_figure(panels), "fronts") if panels else "<p>No front to show.</p>"
    return _PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle), plotlyjs=plotly_script(),
                        fronts=fronts, tie=TIE_MARK)


def write_frontier_html(path: str | os.PathLike, panels: Sequence[FrontPanel], *, title: str,
                        subtitle: str = "") -> None:
    """Render the page and write it atomically (temporary file in the same folder, then ``os.replace``)."""
    atomic_write_text(path, render_frontier_html(panels, title=title, subtitle=subtitle))
