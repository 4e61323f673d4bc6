"""Typed, frozen sweep specs loaded from YAML and validated at load time."""

from fairray.config._load import LoadedSpec, build_spec, load_spec, parse_override, parse_yaml, resolve_trial, set_path
from fairray.config._spec import (
    BudgetConfig,
    CorpusSource,
    DatasetConfig,
    NamedParams,
    Objective,
    ParamSpec,
    PluginConfig,
    ResourcesConfig,
    SearchConfig,
    StorageConfig,
    SweepSpec,
    TrackingConfig,
    TrainConfig,
)
from fairray.config._typed import to_plain

__all__ = [
    "BudgetConfig",
    "CorpusSource",
    "DatasetConfig",
    "LoadedSpec",
    "NamedParams",
    "Objective",
    "ParamSpec",
    "PluginConfig",
    "ResourcesConfig",
    "SearchConfig",
    "StorageConfig",
    "SweepSpec",
    "TrackingConfig",
    "TrainConfig",
    "build_spec",
    "load_spec",
    "parse_override",
    "parse_yaml",
    "resolve_trial",
    "set_path",
    "to_plain",
]
