"""The fronts figure and ``fairray frontier --plot``'s page: what is plotted, whiskers, ties, escaping, offline."""

from __future__ import annotations

import dataclasses
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fairray.frontier.plot import (
    FrontPanel,
    FrontPoint,
    axes_of,
    fronts_figure,
    render_frontier_html,
    write_frontier_html,
)

EVIL = "</script><script>alert(1)</script>"
UTIL, GAP = "dev/macro_f1/language:en", "dev/tpr_gap/gender/language:en"


def _panels() -> list[FrontPanel]:
    two = FrontPanel(
        title="language=en",
        objectives=(UTIL, GAP),
        directions=("maximize", "min"),
        points=(
            FrontPoint("t-001", (0.61, 0.08), True, {"lr": 1e-3, "note": EVIL}, {"dto": 0.4},
                       intervals=((0.55, 0.66), (0.03, 0.15)), tie=True),
            FrontPoint("t-005", (0.50, 0.05), True, {"lr": 2e-3}, intervals=((0.45, 0.52), None)),
            FrontPoint("t-002", (0.55, 0.12), False, {"lr": np.float32(0.5), "eta": np.int64(3)}),
            FrontPoint("t-003", (float("nan"), 0.01), False, {"lr": 2e-4}),
            FrontPoint("t-004", (0.70, float("inf")), False, {"flag": np.bool_(True)}),
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


def _traces(fig, panel: int, role: str):
    found = [t for t in fig.data if t.meta and t.meta["panel"] == panel and t.meta["role"] == role]
    assert len(found) == 1, (panel, role)
    return found[0]


def test_each_panel_plots_its_finite_front_and_dominated_trials() -> None:
    fig = fronts_figure(_panels())
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("language=en · HV 0.5612") and "2 not finite" in titles[0]
    assert titles[1].startswith("German · HV 0.1234") and "first 2 of 3 objectives" in titles[1]
    front, dominated = _traces(fig, 0, "front"), _traces(fig, 0, "dominated")
    assert list(front.customdata) == ["t-001", "t-005"]
    assert list(dominated.customdata) == ["t-002"]  # t-003 (NaN) and t-004 (inf) are counted, not plotted
    # the gap on x, the utility on y: upper left is better
    assert list(front.x) == pytest.approx([0.08, 0.05]) and list(front.y) == pytest.approx([0.61, 0.50])
    assert list(front.text) == ["~", ""]
    assert "t-001" in front.hovertext[0] and "lr = 0.001" in front.hovertext[0]
    assert list(_traces(fig, 1, "front").customdata) == ["g-1"]
    assert len(_traces(fig, 0, "selected").x) == 0  # filled by the dashboard's script


def test_whiskers_are_the_intervals() -> None:
    front = _traces(fronts_figure(_panels()), 0, "front")
    x, y = np.array(front.x), np.array(front.y)
    np.testing.assert_allclose(y + np.array(front.error_y.array), [0.66, 0.52])
    np.testing.assert_allclose(y - np.array(front.error_y.arrayminus), [0.55, 0.45])
    np.testing.assert_allclose((x + np.array(front.error_x.array))[0], 0.15)
    np.testing.assert_allclose((x - np.array(front.error_x.arrayminus))[0], 0.03)
    assert math.isnan(front.error_x.array[1])  # no interval for t-005's gap: no whisker
    assert _traces(fronts_figure(_panels()), 1, "front").error_x.array is None  # no interval computed: none drawn


def test_staircase_bounds_the_dominated_region() -> None:
    stairs = _traces(fronts_figure(_panels()), 0, "staircase")
    # sorted by the gap (minimised): go right at the lower utility, then up to the next point
    assert list(stairs.x) == pytest.approx([0.05, 0.08, 0.08])
    assert list(stairs.y) == pytest.approx([0.50, 0.50, 0.61])


def test_compare_draws_the_other_front_and_refuses_other_objectives() -> None:
    panels = _panels()
    other = dataclasses.replace(panels[0], points=(FrontPoint("o-1", (0.58, 0.02), True, {}),
                                                   FrontPoint("o-2", (0.40, 0.30), False, {})))
    fig = fronts_figure(panels, compare={"language=en": other}, compare_label="erm")
    compared = _traces(fig, 0, "compare")
    assert list(compared.customdata) == ["o-1"] and compared.name == "Pareto-optimal: erm"
    wrong = dataclasses.replace(other, objectives=(UTIL, "dev/dp_gap/gender/language:en"))
    with pytest.raises(ValueError, match="compared front has objectives"):
        fronts_figure(panels, compare={"language=en": wrong})


def test_axes_put_the_gap_on_x() -> None:
    assert axes_of((UTIL, GAP)) == (1, 0)
    assert axes_of((GAP, UTIL)) == (0, 1)
    assert axes_of(("a", "b", "c")) == (0, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"directions": ("max",)}, "one direction per objective"),
        ({"reference": (0.0,)}, "reference point needs 2"),
        ({"points": (FrontPoint("x", (0.1,), True, {}),)}, "every point needs 2 values"),
        ({"points": (FrontPoint("x", (0.1, 0.2), True, {}, intervals=((0, 1),)),)}, "one interval"),
        ({"directions": ("max", "sideways")}, "sideways"),
    ],
)
def test_inconsistent_panels_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_frontier_html([dataclasses.replace(_panels()[0], **change)], title="t")


class _Loads(HTMLParser):
    """Every tag attribute that would make the browser fetch something (or navigate)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "action", "srcset", "data")]


def test_page_is_self_contained_and_escaped() -> None:
    page = render_frontier_html(_panels(), title=EVIL, subtitle="<b>x</b> & y")
    loads = _Loads()
    loads.feed(page)
    assert loads.urls == []
    assert "link" not in loads.tags and "iframe" not in loads.tags
    assert "Plotly.newPlot" in page and "plotly.js" in page.lower()  # plotly.js inline, from the wheel
    assert EVIL not in page  # in the title it is HTML-escaped, in the figure JSON "<" is \u003c
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page
    assert len(re.findall(r"<script\b", page)) == len(re.findall(r"</script>", page))


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "frontier.html"
    target.write_text("old")
    write_frontier_html(target, _panels(), title="Sweep 7", subtitle="s")
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Sweep 7" in text
    assert [p.name for p in target.parent.iterdir()] == ["frontier.html"]  # no temp file left behind
