"""Reports built from a sweep's MLflow runs (``fairray report``)."""

from fairray.report.ablation import (
    IDI_TABLE1,
    Cell,
    Row,
    ablation_rows,
    idi_rows,
    render_markdown,
    render_svg,
)

LAYOUTS = ("idi", "minmaxgap", "cberl", "regression")


def choose_layout(methods: set[str | None]) -> str:
    """``--layout auto``: cberl when a cell is CBERL, minmaxgap when every cell is ERM or MinMaxGAP, else idi."""
    if "cberl" in methods:
        return "cberl"
    return "minmaxgap" if methods and methods <= {"erm", "minmaxgap"} else "idi"


__all__ = ["IDI_TABLE1", "LAYOUTS", "Cell", "Row", "ablation_rows", "choose_layout", "idi_rows", "render_markdown",
           "render_svg"]
