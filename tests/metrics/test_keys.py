"""Metric key naming: format/parse round trip, validation, directions and restriction."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from fairray.metrics import (
    COUNT_METRICS,
    GAP_METRICS,
    UTILITY_METRICS,
    GroupReport,
    MetricKey,
    metric_direction,
    restrict,
    validate_metric_name,
)

ROUND_TRIP = [
    ("dev/weighted_f1", MetricKey("dev", "weighted_f1")),
    ("dev/weighted_f1/gender:F", MetricKey("dev", "weighted_f1", attr="gender", group="F")),
    ("dev/weighted_f1/language:en", MetricKey("dev", "weighted_f1", stratum="language", stratum_value="en")),
    (
        "dev/weighted_f1/gender:F/language:en",
        MetricKey("dev", "weighted_f1", attr="gender", group="F", stratum="language", stratum_value="en"),
    ),
    ("dev/n", MetricKey("dev", "n")),
    ("test/n/gender:M/language:ja", MetricKey("test", "n", "gender", "M", "language", "ja")),
    ("dev/tpr_gap/gender", MetricKey("dev", "tpr_gap", attr="gender")),
    ("dev/tpr_gap/gender/language:en", MetricKey("dev", "tpr_gap", "gender", None, "language", "en")),
    ("dev/tpr_gap/gender/worst:language", MetricKey("dev", "tpr_gap", "gender", None, "language", "worst")),
    ("train/avg_gap/gender/mean:language", MetricKey("train", "avg_gap", "gender", None, "language", "mean")),
    ("dev/acc/race:African American", MetricKey("dev", "acc", attr="race", group="African American")),
    (
        "dev/acc/age_group:Young/corpus:crema-d.v1",
        MetricKey("dev", "acc", "age_group", "Young", "corpus", "crema-d.v1"),
    ),
]


@pytest.mark.parametrize(("text", "key"), ROUND_TRIP)
def test_format_parse_round_trip(text: str, key: MetricKey) -> None:
    assert MetricKey.parse(text) == key
    assert key.format() == text
    assert str(key) == text


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("dev/acc", "overall"),
        ("dev/acc/gender:F", "group"),
        ("dev/acc/language:en", "stratum"),
        ("dev/acc/gender:F/language:en", "cell"),
        ("dev/dp_gap/gender", "gap"),
        ("dev/dp_gap/gender/worst:language", "gap"),
    ],
)
def test_scope(text: str, scope: str) -> None:
    assert MetricKey.parse(text).scope == scope


def test_lone_segment_is_a_stratum_only_for_stratum_columns() -> None:
    assert MetricKey.parse("dev/acc/race:Asian").group == "Asian"
    assert MetricKey.parse("dev/acc/corpus:meld").stratum == "corpus"
    key = MetricKey.parse("dev/acc/race:Asian", strata=("race",))
    assert (key.attr, key.stratum, key.stratum_value) == (None, "race", "Asian")


def test_properties() -> None:
    assert MetricKey.parse("dev/fpr/gender:F").is_utility
    assert not MetricKey.parse("dev/fpr/gender:F").is_gap
    gap = MetricKey.parse("dev/mfpr_gap/gender/mean:language")
    assert gap.is_gap and gap.is_aggregate and not gap.is_utility
    assert not MetricKey.parse("dev/n").is_utility


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dev",
        "dev/",
        "dev//gender",
        "dev/acc/gender:F/language:en/x:y",
        "dev/acc/a:b:c",
        "dev/acc/gender:",
        "dev/acc/:F",
        "dev/acc/gender:F/language",
        "dev/acc/language:worst",
        "dev/acc=1",
        "dev/acc/gender:F,M",
        "dev/acc/gender(F)",
        "dev/tpr_gap/gender/worst:mean",
    ],
)
def test_parse_rejects_malformed_keys(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        MetricKey.parse(text)


def test_key_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="group 'F' needs an attr"):
        MetricKey("dev", "acc", group="F")
    with pytest.raises(ValueError, match="together"):
        MetricKey("dev", "acc", stratum="language")
    with pytest.raises(ValueError, match="non-empty string"):
        MetricKey("dev", "acc", attr="gen=der", group="F")
    with pytest.raises(ValueError, match="reserved"):
        MetricKey("dev", "tpr_gap", attr="worst")


def test_metric_tables() -> None:
    assert UTILITY_METRICS == ("acc", "weighted_f1", "macro_f1", "uar", "fpr")
    assert GAP_METRICS == (
        "tpr_gap", "fpr_gap", "dp_gap", "tpr_gap_range", "fpr_gap_range", "dp_gap_range",
        "uar_gap", "mfpr_gap", "weighted_f1_gap", "acc_gap", "avg_gap",
    )  # fmt: skip
    assert COUNT_METRICS == ("n", "n_undefined_f1", "n_excluded", "n_groups_eff")


@pytest.mark.parametrize(
    ("name", "direction"),
    [("acc", "max"), ("weighted_f1", "max"), ("macro_f1", "max"), ("uar", "max"), ("fpr", "min")]
    + [(gap, "min") for gap in GAP_METRICS]
    + [("dev/fpr/gender:F", "min"), ("test/uar/language:en", "max"), ("dev/tpr_gap/gender/worst:language", "min")],
)
def test_metric_direction(name: str, direction: str) -> None:
    assert metric_direction(name) == direction


def test_metric_direction_refuses_counts_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="count"):
        metric_direction("n")
    with pytest.raises(ValueError, match="count"):
        metric_direction("dev/n/gender:F")
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        metric_direction("f1")


def _report() -> GroupReport:
    rng = np.random.default_rng(0)
    groups = pd.DataFrame({"gender": rng.choice(["F", "M", "U"], 60), "language": rng.choice(["en", "de"], 60)})
    return GroupReport.compute(rng.integers(0, 3, 60), rng.integers(0, 3, 60), ["a", "b", "c"], groups)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_every_report_key_validates_and_is_mlflow_safe(split: str) -> None:
    keys = list(_report().flat(split))
    assert len(keys) == 7 * (1 + 2 + 2 + 4) + 2 * 3 + 11 * (3 + 2)
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_\-.:/ ]+", key), key
        assert validate_metric_name(key).format() == key


def test_validate_metric_name_unknown_metric_message() -> None:
    with pytest.raises(ValueError) as err:
        validate_metric_name("dev/foo")
    message = str(err.value)
    assert message.startswith("unknown metric 'dev/foo'; known metrics: acc, weighted_f1, macro_f1, uar, fpr, tpr_gap")
    assert "format: {split}/{metric}[/{attr}][/{stratum}:{value}]" in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("val/acc", "unknown split 'val'"),
        ("dev/tpr_gap", "bare attribute"),
        ("dev/tpr_gap/gender:F", "bare attribute"),
        ("dev/tpr_gap/language:en", "bare attribute"),
        ("dev/acc/gender", "name a group"),
        ("dev/acc/gender/language:en", "name a group"),
        ("dev/acc/worst:language", "worst/mean over strata exist only"),
        ("dev/n_excluded/gender/worst:language", "worst/mean over strata exist only"),
        ("dev/acc/gender:F/language", "malformed"),
        ("dev/weighted-f1", "unknown metric"),
    ],
)
def test_validate_metric_name_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        validate_metric_name(text)


@pytest.mark.parametrize(
    ("key", "kwargs", "expected"),
    [
        ("dev/weighted_f1", {"group": "F", "stratum_value": "en", "attr": "gender", "stratum": "language"},
         "dev/weighted_f1/gender:F/language:en"),
        ("dev/weighted_f1/gender:F", {"stratum_value": "en", "stratum": "language"}, "dev/weighted_f1/gender:F/language:en"),
        ("dev/weighted_f1/language:en", {"group": "F", "attr": "gender"}, "dev/weighted_f1/gender:F/language:en"),
        ("dev/weighted_f1/gender:F/language:en", {"group": "F", "stratum_value": "en"},
         "dev/weighted_f1/gender:F/language:en"),
        ("dev/n", {"group": "M", "attr": "gender"}, "dev/n/gender:M"),
        ("dev/tpr_gap/gender", {"stratum_value": "en", "stratum": "language"}, "dev/tpr_gap/gender/language:en"),
        ("dev/tpr_gap/gender/worst:language", {"stratum_value": "en"}, "dev/tpr_gap/gender/language:en"),
        ("dev/avg_gap/gender/mean:language", {"stratum_value": "ja"}, "dev/avg_gap/gender/language:ja"),
        ("dev/tpr_gap/gender", {"group": "F"}, "dev/tpr_gap/gender"),
        ("dev/tpr_gap/gender/worst:language", {"group": "F", "stratum_value": "en"}, "dev/tpr_gap/gender/language:en"),
        ("dev/acc", {}, "dev/acc"),
    ],
)  # fmt: skip
def test_restrict(key: str, kwargs: dict, expected: str) -> None:
    assert restrict(key, **kwargs).format() == expected
    assert restrict(MetricKey.parse(key), **kwargs) == MetricKey.parse(expected)


@pytest.mark.parametrize(
    ("key", "kwargs", "match"),
    [
        ("dev/weighted_f1", {"stratum_value": "en"}, "names no stratum"),
        ("dev/weighted_f1", {"group": "F"}, "names no attr"),
        ("dev/weighted_f1/gender:F", {"group": "M"}, "already restricted to gender:F"),
        ("dev/weighted_f1/language:en", {"stratum_value": "de"}, "already restricted to language:en"),
        ("dev/tpr_gap/gender", {"group": "Asian", "attr": "race"}, "has attr 'gender', not 'race'"),
        ("dev/tpr_gap/gender/worst:language", {"stratum_value": "en", "stratum": "corpus"}, "has stratum 'language'"),
        ("dev/tpr_gap/gender", {"stratum_value": "worst", "stratum": "language"}, "aggregate"),
    ],
)
def test_restrict_refuses_conflicts(key: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        restrict(key, **kwargs)


# --- multi-label metrics (task-dependent tables) -------------------------------------------------


def test_hamming_acc_spec_and_task_tables() -> None:
    from fairray.metrics import METRICS, TASKS, task_metrics

    spec = METRICS["hamming_acc"]
    assert (spec.kind, spec.layout, spec.direction, spec.aggregates, spec.tasks) == (
        "utility", "partition", "max", False, ("multi",),
    )  # fmt: skip
    assert TASKS == ("single", "multi", "regression")
    assert task_metrics("single", "utility") == UTILITY_METRICS
    assert task_metrics("multi", "utility") == ("hamming_acc", "weighted_f1", "macro_f1", "uar", "fpr")
    assert task_metrics("single", "gap") == GAP_METRICS
    assert task_metrics("multi", "gap") == (
        "tpr_gap", "fpr_gap", "dp_gap", "tpr_gap_range", "fpr_gap_range", "dp_gap_range",
        "uar_gap", "mfpr_gap", "weighted_f1_gap",
    )  # fmt: skip
    assert task_metrics("multi", "count") == task_metrics("single", "count") == COUNT_METRICS
    assert set(task_metrics("single")) | set(task_metrics("multi")) | set(task_metrics("regression")) == set(METRICS)
    assert task_metrics("regression", "utility") == ("mae", "corr", "acc2", "f1_2")
    assert task_metrics("regression", "gap") == ("mae_gap", "corr_gap", "acc2_gap", "f1_2_gap")
    assert task_metrics("regression", "count") == ("n", "n_excluded", "n_groups_eff", "n_nonzero")
    with pytest.raises(ValueError, match="task must be one of single, multi, regression"):
        task_metrics("multilabel")


@pytest.mark.parametrize(
    "text", ["dev/hamming_acc", "test/hamming_acc/gender:F/language:en", "train/hamming_acc/race:Asian"]
)
def test_hamming_acc_keys_validate(text: str) -> None:
    key = validate_metric_name(text)
    assert key.is_utility and not key.is_gap and key.format() == text
    assert metric_direction(text) == "max"
    assert restrict("dev/hamming_acc", group="F", attr="gender").format() == "dev/hamming_acc/gender:F"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("dev/hamming_acc/gender", "name a group"),
        ("dev/hamming_acc/worst:language", "worst/mean over strata exist only"),
    ],
)
def test_hamming_acc_keys_rejected(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        validate_metric_name(text)


def test_every_multilabel_report_key_validates() -> None:
    rng = np.random.default_rng(1)
    groups = pd.DataFrame({"gender": rng.choice(["F", "M", "U"], 60), "language": rng.choice(["en", "de"], 60)})
    report = GroupReport.compute_multilabel(
        rng.integers(0, 2, (60, 3)), rng.integers(0, 2, (60, 3)), ["a", "b", "c"], groups
    )
    keys = list(report.flat("dev"))
    assert len(keys) == 7 * (1 + 2 + 2 + 4) + 2 * 3 + 9 * (3 + 2)
    for key in keys:
        assert validate_metric_name(key).format() == key
