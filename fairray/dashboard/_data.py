"""Everything the explorer page shows, read from the MLflow store (never written to it).

:func:`collect` reads a sweep with :func:`fairray.frontier.query.load_sweep`, computes its fronts with
:func:`~fairray.frontier.query.fronts` (overall, per stratum value and per attribute group), their
speaker-bootstrap intervals with :func:`~fairray.frontier.query.shared_neighbour_noise` (from the trials'
logged predictions, one resample for all fronts), each trial's per-group metrics and its metric histories,
and the tables of the ablations the spec declares (:mod:`fairray.report`). A :class:`Cache` carries what cannot change between two
refreshes of a running sweep: the history of a finished run, the intervals of an unchanged front, the
table of an unchanged ablation.
"""

from __future__ import annotations

import functools
import math
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fairray.errors import FairrayError, TrackingError
from fairray.frontier.plot import FrontPanel, front_panel
from fairray.frontier.query import Front, Sweep, fronts, load_sweep, shared_neighbour_noise
from fairray.metrics import METRICS, MetricKey

DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
"""Where ``fairray ui`` serves the MLflow UI of a local store: the base of the run links."""
MINMAXGAP_METHODS = frozenset({"erm", "minmaxgap"})
"""An ablation of only these methods is reported in the MinMaxGAP layout, as ``fairray report`` does."""
CURVE_PREFIXES = ("method/",)
CURVE_KEYS = ("train/loss", "dev/loss")
"""Metric histories shown per trial besides its objectives: the method's own logs (``method/...``, e.g.
``method/lambda``) and the losses."""


class SweepUnavailable(TrackingError):
    """The dashboard cannot show the sweep asked for (unknown, no finished trial, store unreachable): bad input."""

    exit_code = 2


@dataclass(frozen=True)
class TrialDetail:
    """One trial's side panel: settings, per-group metrics as heat tables, curves, links."""

    trial_id: str
    run_id: str
    method: str
    params: dict[str, str]
    url: str
    export: str
    heat: dict[str, dict]
    curves: dict[str, tuple[list[int], list[float]]]


@dataclass(frozen=True)
class AblationTable:
    """A declared ablation: its report table (markdown from ``fairray report``'s code) or why there is none."""

    name: str
    markdown: str | None
    note: str


@dataclass(frozen=True)
class DashboardData:
    """What :func:`collect` read: the sweep, its fronts and panels, each trial's detail, the ablation tables,
    and the stratum column (e.g. ``language``, None without strata), groups and strata the heat tables span."""

    sweep: Sweep
    experiment_id: str
    status: str
    fronts: tuple[Front, ...]
    panels: tuple[FrontPanel, ...]
    details: dict[str, TrialDetail]
    ablations: tuple[AblationTable, ...]
    mlflow_ui: str
    command: str
    compare: dict[str, FrontPanel] = field(default_factory=dict)
    compare_label: str = ""
    notes: tuple[str, ...] = ()
    stratum: str | None = None
    groups: tuple[str, ...] = ()
    strata: tuple[str, ...] = ()


@dataclass
class Cache:
    """What a refresh may reuse: histories of finished runs, intervals of unchanged fronts, ablation tables."""

    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = field(default_factory=dict)
    noise: dict[tuple, dict] = field(default_factory=dict)
    ablations: dict[tuple, AblationTable] = field(default_factory=dict)


SQL_CONNECT_TIMEOUT_S = 10
"""How long the dashboard waits for a database server's answer before it calls the store unreachable."""


def check_store(uri: str) -> None:
    """Raise :class:`SweepUnavailable` when ``uri`` is a database server (PostgreSQL, MySQL, MSSQL) that does not
    answer or refuses the connection: one connection attempt, not MLflow's ten retries over about 100 s followed
    by a traceback. Other stores (SQLite, a tracking server) are left to the reads themselves."""
    dialect = uri.split(":", 1)[0].split("+", 1)[0]
    if dialect not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy

    where = uri.split("@", 1)[-1]  # no user name or password in the message
    timeout = {"postgresql": {"connect_timeout": SQL_CONNECT_TIMEOUT_S},
               "mysql": {"connect_timeout": SQL_CONNECT_TIMEOUT_S}}.get(dialect, {})
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=timeout)
    except (ImportError, sqlalchemy.exc.ArgumentError) as exc:
        raise SweepUnavailable(f"cannot open the MLflow store at {where}: {exc}; install its driver or fix "
                               "--tracking-uri") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SweepUnavailable(f"cannot reach the MLflow store at {where} ({reason}); is the database running and "
                               "is --tracking-uri right?") from None
    finally:
        engine.dispose()


def _client(uri: str):
    from fairray.tracking import client

    return client(uri)


def sweep_fronts(sweep: Sweep, stratum: str | None) -> list[Front]:
    """The overall front, one per stratum value (language) and one per attribute group (gender)."""
    out = list(fronts(sweep))
    for column in [c for c in (stratum, sweep.attribute) if c]:
        try:
            out += fronts(sweep, by=[column])
        except TrackingError:  # no metric is split by that column (e.g. a dataset without strata)
            continue
    return out


WHISKER_LEVEL = 0.95
"""The whiskers' coverage: 95% speaker-bootstrap percentile intervals."""
WHISKER_SEED = 0
"""The speaker resample's seed: the whiskers of one sweep are the same on every refresh."""


def _noise_key(sweep: Sweep, front: Front, n_boot: int) -> tuple:
    on = tuple(t.run_id for t, o in zip(front.trials, front.on_front, strict=True) if o)
    return (sweep.run_id, front.title, front.objectives, on, n_boot)


def _panels(sweep: Sweep, fronts_: Sequence[Front], n_boot: int, cache: Cache, notes: list[str]) -> list[FrontPanel]:
    """Each front's panel with its whiskers: those of the fronts not in ``cache`` computed together, from one
    speaker resample per split (:func:`~fairray.frontier.query.shared_neighbour_noise`); a front that cannot have
    them (predictions not logged) is drawn without, and the page notes why."""
    noise: list[dict | None] = [None] * len(fronts_)
    if n_boot > 0:
        keys = [_noise_key(sweep, front, n_boot) for front in fronts_]
        missing = [i for i, key in enumerate(keys) if key not in cache.noise]
        computed = shared_neighbour_noise(sweep, [fronts_[i] for i in missing], n_boot=n_boot, level=WHISKER_LEVEL,
                                          seed=WHISKER_SEED) if missing else []
        for i, result in zip(missing, computed, strict=True):
            if isinstance(result, TrackingError):
                message = f"no intervals for {sweep.experiment!r}: {result}"
                if message not in notes:
                    notes.append(message)
                continue
            cache.noise[keys[i]] = result
        noise = [cache.noise.get(key) for key in keys]
    return [front_panel(front, n) for front, n in zip(fronts_, noise, strict=True)]


@functools.lru_cache(maxsize=16)
def _heat_layout(attribute: str, stratum: str | None, groups: tuple[str, ...], strata: tuple[str, ...],
                 splits: tuple[str, ...]) -> dict[str, tuple[list[str], list[tuple[str, str, list[str]]]]]:
    """The heat tables' columns and candidate rows ``(split/metric, direction, metric keys)``: the same for every
    trial of a sweep, so built once (formatting the keys of 500 trials one by one took seconds)."""
    cells = [(g, s) for s in strata for g in groups] if stratum else []
    columns: list[tuple[str, str | None, str | None]] = [(f"{g} · {s}", g, s) for g, s in cells]
    columns += [(f"{g} · all", g, None) for g in groups] + [(f"all · {s}", None, s) for s in strata]
    columns.append(("all", None, None))
    gap_columns: list[tuple[str, str | None]] = [(s, s) for s in strata]
    gap_columns += [("worst", "worst"), ("mean", "mean")] if stratum else []
    gap_columns.append(("pooled", None))
    out = {}
    for kind, cols in (("utility", columns), ("gap", gap_columns)):
        rows = []
        for split in splits:
            for name, spec in METRICS.items():
                if spec.kind != kind:
                    continue
                row_keys = []
                for col in cols:
                    if kind == "utility":
                        _, g, s = col
                        key = MetricKey(split, name, attribute if g else None, g, stratum if s else None, s)
                    else:
                        _, s = col
                        key = MetricKey(split, name, attribute, None, stratum if s else None, s)
                    row_keys.append(key.format())
                rows.append((f"{split}/{name}", spec.direction, row_keys))
        out[kind] = ([c[0] for c in cols], rows)
    return out


def heat_tables(metrics: Mapping[str, float], attribute: str, stratum: str | None, groups: Sequence[str],
                strata: Sequence[str], splits: Sequence[str] = ("dev", "test")) -> dict[str, dict]:
    """Every logged metric of a trial per group x stratum: ``utility`` (rows ``split/metric``, columns
    ``group · stratum`` cells, then each group, each stratum and all) and ``gap`` (columns: each stratum,
    worst and mean over strata, pooled). Each is ``{"x": columns, "y": rows, "z": values, "good": colour values
    (1 best; ``1 - value`` for a minimised metric), "keys": metric keys}``."""
    out = {}
    layout = _heat_layout(attribute, stratum, tuple(groups), tuple(strata), tuple(splits))
    for kind, (x, candidates) in layout.items():
        rows, z, good, keys = [], [], [], []
        for name, direction, row_keys in candidates:
            values = [metrics.get(k) for k in row_keys]
            if all(v is None for v in values):
                continue
            rows.append(name)
            row = [None if v is None or not math.isfinite(v) else float(v) for v in values]
            z.append(row)
            # colour by how good the value is (1 best): a minimised metric (a gap, FPR) is shown as 1 - value
            good.append([None if v is None else (1.0 - v if direction == "min" else v) for v in row])
            keys.append(row_keys)
        out[kind] = {"x": list(x), "y": rows, "z": z, "good": good, "keys": keys}
    return out


BULK_RUNS = 500
"""Runs per bulk history query of a SQL store (SQLite allows 32766 bound variables)."""
HISTORY_THREADS = 8
"""Concurrent ``get_metric_history`` requests to a tracking server (it has no public bulk read)."""


def metric_histories(uri: str, wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """``{run_id: {key: (steps, values)}}`` of the metric keys ``wanted[run_id]``, ordered by step (then time).

    A SQL store is read with one query per key for up to :data:`BULK_RUNS` runs (its ``get_metric_history_bulk``,
    the query MLflow's UI uses), not one query per run and key: 500 trials' curves took 10 s one by one on SQLite
    and take well under a second so. Another store (a tracking server) is read per run and key, a few requests at
    a time.
    """
    c = _client(uri)
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {run_id: {} for run_id in wanted}
    points: dict[tuple[str, str], list] = {}
    # MlflowClient exposes no bulk read; its store does where the backend is SQL
    bulk = getattr(getattr(getattr(c, "_tracking_client", None), "store", None), "get_metric_history_bulk", None)
    if bulk is not None:
        by_key: dict[str, list[str]] = {}
        for run_id, keys in wanted.items():
            for key in keys:
                by_key.setdefault(key, []).append(run_id)
        for key, run_ids in by_key.items():
            for i in range(0, len(run_ids), BULK_RUNS):
                for row in bulk(run_ids[i:i + BULK_RUNS], key, max_results=2**62):
                    points.setdefault((row.run_id, key), []).append(row)  # a Metric with its run_id
    else:
        from concurrent.futures import ThreadPoolExecutor

        jobs = [(run_id, key) for run_id, keys in wanted.items() for key in keys]
        with ThreadPoolExecutor(HISTORY_THREADS) as pool:
            for job, history in zip(jobs, pool.map(lambda j: c.get_metric_history(*j), jobs), strict=True):
                points[job] = list(history)
    for (run_id, key), history in points.items():
        history = sorted(history, key=lambda m: (m.step, m.timestamp))
        if history:
            out[run_id][key] = ([int(m.step) for m in history], [float(m.value) for m in history])
    return out


def _curves(uri: str, wanted: Mapping[str, Sequence[str]], cache: Cache
            ) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """The histories of finished runs (their curves cannot change: kept in ``cache`` for the next refresh)."""
    missing = {run_id: keys for run_id, keys in wanted.items() if run_id not in cache.curves}
    if missing:
        cache.curves.update(metric_histories(uri, missing))
    return {run_id: cache.curves[run_id] for run_id in wanted}


def _run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _target_args(sweep: Sweep, ablation: str | None) -> str:
    more = f" --ablation {shlex.quote(ablation)}" if ablation else ""
    return (f"{shlex.quote(sweep.experiment)} --tracking-uri {shlex.quote(sweep.tracking_uri)} "
            f"--run-id {sweep.run_id}{more}")


def _spec_ablations(sweep: Sweep) -> list[str]:
    """Names under ``ablations:`` in the spec the sweep logged as its ``spec.yaml`` artifact."""
    import mlflow
    import yaml

    with tempfile.TemporaryDirectory(prefix="fairray-spec-") as d:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=sweep.run_id, artifact_path="spec.yaml", dst_path=d,
                                                       tracking_uri=sweep.tracking_uri)
        except Exception:  # a sweep logged before spec.yaml was: no declared ablation to show
            return []
        spec = yaml.safe_load(Path(path).read_text()) or {}
    return list((spec.get("ablations") or {}).keys())


def _ablation(sweep: Sweep, name: str, n_boot: int, cache: Cache) -> AblationTable:
    from fairray.report import idi_rows, render_markdown

    run = f"`fairray sweep SPEC --ablation {name}`"
    try:
        ablated = load_sweep(sweep.tracking_uri, sweep.experiment, ablation=name)
    except TrackingError:
        return AblationTable(name, None, f"declared in the spec, not run yet: {run}")
    if not ablated.trials:
        return AblationTable(name, None, f"run {ablated.run_id} has no finished trial yet ({ablated.n_failed} "
                                         "failed or running)")
    if n_boot < 1:
        return AblationTable(name, None, f"run {ablated.run_id}: not computed with --n-boot 0 (its table is a "
                                         "bootstrap over seeds and speakers)")
    key = (ablated.run_id, tuple(t.run_id for t in ablated.trials), n_boot)
    if key not in cache.ablations:
        title = f"{sweep.experiment} / {name}: test metrics, mean over seeds [95% speaker-bootstrap CI]"
        methods = {t.params.get("method.name") or ablated.base_params.get("method.name") for t in ablated.trials}
        try:
            if methods <= MINMAXGAP_METHODS:  # `fairray report`'s layout "auto": the MinMaxGAP paper's tables
                from fairray.report.minmaxgap import minmaxgap_report, render_minmaxgap_markdown

                tables, cells = minmaxgap_report(ablated, split="test", n_boot=n_boot)
                markdown = render_minmaxgap_markdown(tables, title=title)
            else:
                rows, cells = idi_rows(ablated, split="test", n_boot=n_boot)
                markdown = render_markdown(rows, title=title)
        except FairrayError as exc:
            return AblationTable(name, None, f"run {ablated.run_id}: {exc}")
        note = (f"MLflow run {ablated.run_id}; {len(ablated.trials)} finished trials in {len(cells)} cells; "
                f"as `fairray report SPEC --ablation {name}`")
        cache.ablations[key] = AblationTable(name, markdown, note)
    return cache.ablations[key]


def collect(tracking_uri: str, experiment: str, *, run_id: str | None = None, ablation: str | None = None,
            compare: tuple[str, ...] | None = None, n_boot: int = 200, mlflow_ui: str | None = None,
            cache: Cache | None = None) -> DashboardData:
    """Read the sweep (latest search run of ``experiment``, or ``run_id`` / ``ablation``) and everything the
    page shows; ``compare`` is ``(tracking_uri, experiment[, run_id[, ablation]])`` of another sweep drawn on
    the same axes.

    Raises
    ------
    TrackingError
        No such experiment or sweep, no finished trial, or a store that cannot be read.
    """
    cache = cache if cache is not None else Cache()
    sweep = load_sweep(tracking_uri, experiment, run_id, ablation)
    parent = _client(tracking_uri).get_run(sweep.run_id)
    stratum = sweep.base_params.get("dataset.stratum", "language")
    stratum = None if stratum in ("", "None", "null") else stratum
    fronts_ = sweep_fronts(sweep, stratum)
    notes: list[str] = []
    panels = _panels(sweep, fronts_, n_boot, cache, notes)
    compare_panels: dict[str, FrontPanel] = {}
    compare_label = ""
    if compare is not None:
        other = load_sweep(*compare)
        compare_label = f"{other.experiment}{f' / {compare[3]}' if len(compare) > 3 and compare[3] else ''} " \
                        f"({other.run_id[:8]})"
        objectives = sweep.objectives
        other_fronts = list(fronts(other, objectives=objectives))
        for column in [c for c in (stratum, sweep.attribute) if c]:
            try:
                other_fronts += fronts(other, by=[column], objectives=objectives)
            except TrackingError:
                continue
        compare_panels = {p.title: p for p in _panels(other, other_fronts, n_boot, cache, notes)}
        missing = [p.title for p in panels if p.title not in compare_panels]
        if missing:
            notes.append(f"{compare_label} has no trial metrics for {', '.join(missing)}")
    base = mlflow_ui or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else DEFAULT_MLFLOW_UI)
    strata = sorted(f.restriction[stratum] for f in fronts_ if stratum and stratum in f.restriction)
    groups = sorted(f.restriction[sweep.attribute] for f in fronts_ if sweep.attribute in f.restriction)
    overall = fronts_[0]
    pareto = {t.trial_id for t, on in zip(overall.trials, overall.on_front, strict=True) if on}
    objectives = [k for k, _ in sweep.objectives]
    export = f"fairray export {_target_args(sweep, ablation)} --out pareto/"
    method = sweep.base_params.get("method.name", parent.data.tags.get("fairray.method", ""))
    curves = _curves(tracking_uri, {t.run_id: objectives + [k for k in sorted(t.metrics) if k.startswith(
        CURVE_PREFIXES) or k in CURVE_KEYS] for t in sweep.trials}, cache)  # every trial here is FINISHED
    details = {}
    for trial in sweep.trials:
        where = (f"{export}   # writes pareto/{trial.trial_id}" if trial.trial_id in pareto else
                 f"# not Pareto-optimal on the overall front; {export} writes the front's trials only")
        details[trial.trial_id] = TrialDetail(
            trial.trial_id, trial.run_id, trial.params.get("method.name", method), dict(trial.params),
            _run_url(base, parent.info.experiment_id, trial.run_id), where,
            heat_tables(trial.metrics, sweep.attribute, stratum, groups, strata),
            curves[trial.run_id])
    # an ablation's page shows its own report table; the search's page those of every declared ablation
    names = [ablation] if ablation else _spec_ablations(sweep)
    ablations = tuple(_ablation(sweep, n, n_boot, cache) for n in names)
    command = f"fairray dashboard {_target_args(sweep, ablation)}"
    return DashboardData(sweep, parent.info.experiment_id, parent.info.status, tuple(fronts_), tuple(panels),
                         details, ablations, base, command, compare_panels, compare_label, tuple(notes), stratum,
                         tuple(groups), tuple(strata))
