"""What a function-backend trial hands Ray Tune: everything the sweep's driver reads, not the final breakdown.

The keys come from a real per-group report of the built-in data (the final evaluation's naming), so a change of
the metric names that would drop an objective or a constrained metric from Tune's results fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from fairray.config import build_spec
from fairray.data import prepare
from fairray.metrics import GroupReport
from fairray.sweep.runner import for_tune, tune_keys

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "minmaxgap.yaml"


def _final_report(raw: dict) -> dict[str, float]:
    """A final report's flat dev and test metrics (the same builder the training loop's ``_final`` uses)."""
    data = prepare(build_spec(raw, "test").dataset)
    out: dict[str, float] = {"final": 1.0, "selected_epoch": 2.0, "dev/loss": 0.9, "test/loss": 1.0,
                             "train/skipped_steps_total": 0.0}
    rng = np.random.default_rng(0)
    for split in ("dev", "test"):
        idx = data.indices(split)
        y = data.y[idx]
        pred = np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, len(data.classes), len(y)))
        report = GroupReport.compute(y, pred, data.classes, data.groups_frame(split), data.attribute,
                                     data.stratum_name, s_min=1)
        out.update(report.flat(split))
    return out


def test_final_report_keeps_what_the_driver_reads_and_drops_the_breakdown():
    raw = yaml.safe_load(SPEC.read_text())
    raw["search"]["constraints"] = ["dev/weighted_f1/gender:F/language:de >= 0.1"]  # a per-group constraint
    raw["search"]["early_stopping"] = {"type": "moasha", "grace": 1, "reduction": 2,
                                       "objectives": [{"metric": "dev/acc", "direction": "max"}]}
    spec = build_spec(raw, "test")
    keep = tune_keys(spec)
    assert keep == {"dev/weighted_f1", "dev/tpr_gap/gender/worst:language", "dev/acc",
                    "dev/weighted_f1/gender:F/language:de"}
    final = _final_report(raw)
    sent = for_tune(final, keep)
    assert keep <= sent.keys()  # objectives, stopping objectives and constrained metrics, per-group or not
    assert {"final", "selected_epoch", "dev/loss", "test/loss", "test/weighted_f1"} <= sent.keys()
    assert all(sent[k] == final[k] for k in sent)  # values untouched
    dropped = final.keys() - sent.keys()
    assert "test/weighted_f1/gender:F/language:de" in dropped and "dev/n/gender:F" not in sent
    assert len(sent) < len(final) / 3, (len(sent), len(final))


def test_epoch_reports_pass_whole():
    """A per-epoch report (headline metrics, losses, method state) goes to Tune as it is."""
    epoch = {"epoch": 3, "train/loss": 1.2, "dev/loss": 1.1, "dev/weighted_f1": 0.4, "dev/acc": 0.45,
             "dev/tpr_gap/gender/worst:language": 0.2, "dev/tpr_gap/gender/mean:language": 0.1,
             "dev/tpr_gap/gender": 0.15, "method/lambda": 0.7, "method/delta_dev": 0.01, "train/grad_norm": 2.0}
    assert for_tune(epoch, frozenset()) == epoch
