"""Load a sweep spec from YAML, apply ``--set`` overrides and search-space samples, validate."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fairray._typed import Where, build
from fairray.config._spec import Constraint, ParamSpec, PluginConfig, SweepSpec
from fairray.errors import ConfigError, FairrayError

_PLUGIN_SECTIONS = ("method", "model")
GAP_OBJECTIVE_S_MIN = 5
"""``train.s_min`` of a spec that searches on a gap and sets no ``train.s_min`` (METHODS §2.6.5: a dev gap
used as a search objective needs s_min >= 5, else 1-4 clip cells decide the selection); other specs keep
the :class:`TrainConfig` default 1. An explicit ``train.s_min`` (file, ``--set`` or search space) always wins."""
_DEFAULT_PLUGIN = {"model": "mlp"}  # a section without `name` uses this plugin (method has no default)


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML with two fixes for specs: ``1e-3`` is a float (YAML 1.2, not a string as in PyYAML's
    YAML 1.1), and a key given twice in one mapping is an error instead of silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one "
                                  "mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark else ""
        raise ConfigError(f"{source}:{line} invalid YAML ({getattr(exc, 'problem', None) or exc})") from None


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec plus the plain data it came from (what trials receive and MLflow stores)."""

    spec: SweepSpec
    raw: Mapping[str, Any]
    source: str


def _plugin_registry(section: str):
    if section == "method":
        from fairray.methods import METHODS

        return METHODS
    from fairray.models import MODELS

    return MODELS


def _build_plugin(section: str, data: Any, where: Where) -> PluginConfig:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise where.error(f"expected a mapping with 'name' and the {section}'s parameters, got {data!r}")
    if "name" not in data:
        if section not in _DEFAULT_PLUGIN:
            raise where.child("name").error(f"required key is missing (the registered {section} to use)")
        data = {"name": _DEFAULT_PLUGIN[section], **data}
    try:
        plugin = _plugin_registry(section).get(data["name"])
    except FairrayError as exc:
        raise where.child("name").error(str(exc)) from None
    params = build(plugin.Params, {k: v for k, v in data.items() if k != "name"}, where)
    return PluginConfig(name=data["name"], params=params)


def build_spec(raw: Mapping[str, Any], source: str, *, check_space: bool = True) -> SweepSpec:
    """Validate plain data into a :class:`SweepSpec` (errors name ``source`` and the key path).

    ``check_space=False`` skips re-checking every search dimension and ablation point against ``raw``
    (:func:`resolve_trial`: the spec was checked at load time, and a trial's sampled values would
    otherwise be combined with choices they were never meant for).
    """
    where = Where(source)
    if not isinstance(raw, Mapping):
        raise where.error(f"expected a YAML mapping at the top level, got {raw!r}")
    data = dict(raw)
    plugins = {}
    for section in _PLUGIN_SECTIONS:
        if section in data:
            plugins[section] = _build_plugin(section, data.pop(section), where.child(section))
        elif section == "method":
            raise where.child("method").error("required key is missing (e.g. `method: {name: erm}`)")
        else:
            plugins[section] = _build_plugin(section, {}, where.child(section))
    data.update(plugins)
    if isinstance(data.get("search"), Mapping) and "constraints" in data["search"]:
        data["search"] = {**data["search"], "constraints": _parse_constraints(
            data["search"]["constraints"], where.child("search").child("constraints"))}
    spec = build(SweepSpec, data, where)
    _check_dataset(spec, source)
    _check_method_data(spec, source)
    if check_space:  # a trial (or predict) builds its model from the prepared data's inputs, checked there
        _check_model(spec, source)
        _check_space(spec, raw, source)
        _check_ablations(spec, raw, source)
    _check_objectives(spec, source)
    _check_constraints(spec, source)
    _check_early_stopping(spec, source)
    _check_repeats(spec, raw, source)
    return _default_s_min(spec, raw)


def _check_repeats(spec: SweepSpec, raw: Mapping[str, Any], source: str) -> None:
    """``budget.repeats`` sets ``train.seed``: the search may not sample it, nor an ablation list seeds too."""
    repeats = spec.budget.repeats
    if repeats == 1:
        return
    where = Where(source, "budget.repeats")
    if "train.seed" in spec.search.space:
        raise where.error(f"{repeats} sets train.seed for each repeat, and search.space samples train.seed too; drop "
                          "one of them")
    for name, ablation in (raw.get("ablations") or {}).items():
        if isinstance(ablation, Mapping) and "seeds" in ablation:
            raise where.error(f"{repeats} repeats each configuration under {repeats} seeds, and ablations.{name}.seeds "
                              f"{ablation['seeds']!r} lists seeds already; drop one of them")


def _parse_constraints(items: Any, where: Where) -> Any:
    """``search.constraints`` texts -> :class:`Constraint` (mappings are left to the typed builder)."""
    if not isinstance(items, (list, tuple)):
        raise where.error(f"expected a list such as ['dev/weighted_f1 >= 0.40'], got {items!r}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            out.append(item)
            continue
        try:
            out.append(Constraint.parse(item))
        except ValueError as exc:
            raise where.child(i).error(str(exc)) from None
    return out


def _check_dev_metric(spec: SweepSpec, metric: str, where: Where, role: str):
    """``metric`` must be a dev metric of the key scheme that the dataset's targets, attribute and stratum give;
    returns its parsed key."""
    from fairray.metrics import metric_direction, task_metrics, validate_metric_name

    try:
        key = validate_metric_name(metric)
    except ValueError as exc:
        raise where.error(str(exc)) from None
    if key.split != "dev":
        raise where.error(f"{role} must use dev metrics, got {metric!r} (test metrics are logged for reporting only, "
                          "never used to select or steer)")
    available = task_metrics(spec.dataset.targets)
    if key.metric not in available:
        raise where.error(f"{key.metric!r} is not computed for {spec.dataset.targets}-label targets "
                          f"(dataset.targets); available: {', '.join(available)}")
    if key.attr is not None and key.attr != spec.dataset.attribute:
        raise where.error(f"attribute {key.attr!r} in {metric!r} is not the dataset's attribute "
                          f"{spec.dataset.attribute!r}")
    if key.stratum is not None and key.stratum != spec.dataset.stratum:
        raise where.error(f"stratum {key.stratum!r} in {metric!r} is not the dataset's stratum "
                          f"{spec.dataset.stratum!r}")
    try:
        metric_direction(key)
    except ValueError:
        raise where.error(f"{metric!r} is a count, not something to {role.split()[0]} on") from None
    return key


def _check_constraints(spec: SweepSpec, source: str) -> None:
    """Each constraint names a dev metric every trial reports (its final report holds every dev metric)."""
    seen = set()
    for i, constraint in enumerate(spec.search.constraints):
        where = Where(source, f"search.constraints[{i}]")
        _check_dev_metric(spec, constraint.metric, where, "constraints")
        if str(constraint) in seen:
            raise where.error(f"constraint {str(constraint)!r} is listed twice")
        seen.add(str(constraint))


def _check_early_stopping(spec: SweepSpec, source: str) -> None:
    """Early stopping needs a rung before the last epoch and objectives the loop reports every epoch."""
    stopping = spec.search.early_stopping
    if stopping is None:
        return
    where = Where(source, "search.early_stopping")
    epochs = spec.search.max_epochs(spec.train.epochs)
    if stopping.grace >= epochs:
        raise where.child("grace").error(f"the first rung ({stopping.grace} epochs) must come before the last epoch "
                                         f"(train.epochs {epochs}); lower grace or drop early_stopping")
    from fairray.metrics import metric_direction
    from fairray.train.loop import headline

    searched = {o.metric for o in spec.search.objectives}
    seen = set()
    for i, objective in enumerate(stopping.objectives):
        w = where.child("objectives").child(i).child("metric")
        key = _check_dev_metric(spec, objective.metric, w, "early stopping")
        per_epoch = objective.metric in searched or bool(headline({objective.metric: 0.0}))
        if not per_epoch:
            raise w.error(f"{objective.metric!r} is not reported every epoch, so no rung can compare it; use a search "
                          "objective, an overall utility or pooled/worst/mean gap (per-group and "
                          "per-stratum metrics are reported after the last epoch only)")
        if key.is_gap and objective.direction.value != metric_direction(key):
            raise w.error(f"{objective.metric!r} is a gap (lower is fairer); its direction must be 'min', got "
                          f"{objective.direction.value!r}")
        if objective.metric in seen:
            raise w.error(f"objective {objective.metric!r} is listed twice")
        seen.add(objective.metric)


def _default_s_min(spec: SweepSpec, raw: Mapping[str, Any]) -> SweepSpec:
    """``spec`` with ``train.s_min = GAP_OBJECTIVE_S_MIN`` when a search objective is a gap and ``raw`` sets none."""
    train = raw.get("train")
    if isinstance(train, Mapping) and "s_min" in train:
        return spec
    from fairray.metrics import MetricKey

    if not any(MetricKey.parse(o.metric).is_gap for o in spec.search.objectives):
        return spec
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, s_min=GAP_OBJECTIVE_S_MIN))


def set_path(raw: dict[str, Any], dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``a.b.c = value`` in nested dicts, creating intermediate mappings.

    Switching a plugin (``method.name: erm`` over a spec whose method is ``minmaxgap``) keeps the section's
    parameters the new plugin also has (``loss``) and drops those of the old one (``lambda_max``): they
    would be unknown keys of the new plugin. Set the name before its parameters (:func:`apply_params`)."""
    keys = dotted.split(".")
    if len(keys) == 2 and keys[0] in _PLUGIN_SECTIONS and keys[1] == "name":
        section = raw.get(keys[0])
        old = section if isinstance(section, Mapping) else {"name": section} if isinstance(section, str) else {}
        if old.get("name") != value:
            raw[keys[0]] = {"name": value, **_shared_params(keys[0], value, old)}
            return
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if isinstance(child, str) and key in _PLUGIN_SECTIONS:
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            child = dict(child) if isinstance(child, Mapping) else child
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: cannot set it, {key!r} holds {child!r}, not a mapping")
        node[key] = child
        node = child
    node[keys[-1]] = value


def _shared_params(section: str, name: Any, old: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``old`` (a plugin section) that the plugin ``name`` also takes."""
    try:
        fields = {f.name for f in dataclasses.fields(_plugin_registry(section).get(name).Params)}
    except FairrayError:
        return {}  # an unknown name: build_spec says so, naming the valid ones
    return {k: v for k, v in old.items() if k != "name" and k in fields}


def apply_params(raw: dict[str, Any], params: Mapping[str, Any], source: str = "trial") -> None:
    """Set dotted ``params`` in ``raw``, plugin names (``method.name``) first so that their parameters land on
    the plugin they belong to."""
    first = [k for k in params if k.split(".")[-1] == "name" and k.split(".")[0] in _PLUGIN_SECTIONS]
    for key in [*first, *(k for k in params if k not in first)]:
        value = params[key]
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {key}: sampled value {value!r} is not finite")
        set_path(raw, key, value, source)


def conditions(dim: ParamSpec) -> dict[str, tuple[Any, ...]]:
    """A dimension's ``when`` as ``{path: allowed values}`` (a single value becomes a one-element tuple)."""
    if not dim.when:
        return {}
    return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in dim.when.items()}


def _check_space(spec: SweepSpec, raw: Mapping[str, Any], source: str) -> None:
    """Each dimension must be well formed and its values must be valid at its config path — in every
    combination of the values its ``when`` conditions allow."""
    seen: dict[str, ParamSpec] = {}
    for path, dim in spec.search.space.items():
        where = Where(source, f"search.space.{path}")
        values = _representatives(dim, where)
        if path.startswith("dataset.") and dim.type != "categorical":
            raise where.child("type").error(f"dataset dimensions must be categorical (each value prepares its own "
                                            f"dataset before the trials start), got {dim.type!r}")
        cond = conditions(dim)
        for key, allowed in cond.items():
            parent = seen.get(key)
            if parent is None or parent.type != "categorical":
                raise where.child("when").child(key).error(
                    f"a condition must name a categorical dimension listed before {path!r} in search.space; "
                    f"earlier categorical dimensions: {[k for k, d in seen.items() if d.type == 'categorical']}")
            bad = [v for v in allowed if v not in parent.choices]
            if bad:
                raise where.child("when").child(key).error(
                    f"value(s) {bad} are not among the choices of {key} {list(parent.choices)}")
        seen[path] = dim
        for assignment in _product(cond):
            for value in values:
                trial_raw = copy.deepcopy(dict(raw))
                trial_raw.pop("search", None)
                trial_raw.pop("ablations", None)
                try:
                    for key, v in assignment.items():
                        set_path(trial_raw, key, v)
                    set_path(trial_raw, path, value)
                    build_spec(trial_raw, source)
                except ConfigError as exc:
                    context = f" with {assignment}" if assignment else ""
                    hint = ""
                    if not cond and any(d.type == "categorical" for d in seen.values() if d is not dim):
                        hint = "; if it applies to some choices only, add e.g. `when: {method.name: [...]}`"
                    raise where.error(f"value {value!r}{context} is not valid there "
                                      f"({_strip_source(exc, source)}){hint}") from None


def _product(grid: Mapping[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def ablation_points(spec: SweepSpec, name: str) -> list[dict[str, Any]]:
    """The trial parameters of ablation ``name``: every cell's grid expanded, deduplicated, times its seeds."""
    if name not in spec.ablations:
        raise ConfigError(f"--ablation {name!r}: no such ablation in the spec; declared: "
                          f"{sorted(spec.ablations) or 'none (add an `ablations:` section)'}")
    ablation = spec.ablations[name]
    points: list[dict[str, Any]] = []
    for cell in ablation.cells:
        for point in _product({k: tuple(v) for k, v in cell.items()}):
            if point not in points:
                points.append(point)
    seeds = ablation.seeds  # budget.repeats (never with listed seeds: _check_repeats) gives train.seed + 0, 1, ...
    if spec.budget.repeats > 1:
        seeds = tuple(spec.train.seed + r for r in range(spec.budget.repeats))
    return [{**point, "train.seed": seed} for seed in seeds for point in points]


def _check_ablations(spec: SweepSpec, raw: Mapping[str, Any], source: str) -> None:
    """Every point of every declared ablation must be a valid spec."""
    for name, ablation in spec.ablations.items():
        where = Where(source, f"ablations.{name}")
        if not ablation.cells:
            raise where.child("cells").error("an ablation needs at least one cell, e.g. [{method.name: [erm, rw]}]")
        if not ablation.seeds:
            raise where.child("seeds").error("an ablation needs at least one seed, e.g. [0]")
        for i, cell in enumerate(ablation.cells):
            for key, values in cell.items():
                if not values:
                    raise where.child("cells").child(i).child(key).error("needs a non-empty list of values")
                if key == "train.seed":
                    raise where.child("cells").child(i).child(key).error("seeds are set by `seeds:`, not in a cell")
        points = ablation_points(spec, name)
        for point in points[:len(points) // len(ablation.seeds)]:  # the first seed's: a seed is always valid
            trial_raw = copy.deepcopy(dict(raw))
            trial_raw.pop("search", None)
            trial_raw.pop("ablations", None)
            try:
                apply_params(trial_raw, point, "--set")
                build_spec(trial_raw, source)
            except ConfigError as exc:
                raise where.error(f"point {point} is not a valid spec ({_strip_source(exc, source)})") from None


def _strip_source(exc: ConfigError, source: str) -> str:
    msg = str(exc)
    return msg[len(source) + 2:] if msg.startswith(source + ": ") else msg


def _representatives(dim: ParamSpec, where: Where) -> list[Any]:
    if dim.type == "categorical":
        if not dim.choices:
            raise where.child("choices").error("a categorical dimension needs a non-empty list of choices")
        if any(k is not None for k in (dim.low, dim.high, dim.step)):
            raise where.error("a categorical dimension takes only 'choices'")
        return list(dim.choices)
    if dim.choices is not None:
        raise where.child("choices").error(f"'choices' only applies to type categorical, not {dim.type!r}")
    for key in ("low", "high"):
        if getattr(dim, key) is None:
            raise where.child(key).error(f"required for type {dim.type!r}")
    low, high = dim.low, dim.high
    if not low < high:
        raise where.error(f"needs low < high, got low={low!r}, high={high!r}")
    if dim.type == "loguniform" and low <= 0:
        raise where.child("low").error(f"a log-uniform dimension needs low > 0, got {low!r}")
    if dim.type == "int":
        for key in ("low", "high"):
            if float(getattr(dim, key)) != int(getattr(dim, key)):
                raise where.child(key).error(f"an int dimension needs integer bounds, got {getattr(dim, key)!r}")
        if dim.log and low <= 0:
            raise where.child("low").error(f"a log-scaled int dimension needs low >= 1, got {low!r}")
        if dim.step is not None and (dim.step <= 0 or float(dim.step) != int(dim.step) or dim.log):
            raise where.child("step").error(f"an int step must be a positive integer and not used with log, "
                                            f"got {dim.step!r}")
        return [int(low), int(high)]
    if dim.step is not None and (dim.step <= 0 or dim.type == "loguniform" or dim.log):
        raise where.child("step").error(f"step must be > 0 and not combined with a log scale, got {dim.step!r}")
    if dim.log and low <= 0:
        raise where.child("low").error(f"a log-scaled dimension needs low > 0, got {low!r}")
    return [float(low), float(high)]


def _check_dataset(spec: SweepSpec, source: str) -> None:
    """Registered dataset, corpus adapters, protocol (and its parameters) and extractor (and its Params)."""
    ds = spec.dataset
    where = Where(source, "dataset")
    from fairray.data import DATASETS

    try:
        DATASETS.get(ds.name)
    except FairrayError as exc:
        raise where.child("name").error(str(exc)) from None
    from fairray.data.protocols import PROTOCOLS, check_protocol_params

    for key in ("protocol", "resample"):
        named = getattr(ds, key)
        if named is not None:
            try:
                check_protocol_params(named.name, dict(named.params))
            except FairrayError as exc:
                raise where.child(key).error(str(exc)) from None
            if key == "protocol" and getattr(PROTOCOLS.get(named.name), "needs_split", False):
                raise where.child(key).child("name").error(
                    f"{named.name!r} resamples inside existing train/dev/test splits; put it under dataset.resample "
                    "(dataset.protocol decides the split)")
    from fairray.data.groups import aux_extractors

    try:
        aux = aux_extractors(ds.groups.name, dict(ds.groups.params))
    except FairrayError as exc:
        raise where.child("groups").error(str(exc)) from None
    for name, icfg in ds.inputs.items():  # a tokenizer folder must exist and load (cached per process)
        if icfg.kind == "tokens":
            from fairray.data._inputs import tokenizer_facts

            try:
                tokenizer_facts(icfg.tokenizer)
            except FairrayError as exc:
                raise where.child("inputs").child(name).child("tokenizer").error(str(exc)) from None
    waveforms = [name for name, icfg in ds.inputs.items() if icfg.kind == "waveform"]
    cache_root = ds.cache or f"{spec.storage.path.rstrip('/')}/features"
    if waveforms and "://" in cache_root and not cache_root.startswith("file://"):
        # the driver decodes once and memory-maps the samples; trials get them through Ray's object store
        raise where.child("cache").error(
            f"waveform input {waveforms[0]!r} is memory-mapped from a local cache folder, but the cache is "
            f"{cache_root}" + ("" if ds.cache else " (storage.path/features: dataset.cache is not set)")
            + "; set dataset.cache to a local or mounted folder on the machine that starts the sweep")
    if ds.ood is not None:  # GEAR's OOD test sets cluster declared vector / sequence inputs
        from fairray.data._ood import check_ood

        check_ood(ds, where.child("ood"))
    if ds.name != "corpora":
        # the built-in data ships resemblyzer speaker embeddings; anything else needs the audio
        audio_only = sorted(f"{a} ({extractor})" for a, (extractor, _) in aux.items()
                            if (a, extractor) != ("speaker_emb", "resemblyzer"))
        if audio_only:
            raise where.child("groups").child("name").error(
                f"group source {ds.groups.name!r} reads {audio_only} computed from audio; dataset {ds.name!r} has no "
                "audio — use `dataset.name: corpora` with the corpora's folders")
        return
    from fairray.data.corpora import CORPORA, vote_corpora
    from fairray.data.features import EXTRACTORS

    for i, corpus in enumerate(ds.corpora):
        try:
            adapter = CORPORA.get(corpus.adapter)
        except FairrayError as exc:
            raise where.child("corpora").child(i).child("adapter").error(str(exc)) from None
        instance = adapter.from_options(corpus.options, where.child("corpora").child(i).child("options"))
        _check_corpus_inputs(ds, i, corpus, instance, where)
        if ds.targets == "multi" and adapter.has_votes is False:
            raise where.child("corpora").child(i).child("adapter").error(
                f"targets: multi needs per-clip soft labels from rater votes (soft_<class> columns); {corpus.adapter!r} "
                f"carries none; corpora with votes: {', '.join(vote_corpora())} (a manifest may carry soft_<class>)")
        continuous = getattr(adapter, "continuous_targets", ())
        if ds.targets == "regression" and ds.target_column not in continuous:
            with_target = sorted(n for n in CORPORA.names() if getattr(CORPORA.get(n), "continuous_targets", ()))
            raise where.child("corpora").child(i).child("adapter").error(
                f"targets: regression needs the continuous target column {ds.target_column!r}, which corpus "
                f"{corpus.adapter!r} does not have"
                + (f" (it has {', '.join(continuous)}; set dataset.target)" if continuous else "")
                + f"; corpora with a continuous target: {', '.join(with_target)} (or use targets: single)")
    if ds.extractor is None:  # the corpora's own features: checked when they are read
        return
    try:
        extractor = EXTRACTORS.get(ds.extractor.name)
    except FairrayError as exc:
        raise where.child("extractor").child("name").error(str(exc)) from None
    build(extractor.Params, dict(ds.extractor.params), where.child("extractor").child("params"))


def _check_corpus_inputs(ds, i: int, corpus, adapter, where: Where) -> None:
    """Each named input must be something corpus ``i`` can give: audio for a waveform, transcripts for tokens."""
    from fairray.data._inputs import missing_transcripts, transcript_corpora

    for name, icfg in ds.inputs.items():
        at = where.child("inputs").child(name)
        if icfg.kind == "waveform" and getattr(adapter, "metadata_only", False):
            raise at.error(f"kind waveform reads audio, but corpus {corpus.adapter!r} (dataset.corpora[{i}]) is "
                           "loaded with metadata_only: true (no audio); drop the option or this input")
        if icfg.kind == "tokens":
            why = missing_transcripts(corpus.adapter, corpus.root, icfg.text_column)
            if why:
                raise at.error(f"kind tokens reads transcripts, but corpus {corpus.adapter!r} at {corpus.root} "
                               f"(dataset.corpora[{i}]) has none: {why}; corpora with transcripts: "
                               f"{', '.join(transcript_corpora())}")


def _check_method_data(spec: SweepSpec, source: str) -> None:
    """The method can train on the dataset section (:meth:`fairray.methods.Method.check_dataset`)."""
    from fairray.methods import METHODS

    dialogues: bool | None = False  # the built-in data has none
    if spec.dataset.name == "corpora":
        from fairray.data.corpora import CORPORA

        known = [getattr(CORPORA.get(c.adapter), "dialogues", None) for c in spec.dataset.corpora]
        dialogues = False if any(k is False for k in known) else None if None in known else True
    method = METHODS.get(spec.method.name)
    if spec.dataset.targets == "regression" and not getattr(method, "regression", False):
        takes = sorted(n for n in METHODS.names() if getattr(METHODS.get(n), "regression", False))
        raise Where(source, "method.name").error(
            f"{spec.method.name!r} trains on class labels (it is not declared for regression: its loss, sampler "
            f"or state reads classes or class counts), and dataset.targets is regression, which has none; use one "
            f"of {', '.join(takes)} (with loss: l1), or targets: single")
    if spec.dataset.targets == "regression" and spec.train.sampler == "class_balanced":
        raise Where(source, "train.sampler").error(
            "'class_balanced' draws batches by class, and dataset.targets is regression (no classes); use uniform, "
            "group_balanced, stratified_cells or auto")
    loss = getattr(spec.method.params, "loss", None)
    if spec.dataset.targets == "regression" and loss is not None and loss != "l1":
        raise Where(source, "method.loss").error(
            f"{loss!r} is a loss over class probabilities, and dataset.targets is regression (a float target, one "
            "model output); set method.loss: l1 (the absolute error, MAE)")
    if spec.dataset.targets != "regression" and loss == "l1":
        raise Where(source, "method.loss").error(
            f"'l1' is the regression loss, and dataset.targets is {spec.dataset.targets!r} (class labels); use ce, "
            "cb_ce or focal, or dataset.targets: regression")
    why = method.check_dataset(spec.method.params, spec.dataset, dialogues)
    if why:
        raise Where(source, "method").error(why)


def _check_model(spec: SweepSpec, source: str) -> None:
    """The model must read the inputs the dataset section declares (kinds and layout, e.g. stacked layers)."""
    from fairray.data import declared_inputs
    from fairray.models import check_model

    try:
        check_model(spec.model.name, spec.model.params, declared_inputs(spec.dataset))
    except FairrayError as exc:
        raise Where(source, "model").error(str(exc)) from None


def _check_objectives(spec: SweepSpec, source: str) -> None:
    from fairray.metrics import metric_direction, task_metrics, validate_metric_name

    seen = set()
    for i, objective in enumerate(spec.search.objectives):
        where = Where(source, f"search.objectives[{i}].metric")
        try:
            key = validate_metric_name(objective.metric)
        except ValueError as exc:
            raise where.error(str(exc)) from None
        available = task_metrics(spec.dataset.targets)
        if key.metric not in available:
            raise where.error(f"{key.metric!r} is not computed for {spec.dataset.targets}-label targets "
                              f"(dataset.targets); available: {', '.join(available)}")
        if key.split != "dev":
            raise where.error(f"objectives select trials and must use dev metrics, got {objective.metric!r} "
                              "(test metrics are logged for reporting only)")
        if key.attr is not None and key.attr != spec.dataset.attribute:
            raise where.error(f"attribute {key.attr!r} in {objective.metric!r} is not the dataset's "
                              f"attribute {spec.dataset.attribute!r}")
        if key.stratum is not None and key.stratum != spec.dataset.stratum:
            raise where.error(f"stratum {key.stratum!r} in {objective.metric!r} is not the dataset's "
                              f"stratum {spec.dataset.stratum!r}")
        try:
            natural = metric_direction(key)
        except ValueError:
            raise where.error(f"{objective.metric!r} is a count, not something to optimise") from None
        if key.is_gap and objective.direction.value != natural:
            raise where.error(f"{objective.metric!r} is a gap (lower is fairer); its direction must be 'min', "
                              f"got {objective.direction.value!r}")
        if objective.metric in seen:
            raise where.error(f"objective {objective.metric!r} is listed twice")
        seen.add(objective.metric)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` → (path, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: invalid key {key!r}")
    parsed = parse_yaml(value, f"--set {text}") if value.strip() else ""
    return key, parsed


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> LoadedSpec:
    """Read, override and validate a sweep spec. Raises :class:`ConfigError` with file, key and value."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{source}: no such file; pass a sweep spec such as search_spaces/minmaxgap.yaml")
    raw = parse_yaml(p.read_text(), source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {raw!r}")
    overrides = list(overrides)
    for text in overrides:
        key, value = parse_override(text)
        set_path(raw, key, value, f"{source} (with --set {text})")
    if overrides:  # validated once, after all of them: --set order does not matter
        source_with = f"{source} (with --set {' '.join(overrides)})"
        return LoadedSpec(spec=build_spec(raw, source_with), raw=raw, source=source)
    return LoadedSpec(spec=build_spec(raw, source), raw=raw, source=source)


def resolve_trial(raw: Mapping[str, Any], params: Mapping[str, Any], source: str = "trial") -> LoadedSpec:
    """The spec of one trial: ``raw`` with sampled ``params`` (dotted paths) applied."""
    trial_raw = copy.deepcopy(dict(raw))
    apply_params(trial_raw, params, source)
    return LoadedSpec(spec=build_spec(trial_raw, source, check_space=False), raw=trial_raw, source=source)
