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

__all__ = ["IDI_TABLE1", "Cell", "Row", "ablation_rows", "idi_rows", "render_markdown", "render_svg"]
