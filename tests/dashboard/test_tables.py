"""The page's pure pieces: heat tables per group x stratum, the report's markdown as HTML, Host header names."""

from __future__ import annotations

import pytest

from fairray.dashboard import heat_tables
from fairray.dashboard._page import markdown_html
from fairray.dashboard._server import _host_name

METRICS = {
    "dev/acc": 0.7, "dev/acc/gender:F/language:en": 0.6, "dev/acc/gender:F": 0.65, "dev/acc/language:en": 0.62,
    "dev/fpr/gender:F/language:en": 0.2, "dev/tpr_gap/gender/language:en": 0.1, "dev/tpr_gap/gender/worst:language": 0.3,
    "dev/tpr_gap/gender": 0.05,
}


def test_heat_tables_place_each_key_and_colour_by_direction() -> None:
    h = heat_tables(METRICS, "gender", "language", ["F", "M"], ["en"], splits=["dev"])
    u = h["utility"]
    assert u["x"] == ["F · en", "M · en", "F · all", "M · all", "all · en", "all"]
    assert u["y"] == ["dev/acc", "dev/fpr"]  # rows only for metrics logged somewhere
    acc = u["z"][0]
    assert acc == [pytest.approx(0.6), None, pytest.approx(0.65), None, pytest.approx(0.62), pytest.approx(0.7)]
    assert u["keys"][0][0] == "dev/acc/gender:F/language:en"
    assert u["good"][1][0] == pytest.approx(0.8)  # FPR is minimised: coloured as 1 - value
    g = h["gap"]
    assert g["x"] == ["en", "worst", "mean", "pooled"]
    assert g["z"][0] == [pytest.approx(0.1), pytest.approx(0.3), None, pytest.approx(0.05)]
    assert g["good"][0][1] == pytest.approx(0.7)


def test_report_markdown_becomes_escaped_tables() -> None:
    md = "# T <b>\n\nnote & more\n\n## en\n\n| a | b |\n|---|---|\n| <x> | 1 |\n\n## pl\n\n| a |\n|---|\n| 2 |\n"
    page = markdown_html(md)
    assert page.count("<table") == 2 and "<h4>en</h4>" in page
    assert "&lt;x&gt;" in page and "<x>" not in page and "T &lt;b&gt;" in page and "note &amp; more" in page


@pytest.mark.parametrize(("header", "host"), [("127.0.0.1:8050", "127.0.0.1"), ("localhost", "localhost"),
                                              ("[::1]:8050", "[::1]"), ("evil.example:80", "evil.example")])
def test_host_header_names(header: str, host: str) -> None:
    assert _host_name(header) == host
