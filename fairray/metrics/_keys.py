"""One naming scheme for every metric fairray logs, generated from a spec table.

Key format (METHODS §2.7), MLflow-safe (letters, digits, ``_ - . : /`` and space)::

    {split}/{metric}                          overall             dev/weighted_f1
    {split}/{metric}/{attr}:{group}           one group           dev/weighted_f1/gender:F
    {split}/{metric}/{stratum}:{value}        one stratum         dev/weighted_f1/language:en
    {split}/{metric}/{attr}:{group}/{stratum}:{value}             dev/weighted_f1/gender:F/language:en
    {split}/{gap}/{attr}                      gap, pooled         dev/tpr_gap/gender
    {split}/{gap}/{attr}/{stratum}:{value}    gap in one stratum  dev/tpr_gap/gender/language:en
    {split}/{gap}/{attr}/worst:{stratum}      max over strata     dev/tpr_gap/gender/worst:language
    {split}/{gap}/{attr}/mean:{stratum}       mean over strata    dev/tpr_gap/gender/mean:language

A key with a single ``name:value`` segment is a group or a stratum; the two read the same, so
:meth:`MetricKey.parse` treats it as a stratum when ``name`` is one of ``strata`` (default
:data:`STRATUM_COLUMNS`) and as a group otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Literal

SPLITS = ("train", "dev", "test")
STRATUM_AGGREGATES = ("worst", "mean")
"""Reserved stratum values: ``worst:{stratum}`` is the max of a gap over strata, ``mean:{stratum}`` the mean."""
STRATUM_COLUMNS = ("language", "modality_cfg", "corpus", "ood")
"""Column names :meth:`MetricKey.parse` reads as a stratum when a utility key has one ``name:value`` segment."""
KEY_FORMAT = "{split}/{metric}[/{attr}][/{stratum}:{value}]"
CLASSIFICATION_TASKS = ("single", "multi")
"""The class-label tasks: single-label (one class per sample) or multi-label (multi-hot, §2.1–2.2)."""
TASKS = (*CLASSIFICATION_TASKS, "regression")
"""Tasks a report can be of: the class-label ones and ``regression`` (a continuous target, e.g. MOSI / MOSEI
sentiment in [-3, 3]: MAE, Pearson correlation and MulT's binary accuracy / F1 with zeros excluded)."""
MISSING_VALUES = frozenset({"", "U", "Unspecified", "unspecified", "Unknown", "unknown"})
"""Attribute/stratum values that mean "unknown" (besides NaN/None), compared after stripping whitespace.

The one definition (METHODS §1.3): the dataset leaves such samples out of the attribute's groups
(code -1) and :class:`~fairray.metrics.GroupReport` excludes them from that column's groups and
counts them in ``n_excluded``. Test a value with :func:`is_missing`.
"""

Kind = Literal["utility", "gap", "count"]
Layout = Literal["partition", "attribute"]
Task = Literal["single", "multi", "regression"]


@dataclass(frozen=True)
class MetricSpec:
    """One row of the metric table.

    ``layout`` fixes the key structure: ``partition`` metrics are values on a subset
    (overall, group, stratum, cell); ``attribute`` metrics are between the groups of one
    attribute (pooled, per stratum and, when ``aggregates``, worst/mean over strata).
    ``tasks`` names the report tasks (:data:`TASKS`) that carry the metric: a single-label report
    has no ``hamming_acc``, a multi-label report no ``acc``, ``acc_gap`` or ``avg_gap``.
    """

    name: str
    kind: Kind
    layout: Layout
    direction: Literal["max", "min"] | None
    aggregates: bool
    doc: str
    tasks: tuple[Task, ...] = CLASSIFICATION_TASKS
    #: For a gap-operator variant (see :data:`GAP_OP_VARIANTS`): the class-wise gap it is a variant of and
    #: the §2.4 operator it always uses; ``None`` for every other metric (the report's own ``gap_op``).
    base: str | None = None
    gap_op: str | None = None


CLASSWISE_GAPS = ("tpr_gap", "fpr_gap", "dp_gap")
"""Gaps of a per-class rate over groups (§2.4): the ones a gap operator applies to."""
GAP_OP_VARIANTS = ("range",)
"""§2.4 operators reported beside the report's own ``gap_op`` (default ``sum_abs_dev``) for every class-wise
gap, as ``{gap}_{op}`` (``tpr_gap_range`` = max_g r_gc - min_g r_gc, aggregated over classes like
``tpr_gap``). ``range`` and ``sum_abs_dev`` both reduce to the pairwise gap for two groups and differ
for three or more (IDI's G = 3 attributes: METHODS §2.4 reports both)."""


def _variant_specs(base: MetricSpec) -> tuple[MetricSpec, ...]:
    return tuple(
        MetricSpec(f"{base.name}_{op}", base.kind, base.layout, base.direction, base.aggregates,
                   f"{base.name} with the {op} operator whatever the report's gap_op (§2.4)", base.tasks,
                   base=base.name, gap_op=op)
        for op in GAP_OP_VARIANTS
    )  # fmt: skip


_SPECS = (
    MetricSpec("acc", "utility", "partition", "max", False, "accuracy, exact match (§2.2); single-label only",
               ("single",)),
    MetricSpec("weighted_f1", "utility", "partition", "max", False, "support-weighted F1 (MMG W-F1)"),
    MetricSpec("macro_f1", "utility", "partition", "max", False, "mean F1 over all classes, 0 when undefined (IDI F1)"),
    MetricSpec("uar", "utility", "partition", "max", False, "mean recall over classes with positives"),
    MetricSpec("fpr", "utility", "partition", "min", False, "mean FPR over classes with Q_c >= s_min"),
    MetricSpec("tpr_gap", "gap", "attribute", "min", True, "class-wise TPR gap, aggregated over classes (§2.4)"),
    MetricSpec("fpr_gap", "gap", "attribute", "min", True, "class-wise FPR gap (§2.4)"),
    MetricSpec("dp_gap", "gap", "attribute", "min", True, "class-wise positive-prediction-rate gap (§2.4)"),
    MetricSpec("uar_gap", "gap", "attribute", "min", True, "range of per-group uar (MMG ΔTPR, §2.5)"),
    MetricSpec("mfpr_gap", "gap", "attribute", "min", True, "range of per-group mean FPR (MMG ΔFPR)"),
    MetricSpec("weighted_f1_gap", "gap", "attribute", "min", True, "range of per-group weighted F1 (MMG ΔW-F1)"),
    MetricSpec("acc_gap", "gap", "attribute", "min", True, "range of per-group accuracy (MMG ΔACC)", ("single",)),
    MetricSpec("avg_gap", "gap", "attribute", "min", True, "mean of the four MMG gaps (MMG AVG)", ("single",)),
    MetricSpec("n", "count", "partition", None, False, "number of samples (support)", TASKS),
    MetricSpec("n_undefined_f1", "count", "partition", None, False, "classes whose F1 denominator is 0"),
    MetricSpec("n_excluded", "count", "attribute", None, False, "samples with a missing attribute value", TASKS),
    MetricSpec("n_groups_eff", "count", "attribute", None, False, "groups with at least s_min samples", TASKS),
    # Multi-label only; appended so that the single-label order above (and the listings built on it) stays.
    MetricSpec("hamming_acc", "utility", "partition", "max", False,
               "mean per-class agreement 1[ŷ_c = y_c] over samples and classes (§2.2, IDI ACC)", ("multi",)),
    # Regression only (MOSI / MOSEI sentiment; MulT's eval_mosei_senti with exclude_zero=True); appended last.
    MetricSpec("mae", "utility", "partition", "min", False, "mean absolute error |ŷ - y|", ("regression",)),
    MetricSpec("corr", "utility", "partition", "max", False, "Pearson correlation of ŷ and y (NaN if either is "
               "constant)", ("regression",)),
    MetricSpec("acc2", "utility", "partition", "max", False, "binary accuracy of 1[ŷ > 0] vs 1[y > 0] over "
               "samples with y != 0 (MulT's exclude_zero)", ("regression",)),
    MetricSpec("f1_2", "utility", "partition", "max", False, "support-weighted F1 of the same two classes (y != 0)",
               ("regression",)),
    MetricSpec("n_nonzero", "count", "partition", None, False, "samples with y != 0 (the support of acc2 / f1_2)",
               ("regression",)),
    MetricSpec("mae_gap", "gap", "attribute", "min", True, "range of per-group MAE", ("regression",)),
    MetricSpec("corr_gap", "gap", "attribute", "min", True, "range of per-group correlation", ("regression",)),
    MetricSpec("acc2_gap", "gap", "attribute", "min", True, "range of per-group acc2", ("regression",)),
    MetricSpec("f1_2_gap", "gap", "attribute", "min", True, "range of per-group f1_2", ("regression",)),
)  # fmt: skip
# The gap-operator variants are generated, and listed right after the class-wise gaps they vary.
_at = max(i for i, spec in enumerate(_SPECS) if spec.name in CLASSWISE_GAPS) + 1
_SPECS = (
    *_SPECS[:_at],
    *(v for spec in _SPECS if spec.name in CLASSWISE_GAPS for v in _variant_specs(spec)),
    *_SPECS[_at:],
)
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


def task_metrics(task: str, kind: Kind | None = None) -> tuple[str, ...]:
    """Names of the metrics a ``task`` report carries (of one ``kind`` if given), in table order.

    >>> task_metrics("multi", "utility")
    ('hamming_acc', 'weighted_f1', 'macro_f1', 'uar', 'fpr')
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    names = [s.name for s in _SPECS if task in s.tasks and (kind is None or s.kind == kind)]
    if "hamming_acc" in names:  # the multi-label headline utility leads, where acc leads single-label tables
        names.insert(0, names.pop(names.index("hamming_acc")))
    return tuple(names)


UTILITY_METRICS = task_metrics("single", "utility")
"""Utilities of a single-label report; ``task_metrics('multi', 'utility')`` for a multi-label one."""
GAP_METRICS = task_metrics("single", "gap")
"""Gaps of a single-label report (every gap); ``task_metrics('multi', 'gap')`` for a multi-label one."""
COUNT_METRICS = task_metrics("single", "count")
"""Counts of a class-label report (the same for both tasks); ``task_metrics('regression', 'count')`` for a
regression report."""


def is_missing(value: object) -> bool:
    """True for None, NaN and the :data:`MISSING_VALUES` (after stripping whitespace).

    >>> [is_missing(v) for v in ("F", " U ", None, float("nan"), "unknown")]
    [False, True, True, True, True]
    """
    if value is None or (isinstance(value, float) and value != value):
        return True
    return str(value).strip() in MISSING_VALUES


_NAME = re.compile(r"^[A-Za-z0-9_.\- ]+$")


def is_safe_name(text: str) -> bool:
    """True when ``text`` may be a key segment part: letters, digits, ``_ - .`` and space."""
    return bool(_NAME.match(text)) and text.strip() == text


@dataclass(frozen=True)
class MetricKey:
    """A parsed metric key; ``format`` and ``parse`` round-trip.

    ``group`` is a value of ``attr``; ``stratum_value`` is a value of ``stratum`` or one of
    :data:`STRATUM_AGGREGATES` (formatted ``worst:{stratum}``).

    Examples
    --------
    >>> MetricKey("dev", "tpr_gap", attr="gender", stratum="language", stratum_value="worst").format()
    'dev/tpr_gap/gender/worst:language'
    >>> MetricKey.parse("dev/weighted_f1/gender:F/language:en").group
    'F'
    """

    split: str
    metric: str
    attr: str | None = None
    group: str | None = None
    stratum: str | None = None
    stratum_value: str | None = None

    def __post_init__(self) -> None:
        for name in ("split", "metric", "attr", "group", "stratum", "stratum_value"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not is_safe_name(value)):
                raise ValueError(
                    f"MetricKey.{name} must be a non-empty string of letters, digits, '_', '-', '.' or space; got {value!r}"
                )
        if self.group is not None and self.attr is None:
            raise ValueError(f"MetricKey: group {self.group!r} needs an attr")
        if (self.stratum is None) != (self.stratum_value is None):
            raise ValueError("MetricKey: stratum and stratum_value are given together or not at all")
        if self.stratum in STRATUM_AGGREGATES or self.attr in STRATUM_AGGREGATES:
            raise ValueError(f"MetricKey: {STRATUM_AGGREGATES} are reserved and cannot name a column")

    @property
    def is_utility(self) -> bool:
        spec = METRICS.get(self.metric)
        return spec is not None and spec.kind == "utility"

    @property
    def is_gap(self) -> bool:
        spec = METRICS.get(self.metric)
        return spec is not None and spec.kind == "gap"

    @property
    def is_aggregate(self) -> bool:
        """True for ``worst:{stratum}`` / ``mean:{stratum}`` keys."""
        return self.stratum_value in STRATUM_AGGREGATES

    @property
    def scope(self) -> str:
        """``overall``, ``group``, ``stratum``, ``cell`` (partition keys) or ``gap`` (between-group keys)."""
        if self.attr is not None and self.group is None:
            return "gap"
        if self.group is not None:
            return "cell" if self.stratum is not None else "group"
        return "stratum" if self.stratum is not None else "overall"

    def format(self) -> str:
        """The key string, e.g. ``dev/weighted_f1/gender:F/language:en``."""
        parts = [self.split, self.metric]
        if self.attr is not None:
            parts.append(self.attr if self.group is None else f"{self.attr}:{self.group}")
        if self.stratum is not None:
            if self.is_aggregate:
                parts.append(f"{self.stratum_value}:{self.stratum}")
            else:
                parts.append(f"{self.stratum}:{self.stratum_value}")
        return "/".join(parts)

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, key: str, *, strata: Collection[str] = STRATUM_COLUMNS) -> MetricKey:
        """Parse a key string; ``strata`` names the columns a lone ``name:value`` segment is a stratum of.

        Raises ``ValueError`` naming ``key`` when it is not of the form :data:`KEY_FORMAT`.
        """
        if not isinstance(key, str):
            raise ValueError(f"metric key must be a string; got {key!r}")
        parts = key.split("/")
        if len(parts) < 2 or len(parts) > 4:
            raise ValueError(f"malformed metric key {key!r}: expected 2 to 4 '/'-separated parts; format: {KEY_FORMAT}")
        split, metric, *rest = parts
        segments = [_split_segment(key, seg) for seg in rest]
        fields: dict[str, str | None] = {}
        if segments and segments[0][1] is None:  # bare attribute: between-group key
            fields["attr"] = segments.pop(0)[0]
        elif len(segments) == 2 or (segments and segments[0][0] not in (*strata, *STRATUM_AGGREGATES)):
            fields["attr"], fields["group"] = segments.pop(0)  # a lone name:value is a group unless a stratum
        if segments:
            name, value = segments.pop(0)
            if value is None:
                raise ValueError(f"malformed metric key {key!r}: segment {name!r} needs the form name:value")
            if value in STRATUM_AGGREGATES:
                raise ValueError(f"malformed metric key {key!r}: write the aggregate over strata as {value}:{name}")
            if name in STRATUM_AGGREGATES:
                name, value = value, name
            fields["stratum"], fields["stratum_value"] = name, value
        try:
            return cls(split, metric, **fields)
        except ValueError as err:
            raise ValueError(f"malformed metric key {key!r}: {err}; format: {KEY_FORMAT}") from None


def _split_segment(key: str, segment: str) -> tuple[str, str | None]:
    """``'gender:F'`` -> ``('gender', 'F')``; ``'gender'`` -> ``('gender', None)``."""
    pieces = segment.split(":")
    if len(pieces) > 2 or not all(pieces):
        raise ValueError(f"malformed metric key {key!r}: bad segment {segment!r}; format: {KEY_FORMAT}")
    return pieces[0], (pieces[1] if len(pieces) == 2 else None)


def metric_direction(name: str | MetricKey) -> Literal["max", "min"]:
    """``'max'`` or ``'min'`` for a metric name or key; counts have no direction (``ValueError``)."""
    key = name if isinstance(name, MetricKey) else MetricKey.parse(name) if "/" in name else None
    metric = name if key is None else key.metric
    spec = METRICS.get(metric)
    if spec is None:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    if spec.direction is None:
        raise ValueError(f"metric {metric!r} is a count and has no optimisation direction")
    return spec.direction


def validate_metric_name(key: str, *, strata: Collection[str] = STRATUM_COLUMNS) -> MetricKey:
    """Parse ``key`` and check it is a key a :class:`GroupReport` can produce; ``ValueError`` otherwise.

    Used by the config loader so a typo in an objective fails at load time, not after a sweep.
    """
    parsed = MetricKey.parse(key, strata=strata)
    spec = METRICS.get(parsed.metric)
    if spec is None:
        raise ValueError(f"unknown metric {key!r}; known metrics: {', '.join(METRICS)} ; format: {KEY_FORMAT}")
    if parsed.split not in SPLITS:
        raise ValueError(f"unknown split {parsed.split!r} in metric key {key!r}; known splits: {', '.join(SPLITS)}")
    if spec.layout == "partition" and parsed.scope == "gap":
        raise ValueError(
            f"metric key {key!r}: {parsed.metric!r} is a value on a subset; name a group as "
            f"{parsed.attr}:<value>, not the bare attribute {parsed.attr!r}"
        )
    if spec.layout == "attribute" and parsed.scope != "gap":
        raise ValueError(
            f"metric key {key!r}: {parsed.metric!r} is between groups; it takes a bare attribute "
            f"(e.g. {parsed.split}/{parsed.metric}/gender[/language:en]), not a group or nothing"
        )
    if parsed.is_aggregate and not spec.aggregates:
        raise ValueError(f"metric key {key!r}: worst/mean over strata exist only for {', '.join(GAP_METRICS)}")
    return parsed


def restrict(
    key: str | MetricKey,
    *,
    stratum_value: str | None = None,
    group: str | None = None,
    stratum: str | None = None,
    attr: str | None = None,
    strata: Collection[str] = STRATUM_COLUMNS,
) -> MetricKey:
    """The same objective restricted to one stratum and/or one attribute group.

    - A utility (or count) restricted to ``group`` F and ``stratum_value`` en becomes the cell
      ``dev/weighted_f1/gender:F/language:en``.
    - A gap restricted to ``stratum_value`` en becomes ``dev/tpr_gap/gender/language:en``; a
      ``worst:``/``mean:`` aggregate restricted to a stratum becomes that stratum's value.
    - A gap restricted to a group of its own attribute stays the gap at the enclosing level:
      a gap is *between* groups, so one group holds no gap of its own.

    ``stratum`` / ``attr`` name the columns when the key does not carry them (e.g. restricting
    ``dev/weighted_f1`` needs ``stratum='language'``); a conflicting restriction (another
    stratum value or group than the key's own) raises ``ValueError``.
    """
    k = MetricKey.parse(key, strata=strata) if isinstance(key, str) else key
    if stratum_value is not None:
        if stratum_value in STRATUM_AGGREGATES:
            raise ValueError(f"restrict: stratum_value must be a stratum, not the aggregate {stratum_value!r}")
        name = _column(k.stratum, stratum, "stratum", k)
        if k.stratum_value is not None and not k.is_aggregate and k.stratum_value != stratum_value:
            raise ValueError(f"restrict: {k.format()!r} is already restricted to {k.stratum}:{k.stratum_value}")
        k = replace(k, stratum=name, stratum_value=stratum_value)
    if group is not None:
        name = _column(k.attr, attr, "attr", k)
        if k.scope == "gap":
            return k  # a gap is between groups: restricting to one of them keeps the enclosing gap
        if k.group is not None and k.group != group:
            raise ValueError(f"restrict: {k.format()!r} is already restricted to {k.attr}:{k.group}")
        k = replace(k, attr=name, group=group)
    return k


def _column(own: str | None, given: str | None, what: str, key: MetricKey) -> str:
    if own is not None and given is not None and own != given:
        raise ValueError(f"restrict: {key.format()!r} has {what} {own!r}, not {given!r}")
    name = own if own is not None else given
    if name is None:
        raise ValueError(f"restrict: {key.format()!r} names no {what}; pass {what}=<column name>")
    return name
