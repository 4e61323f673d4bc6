"""A worker group kept across trials (``resources.reuse_workers: true`` with ``backend: train``).

Ray Train 2.60 starts a whole run per ``fit()`` — a controller, a placement group and its cleaner, a
synchronization actor, the workers, torch.distributed — and has no API to keep a worker group across runs (its
``WorkerGroup`` is the controller's, bound to one run's storage, callbacks and polling). On small trials that
start-up is most of the work (README, Benchmarks). Here the reused Tune trial process owns ``num_workers`` actors,
placed in the bundles its placement group reserves for them, set up once (torch threads, torch.distributed: gloo
on CPU, nccl on GPU); each trial runs the same :func:`fairray.train.run_trial` on every worker with a
:class:`~fairray.train.GroupSession`, rank 0's reports coming back as the items of a streaming-generator call,
its checkpoints as folder archives through the object store.

Lifecycle: :func:`group_for` makes the group on a trial process's first trial and hands the same one to its later
trials; :meth:`WorkerGroup.run` runs one trial (a :class:`TrialJob`, which the trial process hands over without
unpickling the sweep's data or importing torch: :mod:`fairray.sweep._group_trial`). Rank 0 holds each report until
the trial process has handed it to Tune and Tune let the trial go on, so a Tune stop (early stopping) ends the trial
at the report Tune decided on, at once, on every worker, with its MLflow run closed there. A worker that dies (or a trial that cannot be stopped in time)
kills the group, so that the trial fails (Tune's ``max_failures`` retries it from its last checkpoint) and the next
trial makes a fresh one. The actors are owned by the trial process: when Tune ends it, they end with it.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Seconds a stopped trial's workers get to end (Tune waits 2 s, its ``TUNE_FUNCTION_THREAD_TIMEOUT_S``, for the
#: trial's thread before it gives up reusing the process). A Tune stop finds rank 0 held at the report Tune decided
#: on, so this is the time to close its MLflow run; a stop between reports (the sweep's end) waits for the next one.
STOP_GRACE_S = 1.5
#: torch.distributed's set-up and collectives time out after this long (a peer that died mid-collective).
COLLECTIVE_TIMEOUT_S = 600


def pack_dir(path: str) -> bytes:
    """A folder as an uncompressed tar archive (a checkpoint through the object store)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(os.listdir(path)):
            tar.add(os.path.join(path, name), arcname=name)
    return buf.getvalue()


def unpack_dir(blob: bytes, path: str) -> str:
    """:func:`pack_dir`'s archive into the folder ``path`` (created); returns ``path``."""
    os.makedirs(path, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(path, filter="data")
    return path


class _Stopped(SystemExit):
    """Tune stopped the trial (early stopping, the sweep's end): run_trial ends its MLflow run KILLED."""


class TrialIncomplete(RuntimeError):
    """A trial's workers ended it without its final report although the trial process never stopped it."""


@dataclass(frozen=True)
class TrialJob:
    """What a worker runs for one trial: :func:`fairray.train.run_trial` on the trial's dataset, picked on the
    worker from the sweep's :class:`~fairray.sweep.runner.DataVariants` (an object reference: neither the trial
    process nor this object unpickles it), with the trial's MLflow tracking built there too."""

    raw: Mapping[str, Any]
    params: Mapping[str, Any]
    variants: Any  # ray.ObjectRef of the sweep's DataVariants (datasets by reference)
    tracking: Mapping[str, Any]  # TrialTracking's fields but trial_id
    trial_id: str

    def __call__(self, session) -> None:
        import ray

        from fairray.train import TrialTracking, run_trial

        data = ray.get(self.variants).select(self.params)
        run_trial(self.raw, dict(self.params), data, session, TrialTracking(trial_id=self.trial_id, **self.tracking))


class _Trial:
    """One trial's state on a worker: its token, its reports' acknowledgements and its stop flag."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.stop = threading.Event()
        self.acks: queue.Queue = queue.Queue()  # one item per report: whether to stop there
        self.running = False  # its run() call is under way (never forgotten meanwhile)


#: Tokens a worker remembers (a stop may arrive before its trial's call starts, or after it ended).
_KEEP_TOKENS = 8


class GroupWorker:
    """One worker of the group (a Ray actor, two threads: a trial's :meth:`run`, and :meth:`ack` / :meth:`stop`).

    Every call names its trial by a token (:meth:`WorkerGroup.run` makes one per trial): the actor runs its calls on
    two threads in no fixed order, so a late ``stop`` of the previous trial may run while the next one is under way;
    it stops only the trial it names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trials: dict[str, _Trial] = {}  # by token, oldest first
        self.rank, self.world_size, self.backend = 0, 1, None

    def address(self) -> str:
        """``host:port`` for torch.distributed's rendezvous (rank 0's)."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"{ray.util.get_node_ip_address()}:{port}"

    def setup(self, rank: int, world_size: int, master: str | None, backend: str, threads: int) -> int:
        """Once per group: torch threads and (several workers) the process group. Returns the process id."""
        import datetime

        import torch

        torch.set_num_threads(threads)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        if world_size > 1:
            torch.distributed.init_process_group(backend, init_method=f"tcp://{master}", rank=rank,
                                                 world_size=world_size,
                                                 timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        return os.getpid()

    def _trial(self, token: str, create: bool) -> _Trial | None:
        with self._lock:
            trial = self._trials.get(token)
            if trial is None and create:
                trial = self._trials[token] = _Trial(token)
                idle = [t for t, s in self._trials.items() if not s.running]
                for old in idle[:max(len(self._trials) - _KEEP_TOKENS, 0)]:
                    del self._trials[old]
            return trial

    def ack(self, token: str) -> None:
        """The trial process handed trial ``token``'s latest report to Tune, which did not stop the trial: go on."""
        trial = self._trial(token, create=False)
        if trial is not None:
            trial.acks.put(False)

    def stop(self, token: str) -> None:
        """End trial ``token`` at its current or next report (every worker at the same one: see GroupSession).
        A stop of any other trial than ``token`` (one that ended, one not started yet) leaves it alone."""
        trial = self._trial(token, create=True)  # created: this stop ran before its trial's call started
        trial.stop.set()
        trial.acks.put(True)

    def run(self, token: str, job, keep: frozenset[str] | None, checkpoint: bytes | None
            ) -> Iterator[tuple[str, dict[str, Any] | None, bytes | None]]:
        """Trial ``token`` (a streaming-generator call): ``job(session)`` (a :class:`TrialJob`) on this worker.
        Rank 0 yields ``("report", metrics, checkpoint archive or None)`` per report, each held until the trial
        process acknowledges it (:meth:`ack`, after ``tune.report`` returned) or stops the trial (:meth:`stop`),
        then ``("done", None, None)`` when the trial ran to its end; the other ranks yield nothing. A stopped
        trial's stream just ends. Errors of the trial are raised from the generator."""
        from fairray.train import GroupSession

        trial = self._trial(token, create=True)
        trial.running = True
        print(f"fairray: trial {getattr(job, 'trial_id', token)} on group worker {self.rank} of {self.world_size}, "
              f"pid {os.getpid()}", flush=True)  # in the worker's Ray log: which process ran which trial
        inbox: queue.Queue = queue.Queue()
        workdir = tempfile.mkdtemp(prefix="fairray-group-")

        def outbox(metrics: dict[str, Any], blob: bytes | None) -> bool:
            inbox.put(("report", (metrics, blob)))
            return trial.acks.get() or trial.stop.is_set()

        def body() -> None:
            try:
                ckpt = unpack_dir(checkpoint, os.path.join(workdir, "restored")) if checkpoint else None
                job(GroupSession(self.rank, self.world_size, outbox, trial.stop, ckpt, keep, self.backend))
                inbox.put(("done", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
                inbox.put(("error", exc))

        thread = threading.Thread(target=body, name="fairray-trial", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = inbox.get()
                if kind == "report":
                    yield ("report", *value)
                    continue
                if kind == "error" and not isinstance(value, _Stopped):
                    raise value
                if kind == "done" and self.rank == 0:
                    yield ("done", None, None)
                return
        finally:
            thread.join()
            shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                self._trials.pop(token, None)


#: The Tune trial process's own resources: no CPU (its workers, or the Ray Train run's, hold them; two trials on two
#: CPUs would starve their workers otherwise), a little memory.
TRIAL_PROCESS = {"CPU": 0, "memory": 256 * 1024**2}


@dataclass(frozen=True)
class GroupShape:
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int

    @property
    def bundles(self) -> list[dict[str, float]]:
        """The trial's placement group: the trial process (no CPU) first, then one bundle per worker."""
        worker = {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}
        return [dict(TRIAL_PROCESS)] + [dict(worker) for _ in range(self.num_workers)]


class WorkerDied(RuntimeError):
    """A worker of the group died during a trial: the trial fails (and is retried on a fresh group)."""


class WorkerGroup:
    """``shape.num_workers`` :class:`GroupWorker` actors in the current placement group's bundles 1..n."""

    def __init__(self, shape: GroupShape) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.shape = shape
        pg = ray.util.get_current_placement_group()
        if pg is None or len(pg.bundle_specs) != shape.num_workers + 1:
            raise RuntimeError(f"a reused worker group needs its trial's placement group of {shape.num_workers + 1} "
                               f"bundles, got {None if pg is None else len(pg.bundle_specs)}")
        actor = ray.remote(num_cpus=shape.cpus_per_worker, num_gpus=shape.gpus_per_worker, max_concurrency=2,
                           max_restarts=0)(GroupWorker)
        self.workers = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=i + 1)).remote() for i in range(shape.num_workers)]
        try:
            backend = "nccl" if shape.gpus_per_worker > 0 else "gloo"
            master = ray.get(self.workers[0].address.remote()) if shape.num_workers > 1 else None
            self.pids = ray.get([w.setup.remote(rank, shape.num_workers, master, backend, shape.threads)
                                 for rank, w in enumerate(self.workers)])
        except BaseException:
            self.kill()
            raise
        self.alive = True

    def kill(self) -> None:
        import ray

        self.alive = False
        for w in self.workers:
            with contextlib.suppress(Exception):
                ray.kill(w)

    def run(self, job: TrialJob, keep: frozenset[str] | None, checkpoint: bytes | None
            ) -> Iterator[tuple[dict[str, Any], bytes | None]]:
        """Run one trial (``job``) on every worker; yield rank 0's reports as ``(metrics, checkpoint archive or
        None)``. A report is acknowledged to the workers when the caller asks for the next one, i.e. after it
        handed this one to Tune and Tune let the trial go on; closing the iterator instead (Tune stopped the trial
        at that report: ``tune.report`` raised) stops the workers there, at once, waiting :data:`STOP_GRACE_S`
        for them to end before the group is killed. A worker that dies kills the group and raises
        :class:`WorkerDied`; a stream that ends without the trial's end raises :class:`TrialIncomplete`."""
        import uuid

        import ray
        from ray.exceptions import RayActorError

        token = uuid.uuid4().hex
        ckpt_ref = ray.put(checkpoint) if checkpoint is not None else None
        calls = [w.run.options(num_returns="streaming", _generator_backpressure_num_objects=1)
                 .remote(token, job, keep, ckpt_ref) for w in self.workers]
        stream, others = calls[0], calls[1:]
        finished = False
        try:
            done = False
            while True:
                pending = [stream, *(c for c in others if c is not None)]
                ready, _ = ray.wait(pending, num_returns=1, fetch_local=False)
                if ready[0] is not stream:  # another rank ended (it yields nothing): done, or an error to raise
                    i = others.index(ready[0])
                    with contextlib.suppress(StopIteration):
                        ray.get(next(others[i]))
                    others[i] = None
                    continue
                try:
                    ref = next(stream)
                except StopIteration:
                    break
                kind, metrics, blob = ray.get(ref)
                if kind == "done":
                    done = True
                    continue
                yield metrics, blob
                self.workers[0].ack.remote(token)  # Tune took the report and asked for the next one
            if not done:
                raise TrialIncomplete(f"trial {getattr(job, 'trial_id', '?')}: its workers ended it without its "
                                      "final report, though it was not stopped")
            for c in others:  # rank 0 is done: the others end at the same final report
                if c is not None:
                    with contextlib.suppress(StopIteration):
                        ray.get(next(c))
            finished = True
        except RayActorError as exc:
            self.kill()
            raise WorkerDied(f"a worker of the reused group died during the trial ({exc.__class__.__name__}); "
                             "the group is replaced for the next trial") from exc
        finally:
            if not finished and self.alive:
                self._stop_calls(token, calls)

    def _stop_calls(self, token: str, calls) -> None:
        """The trial ended early on this side: stop the workers' calls, or the group if they do not end in time."""
        import time

        import ray

        for w in self.workers:
            w.stop.remote(token)
        deadline = time.monotonic() + STOP_GRACE_S
        for c in calls:  # draining a call lets its worker past a held report to the stop check
            while True:
                left = deadline - time.monotonic()
                try:
                    ref = c._next_sync(timeout_s=max(left, 0.0))
                except StopIteration:
                    break  # this worker's trial has ended
                if ref.is_nil():  # not stopped in time: a fresh group for the next trial
                    self.kill()
                    return
                try:
                    ray.get(ref)
                except Exception:  # noqa: BLE001 - the stopped call failed: a fresh group next time
                    self.kill()
                    return


_GROUP: WorkerGroup | None = None


def group_for(shape: GroupShape) -> WorkerGroup:
    """This trial process's group: the one its earlier trials used, or a new one (first trial, or the last
    one's group died)."""
    global _GROUP
    if _GROUP is None or not _GROUP.alive or _GROUP.shape != shape:
        if _GROUP is not None:
            _GROUP.kill()
        _GROUP = WorkerGroup(shape)
    return _GROUP


def current_group() -> WorkerGroup | None:
    """The group of this process, if any (tests read its workers' process ids)."""
    return _GROUP
