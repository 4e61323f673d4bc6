"""Render Pareto fronts as one self-contained interactive HTML page (inline SVG, vanilla JS, no network).

The page template is ``dashboards/frontier.html`` (installed as ``fairray.dashboards``). The data
travels as JSON inside a ``<script type="application/json">`` element; every ``<``, ``>`` and ``&``
in it is written as a ``\\u`` escape, so no string in a trial id or hyperparameter can close the
script element. JSON has no NaN or infinity, so non-finite numbers are written as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (``float()`` reads them back).

Example
-------
>>> point = FrontPoint(trial="t1", values=(0.61, 0.08), on_front=True, params={"lr": 1e-3})
>>> panel = FrontPanel(title="en", objectives=("macro_recall", "recall_gap"), directions=("max", "min"),
...                    points=(point,), hypervolume=0.5612, reference=(0.0, 1.0))
>>> "t1" in render_frontier_html([panel], title="Sweep 42")
True
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from fairray._atomic import atomic_write_text
from fairray.frontier.pareto import Direction

__all__ = ["FrontPanel", "FrontPoint", "render_frontier_html", "write_frontier_html"]

_TEMPLATE_NAME = "frontier.html"
_PLACEHOLDER = re.compile(r"\{\{(TITLE|SUBTITLE|DATA)\}\}")
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


@dataclass(frozen=True)
class FrontPoint:
    """One trial in a panel: its objective values (in panel order), front membership and settings."""

    trial: str
    values: tuple[float, ...]
    on_front: bool
    params: Mapping[str, object]
    extra: Mapping[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class FrontPanel:
    """One plot, e.g. one language: the objectives, their directions and every trial.

    ``hypervolume`` and ``reference`` are shown in the panel header; ``reference`` is in the
    objectives' own units, as :func:`fairray.frontier.pareto.hypervolume` takes it.
    """

    title: str
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    points: tuple[FrontPoint, ...]
    hypervolume: float
    reference: tuple[float, ...]


def _jsonable(obj: object) -> object:
    """Plain JSON types; non-finite floats as strings, unknown objects as ``str(obj)``."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else _NON_FINITE[repr(x)]
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj)


def _panel_payload(panel: FrontPanel) -> dict[str, object]:
    n_obj = len(panel.objectives)
    if n_obj == 0 or len(panel.directions) != n_obj:
        raise ValueError(
            f"panel {panel.title!r} needs one direction per objective and at least one objective; "
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
    return {
        "title": str(panel.title),
        "objectives": [str(o) for o in panel.objectives],
        "directions": [Direction.parse(d).value for d in panel.directions],
        "hypervolume": _jsonable(float(panel.hypervolume)),
        "reference": [_jsonable(float(r)) for r in panel.reference],
        "points": [
            {
                "trial": str(p.trial),
                "values": [_jsonable(float(v)) for v in p.values],
                "on_front": bool(p.on_front),
                "params": _jsonable(dict(p.params)),
                "extra": _jsonable(dict(p.extra)),
            }
            for p in panel.points
        ],
    }


def _embed_json(payload: object) -> str:
    """JSON safe to place inside a ``<script>`` element: ``<``, ``>``, ``&`` only as escapes."""
    text = json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _load_template() -> str:
    try:
        return resources.files("fairray.dashboards").joinpath(_TEMPLATE_NAME).read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # Source checkout that is not installed: dashboards/ sits beside the fairray/ package folder.
        return (Path(__file__).resolve().parents[2] / "dashboards" / _TEMPLATE_NAME).read_text(encoding="utf-8")


def render_frontier_html(panels: Sequence[FrontPanel], *, title: str, subtitle: str = "") -> str:
    """Return the page: one panel per entry of ``panels``, in order.

    Two-objective panels are scatter plots with the front drawn as a staircase; panels with more
    objectives plot the first two and say so; NaN and infinite trials are counted, not plotted.

    Raises
    ------
    ValueError
        When a panel's objectives, directions, reference point and point values disagree in length,
        or a direction is not a valid spelling.
    """
    payload = _embed_json({"panels": [_panel_payload(p) for p in panels]})
    substitutions = {"TITLE": html.escape(title), "SUBTITLE": html.escape(subtitle), "DATA": payload}
    template = _load_template()
    missing = [name for name in substitutions if "{{" + name + "}}" not in template]
    if missing:
        raise RuntimeError(f"the frontier template must contain every placeholder; {missing} are missing")
    # One pass, so a title that happens to contain "{{DATA}}" stays literal text.
    return _PLACEHOLDER.sub(lambda m: substitutions[m.group(1)], template)


def write_frontier_html(
    path: str | os.PathLike,
    panels: Sequence[FrontPanel],
    *,
    title: str,
    subtitle: str = "",
) -> None:
    """Render the page and write it atomically (temporary file in the same folder, then ``os.replace``)."""
    atomic_write_text(path, render_frontier_html(panels, title=title, subtitle=subtitle))
