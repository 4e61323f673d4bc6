"""Per-group evaluation (METHODS §2): utilities, supports and fairness gaps computed once.

:class:`GroupReport` is the one object that training reports, MLflow logging, the frontier and
export read; :class:`MetricKey` is the one naming scheme of its keys. Single-label reports come from
:meth:`GroupReport.compute`, multi-label ones (ES/IDI multi-hot convention) from
:meth:`GroupReport.compute_multilabel`, with targets from :func:`multi_hot` and decisions from
:func:`decide`.
"""

from fairray.metrics._keys import (
    CLASSIFICATION_TASKS,
    COUNT_METRICS,
    GAP_METRICS,
    GAP_OP_VARIANTS,
    KEY_FORMAT,
    METRICS,
    MISSING_VALUES,
    SPLITS,
    STRATUM_AGGREGATES,
    STRATUM_COLUMNS,
    TASKS,
    UTILITY_METRICS,
    MetricKey,
    MetricSpec,
    is_missing,
    metric_direction,
    restrict,
    task_metrics,
    validate_metric_name,
)
from fairray.metrics._report import (
    CLASS_AGGS,
    GAP_OPS,
    GroupReport,
    decide,
    evaluate_frame,
    format_report,
    format_thin_cells,
    multi_hot,
)
from fairray.metrics.bootstrap import (
    Interval,
    interval,
    paired_difference,
    replicate_matrix,
    speaker_bootstrap,
    speaker_replicates,
    within_noise,
)
from fairray.metrics.predictions import Predictions

__all__ = [
    "Interval",
    "Predictions",
    "interval",
    "replicate_matrix",
    "paired_difference",
    "speaker_bootstrap",
    "speaker_replicates",
    "within_noise",
    "CLASS_AGGS",
    "CLASSIFICATION_TASKS",
    "COUNT_METRICS",
    "GAP_METRICS",
    "GAP_OP_VARIANTS",
    "GAP_OPS",
    "KEY_FORMAT",
    "METRICS",
    "MISSING_VALUES",
    "SPLITS",
    "STRATUM_AGGREGATES",
    "STRATUM_COLUMNS",
    "TASKS",
    "UTILITY_METRICS",
    "GroupReport",
    "MetricKey",
    "MetricSpec",
    "decide",
    "evaluate_frame",
    "is_missing",
    "format_report",
    "format_thin_cells",
    "metric_direction",
    "multi_hot",
    "restrict",
    "task_metrics",
    "validate_metric_name",
]
