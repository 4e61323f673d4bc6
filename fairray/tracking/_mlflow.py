"""MLflow: one parent run per sweep, one child run per trial, never left RUNNING.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids (no global
"active run"), so it behaves the same in the driver, in Tune trial processes and in Ray Train
workers, and with a local SQLite store or a remote tracking server.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairray.errors import ConfigError, TrackingError

TAG_KIND = "fairray.kind"  # "sweep" | "trial" | "train"
TAG_SWEEP = "fairray.sweep"
TAG_TRIAL = "fairray.trial_id"
TAG_METHOD = "fairray.method"
TAG_DATASET = "fairray.dataset"
TAG_FAILURE = "fairray.failure_reason"
TAG_OBJECTIVES = "fairray.objectives"
TAG_STORAGE = "fairray.storage"
TAG_SEARCHED = "fairray.searched_params"
TAG_ABLATION = "fairray.ablation"  # set on the parent run of `fairray sweep SPEC --ablation NAME`
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
#: The experiment tag MLflow's UI reads for an experiment's type; ``custom_model_development`` is a
#: model-training experiment (runs table), ``genai_development`` a GenAI one (traces overview).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow 3.17's UI picks GenAI or model-training pages from its global workflow switch (stored in the
#: browser, GenAI by default); this URL parameter selects model training for the page it opens.
WORKFLOW_QUERY = "workflowType=machine_learning"
#: An experiment tag ``mlflow.sharedViewState.<key>`` holds a runs-table view (columns, sort, expanded
#: rows) that the URL parameter ``viewStateShareKey=<key>`` opens, as MLflow's own "Share" button does.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def shown_uri(uri: str | None) -> str:
    """``uri`` as it may be printed, logged or stored: a ``user:password@`` in its network location (a database
    URI, ``https://user:token@host``) becomes ``***@``; everything else is kept."""
    from urllib.parse import urlsplit, urlunsplit

    if not uri or "@" not in uri or "://" not in uri:
        return str(uri)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri.split("://", 1)[0] + "://***"
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def local_path(path: str) -> Path:
    return Path(path[len("file://"):] if path.startswith("file://") else path).expanduser().resolve()


def default_tracking_uri(storage_path: str) -> str:
    """A SQLite store inside the storage folder (no server to start)."""
    if is_remote(storage_path):
        raise ConfigError(f"storage.path {storage_path!r} is remote, so a local MLflow store cannot live there; "
                          "set tracking.uri to your MLflow server (e.g. http://mlflow:5000)")
    root = local_path(storage_path)
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


_READY: set[str] = set()  # SQLite stores whose schema this process has seen complete


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for an in-memory or non-SQLite store)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def client(uri: str):
    """An MLflow client of ``uri``. A SQLite store is opened the first time in this process under an exclusive
    lock on ``<db>.lock`` beside it: MLflow creates a fresh store's schema without a guard, so two processes that
    open one fresh file at once (two sweeps, or a sweep's trials) both create its tables and one fails with ``table
    ... already exists`` or reads a schema half migrated. The lock is a ``flock`` of a file next to the database,
    so it holds for every process that reaches that file (one machine, or a shared filesystem of a cluster)."""
    db = _sqlite_file(uri)
    if db is None or uri in _READY or not db.parent.is_dir():
        return _open(uri)
    import fcntl

    # the store's module takes seconds to import: import it before the lock, so processes opening the store at
    # once (a sweep's trial workers) wait only for each other's schema check, not for each other's imports
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        c = _open(uri)  # opens the store: creates or migrates its schema, once per process
    _READY.add(uri)
    return c


class StagedStore:
    """A fresh SQLite MLflow store built aside (:func:`stage_sqlite_store`): :meth:`place` puts it at its path,
    :meth:`discard` removes it. Nothing exists at the store's path until :meth:`place`."""

    def __init__(self, db: Path, staged: Path) -> None:
        self.db, self.staged = db, staged

    def place(self) -> None:
        """Link the staged store in at its path, unless a store appeared there meanwhile (it is then kept, and the
        staged one dropped); the folder above is created as opening the store would."""
        import shutil

        try:
            self.db.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.db.with_name(f".{self.db.name}.{os.getpid()}.staged")
            try:
                os.link(self.staged, tmp)
            except OSError:  # another filesystem (the staged store lies in the temp folder): copy it over
                shutil.copyfile(self.staged, tmp)
            try:
                os.link(tmp, self.db)  # never replaces a store another process created meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        finally:
            self.discard()

    def discard(self) -> None:
        for path in (self.staged, self.staged.with_name(self.staged.name + ".lock")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def stage_sqlite_store(uri: str) -> StagedStore | None:
    """For a SQLite ``uri`` whose file does not exist yet: create its schema (MLflow runs every Alembic migration:
    seconds of CPU) in a temporary file now, so that a caller can overlap it with other start-up work and
    :meth:`StagedStore.place` it once it may write (a sweep: after its data was read). None for another store,
    or one that exists (nothing to create)."""
    db = _sqlite_file(uri)
    if db is None or db.exists():
        return None
    folder = db.parent if db.parent.is_dir() else None  # the system's temp folder when the store's is not there yet
    fd, name = tempfile.mkstemp(prefix=f".{db.name}.", suffix=".staging", dir=folder)
    os.close(fd)
    staged = StagedStore(db, Path(name))
    try:
        c = client(f"sqlite:///{name}")
        store = getattr(getattr(c, "_tracking_client", None), "store", None)
        engine = getattr(store, "engine", None)
        if engine is not None:  # no connection left on the file that is moved
            engine.dispose()
    except BaseException:
        staged.discard()
        raise
    return staged


_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
            "MySQLdb": "mysqlclient", "pyodbc": "pyodbc", "pymssql": "pymssql"}


def _open(uri: str):
    """``MlflowClient(uri)``; a database URI whose SQLAlchemy driver is not installed is one ConfigError."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri)
    except ModuleNotFoundError as exc:
        if exc.name not in _DRIVERS:
            raise
        raise ConfigError(f"the MLflow store {shown_uri(uri)} needs the database driver {exc.name!r}, which is not "
                            f"installed: pip install '{_DRIVERS[exc.name]}' (or name an installed driver in the URI, "
                            "e.g. postgresql+psycopg2://)") from None


def ensure_experiment(uri: str, name: str, storage_path: str) -> str:
    """Get or create the experiment; local stores keep artifacts under ``storage_path/mlartifacts``."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older fairray, or by hand
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    artifact_location = None
    if not is_remote(storage_path) and not uri.startswith(("http://", "https://", "databricks")):
        artifact_location = (local_path(storage_path) / "mlartifacts" / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifact_location,
                                   tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"a.b.c": "value"}`` for MLflow params."""
    if isinstance(data, Mapping):
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    value = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return {prefix[:-1]: value[:6000]}


def _rows(values: Mapping[str, float], step: int) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp ms, step)`` of each value (plain tuples: no MLflow needed to make them)."""
    now = int(time.time() * 1000)
    return [(k, float(v), now, step) for k, v in values.items() if v is not None]


def _metrics_of(rows: Iterable[tuple[str, float, int, int]]) -> list:
    """:func:`_rows` as ``mlflow.entities.Metric``."""
    from mlflow.entities import Metric

    return [Metric(*row) for row in rows]


def _metrics(values: Mapping[str, float], step: int):
    """Every value is logged: NaN as NaN, ±inf as MLflow's ±1.8e308 (order kept) — never dropped."""
    return _metrics_of(_rows(values, step))


def _sql_log_metrics(store, run_id: str, metrics: list) -> bool:
    """Write ``metrics`` into an MLflow SQL store in one transaction of two multi-row inserts (the history rows,
    then the new keys' latest values) plus one update per key whose latest value moved; False when ``store`` is not
    MLflow's SQL store (nothing written).

    ``SqlAlchemyStore.log_batch`` builds one ORM object per row and per latest value: ~0.1 s for the ~850 rows of a
    10-epoch trial on SQLite, about 4x this path (``tests/tracking/test_metric_rows.py`` checks both store the
    same). The rows are MLflow's own (its ORM tables, its value sanitising and validation, its "latest" rule: the
    greatest (step, timestamp, value)); the run must be active, as for ``log_batch``. Metrics of a logged model or
    dataset go through ``log_batch``, which links them. A database error (a row already stored, a deadlock) rolls the transaction back and is
    raised, so that the caller can hand the same rows to ``log_batch``, which resolves those cases itself.
    """
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover - a tracking-only MLflow install has no SQL store
        return False
    if type(store) is not SqlAlchemyStore:  # a subclass may store metrics its own way
        return False
    if any(getattr(m, "model_id", None) or getattr(m, "dataset_digest", None) for m in metrics):
        return False
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from mlflow.utils.validation import _validate_metric
    from sqlalchemy import insert

    rows, seen, latest = [], set(), {}
    for i, m in enumerate(metrics):
        _validate_metric(m.key, m.value, m.timestamp, m.step, path=f"metrics[{i}]")
        is_nan, value = store.sanitize_metric_value(m.value)
        ident = (m.key, value, is_nan, m.timestamp, m.step)
        if ident in seen:  # log_batch drops a repeated row in one batch too
            continue
        seen.add(ident)
        row = {"run_uuid": run_id, "key": m.key, "value": value, "timestamp": m.timestamp, "step": m.step,
               "is_nan": is_nan}
        rows.append(row)
        old = latest.get(m.key)
        # MLflow's rule: a key's latest value is its row of greatest (step, timestamp, value)
        if old is None or (m.step, m.timestamp, value) > (old["step"], old["timestamp"], old["value"]):
            latest[m.key] = row
    if not rows:
        return True
    with store.ManagedSessionMaker(read_only=False) as session:
        store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
        session.execute(insert(SqlMetric), rows)
        keys = sorted(latest)
        stored = {}
        for i in range(0, len(keys), 500):  # as MLflow: bounded IN lists, rows locked in key order
            stored.update((m.key, m) for m in session.query(SqlLatestMetric)
                          .filter(SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key.in_(keys[i:i + 500]))
                          .order_by(SqlLatestMetric.run_uuid, SqlLatestMetric.key).with_for_update())
        new = [dict(latest[k]) for k in keys if k not in stored]
        if new:
            session.execute(insert(SqlLatestMetric), new)
        for k, old in stored.items():
            row = latest[k]
            if (row["step"], row["timestamp"], row["value"]) > (old.step, old.timestamp, old.value):
                old.value, old.step, old.timestamp, old.is_nan = row["value"], row["step"], row["timestamp"], row["is_nan"]
        session.commit()
    return True


def _send_metrics(c, run_id: str, metrics: list) -> None:
    """``metrics`` (a list of ``mlflow.entities.Metric``) into run ``run_id``: with :func:`_sql_log_metrics` on a
    SQL store, else (a tracking server, a file store, or a database error of the fast path) ``log_batch`` in
    batches of at most :data:`_BATCH`."""
    if not metrics:
        return
    store = getattr(getattr(c, "_tracking_client", None), "store", None)
    if store is not None:
        from mlflow.exceptions import MlflowException

        try:
            if _sql_log_metrics(store, run_id, metrics):
                return
        except MlflowException as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if not isinstance(exc.__cause__, SQLAlchemyError):  # an invalid metric, a run not active: as log_batch
                raise
    for i in range(0, len(metrics), _BATCH):
        c.log_batch(run_id, metrics=metrics[i:i + _BATCH])


def log_metrics(uri: str, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
    _send_metrics(client(uri), run_id, _metrics(values, step))


@dataclass(frozen=True)
class SweepRun:
    uri: str
    experiment_id: str
    run_id: str


def start_sweep_run(uri: str, experiment_id: str, sweep: str, storage: str, raw_spec: Mapping[str, Any],
                    objectives: Iterable[tuple[str, str]], resume_run_id: str | None = None,
                    ablation: str | None = None) -> SweepRun:
    """The parent run of a sweep or of one of its declared ablations (resumed when ``resume_run_id`` is given)."""
    from mlflow.entities import Param

    c = client(uri)
    if resume_run_id:
        c.update_run(resume_run_id, status="RUNNING")
        return SweepRun(uri, experiment_id, resume_run_id)
    tags = {TAG_KIND: "sweep", TAG_SWEEP: sweep, TAG_STORAGE: storage,
            TAG_OBJECTIVES: json.dumps([list(o) for o in objectives]),
            TAG_METHOD: str(raw_spec.get("method", {}).get("name", "")),
            TAG_DATASET: str((raw_spec.get("dataset") or {}).get("name", "ser3")),
            **({TAG_ABLATION: ablation} if ablation else {})}
    kind = f"ablation-{ablation}" if ablation else "sweep"
    run = c.create_run(experiment_id, tags=tags, run_name=f"{kind}-{sweep}-{time.strftime('%Y%m%d-%H%M%S')}")
    params = [Param(k, v) for k, v in flatten({k: v for k, v in raw_spec.items()
                                               if k not in ("search", "ablations")}).items()]
    for i in range(0, len(params), 90):
        c.log_batch(run.info.run_id, params=params[i:i + 90])
    with tempfile.TemporaryDirectory() as d:
        import yaml

        p = Path(d) / "spec.yaml"
        p.write_text(yaml.safe_dump(dict(raw_spec), sort_keys=False))
        c.log_artifact(run.info.run_id, str(p))
    note = (f"fairray sweep `{sweep}` ({kind}), running: its trials are the nested runs; the front's summary "
            f"is written here when it ends. Explore it: `fairray dashboard {sweep} --tracking-uri {shown_uri(uri)} "
            f"--run-id {run.info.run_id}`")
    c.set_tag(run.info.run_id, NOTE_TAG, note)
    return SweepRun(uri, experiment_id, run.info.run_id)


def runs_view(objectives: Iterable[str], params: Iterable[str], parent_run_id: str) -> dict[str, Any]:
    """A runs-table view of a sweep: its objectives and searched parameters as columns, sorted by the first
    objective, the sweep's run expanded to show its trials (the JSON of MLflow's shared view state)."""
    objectives = list(objectives)
    columns = [f"metrics.`{m}`" for m in objectives] + [f"params.`{p}`" for p in params]
    view: dict[str, Any] = {"selectedColumns": ["attributes.`Run Name`", *columns],
                            "runsExpanded": {parent_run_id: True}}
    if objectives:
        view.update(orderByKey=f"metrics.`{objectives[0]}`", orderByAsc=False)
    return view


def publish_runs_view(uri: str, experiment_id: str, sweep_run_id: str, objectives: Iterable[str],
                      params: Iterable[str]) -> str:
    """Store :func:`runs_view` on the experiment; returns the share key for :func:`ui_url`."""
    key = f"fairray-{sweep_run_id[:12]}"
    client(uri).set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key,
                                   json.dumps(runs_view(objectives, params, sweep_run_id)))
    return key


def ui_url(base: str, experiment_id: str, run_id: str | None = None, view: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs table (or of one run), in the model-training workflow."""
    path = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    query = WORKFLOW_QUERY + (f"&viewStateShareKey={view}" if view else "")
    return f"{path}/runs/{run_id}?{query}" if run_id else f"{path}/runs?{query}"


def set_descriptions(uri: str, notes: Mapping[str, str]) -> None:
    """Write each run's description (``{run_id: markdown}``), shown on its page of the MLflow UI."""
    c = client(uri)
    for run_id, text in notes.items():
        c.set_tag(run_id, NOTE_TAG, text[:5000])


def end_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    c = client(uri)
    if reason:
        c.set_tag(run_id, TAG_FAILURE, reason[:4000])
    c.set_terminated(run_id, status=status)


def close_orphan_trials(uri: str, experiment_id: str, parent_run_id: str, status: str = "FAILED",
                        reason: str = "trial ended without closing its run (process killed?)") -> int:
    """End child runs of a sweep still RUNNING (as FAILED, or KILLED after Ctrl-C); returns how many."""
    c = client(uri)
    runs = c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
                         "and attributes.status = 'RUNNING'", max_results=10000)
    for run in runs:
        end_run(uri, run.info.run_id, status, reason)
    return len(runs)


def _open_trial_run(uri: str, experiment_id: str, parent_run_id: str | None, trial_id: str,
                    tags: Mapping[str, str], params: Mapping[str, str]) -> tuple[str, bool]:
    """``(run_id, resumed)``: the run of ``trial_id`` in sweep ``parent_run_id``, resumed (RUNNING again, tagged
    ``fairray.resumed``) when a retry finds it, else created with ``tags`` and ``params``."""
    c = client(uri)
    filt = f"tags.`{TAG_TRIAL}` = '{trial_id}'"
    if parent_run_id:
        filt += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    existing = c.search_runs([experiment_id], filter_string=filt, max_results=1)
    if existing:
        run_id = existing[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        c.set_tag(run_id, "fairray.resumed", "true")
        # a process (or writer) that died between ``create_run`` and the params' ``log_batch`` left the run without
        # (some of) them: log what is missing; params already there stay (MLflow refuses to change one)
        _log_params(c, run_id, {k: v for k, v in params.items() if k not in existing[0].data.params})
        return run_id, True
    method = tags.get(TAG_METHOD, "")
    note = (f"fairray trial `{trial_id}`" + (f", method `{method}`" if method else "") +
            ("; its place on the sweep's fronts is written here when the sweep ends." if parent_run_id else "."))
    all_tags = {TAG_TRIAL: trial_id, NOTE_TAG: note, **tags}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = c.create_run(experiment_id, tags=all_tags, run_name=trial_id)
    _log_params(c, run.info.run_id, params)
    return run.info.run_id, False


def _log_params(c, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    plist = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(plist), 90):  # MLflow takes at most 100 params per batch
        c.log_batch(run_id, params=plist[i:i + 90])


class TrialRun:
    """The child run of one trial. A retried trial resumes its own run (found by trial id).

    Metrics are buffered and sent in one ``log_batch`` at most every :attr:`flush_s` seconds (and when the run
    ends): a per-epoch call to the store costs tens of milliseconds, as much as an epoch of a small model.
    """

    #: Per-epoch metrics reach MLflow at most this many seconds after they were logged.
    flush_s = 5.0

    def __init__(self, uri: str, run_id: str, resumed: bool) -> None:
        self.uri, self.run_id, self.resumed = uri, run_id, resumed
        self._pending: list = []
        self._flushed = time.monotonic()

    @classmethod
    def open(cls, uri: str, experiment_id: str, parent_run_id: str | None, trial_id: str,
             tags: Mapping[str, str], params: Mapping[str, str]) -> TrialRun:
        return cls(uri, *_open_trial_run(uri, experiment_id, parent_run_id, trial_id, tags, params))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self._pending.extend(_metrics(values, step))
        if len(self._pending) >= _BATCH or time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self, wait: bool = True) -> None:
        """Send the buffered metrics now (stored when this returns, whatever ``wait``: ``wait=False`` lets a
        :class:`~fairray.tracking.RemoteTrialRun` return before its writer has stored them)."""
        pending, self._pending = self._pending, []
        _send_metrics(client(self.uri), self.run_id, pending)
        self._flushed = time.monotonic()

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        client(self.uri).log_artifacts(self.run_id, str(local_dir), artifact_path)

    def finish(self) -> None:
        self.flush()
        end_run(self.uri, self.run_id, "FINISHED")

    def end(self, status: str, reason: str) -> None:
        try:
            self.flush()  # the epochs before a failure stay visible; a store that is down still gets the status
        finally:
            end_run(self.uri, self.run_id, status, reason)


def find_sweep_run(uri: str, experiment: str, run_id: str | None = None, ablation: str | None = None):
    """The latest parent run of ``experiment``'s search — or of its ablation ``ablation`` — (or the given
    run); TrackingError if none."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in c.search_experiments()]
        raise TrackingError(f"no MLflow experiment {experiment!r} at {shown_uri(uri)}; experiments there: {names or 'none'} "
                            "(run `fairray sweep SPEC` first, or pass --tracking-uri)")
    if run_id:
        return c.get_run(run_id)
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
                         order_by=["attributes.start_time DESC"], max_results=1000)
    runs = [r for r in runs if r.data.tags.get(TAG_ABLATION) == ablation]
    if not runs:
        what = f"run of ablation {ablation!r}" if ablation else "sweep run (besides ablations)"
        hint = f"fairray sweep SPEC --ablation {ablation}" if ablation else "fairray sweep SPEC"
        raise TrackingError(f"experiment {experiment!r} at {shown_uri(uri)} holds no fairray {what}; run `{hint}` first")
    return runs[0]


_SEARCH_PAGE = 10000  # runs per search_runs page (MLflow's SQL store accepts up to 50000)


def trial_runs(uri: str, sweep_run) -> list:
    """The child runs of ``sweep_run`` (deleted runs left out) as ``mlflow.entities.Run``: info, tags, params and
    latest metrics. A SQL store is read with a few set-based queries of its own tables
    (:func:`fairray.tracking._bulk.sql_child_runs`): ``search_runs`` spent ~8.6 s building ORM objects for the
    ~220k latest metrics of a 500-trial sweep on SQLite. Another store (a tracking server, a file store), or a
    database error of the bulk read, is read with ``search_runs``, page by page."""
    from fairray.tracking._bulk import sql_child_runs

    c = client(uri)
    experiment_id, parent = sweep_run.info.experiment_id, sweep_run.info.run_id
    store = getattr(getattr(c, "_tracking_client", None), "store", None)
    if store is not None:
        from mlflow.exceptions import MlflowException

        try:
            runs = sql_child_runs(store, experiment_id, parent)
        except MlflowException as exc:
            from sqlalchemy.exc import SQLAlchemyError

            if not isinstance(exc.__cause__, SQLAlchemyError):
                raise
        else:
            if runs is not None:
                return runs
    out, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
                             max_results=_SEARCH_PAGE, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
