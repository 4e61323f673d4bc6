"""The one training loop every method plugs into.

``run_trial`` trains one configuration: batches from the method's sampler, the method's loss, an
evaluation of the dev split after each epoch (one :class:`~fairray.metrics.GroupReport`, read by the
progress report, MLflow and model selection alike), the method's ``on_epoch_end`` hook, a checkpoint
every ``train.checkpoint_interval_s`` and one after the last epoch (holding the selected model), and a final
report of the selected model on dev and test. It runs unchanged as a Ray
Train ``train_loop_per_worker``, directly inside a Tune trial, or in a plain process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from fairray.config import SweepSpec, resolve_trial, to_plain
from fairray.data import SERData
from fairray.errors import TrialError
from fairray.inputs import DialogueContext, InputSpec, InputStore, VectorStore, specs_of, take_inputs
from fairray.methods import METHODS, Batch, DevEval, LossOutput, Method, SamplerInput, TrainContext
from fairray.methods._reduce import Accumulation, forbidden, recording, replaying
from fairray.metrics import MetricKey, Predictions, decide, multi_hot
from fairray.models import as_specs, build_model
from fairray.models._base import LR_SCALE
from fairray.train._session import Session
from fairray.train.checkpoint import (
    BEST_FILE,
    CONFIG_FILE,
    META_FILE,
    MODEL_FILE,
    TRAINER_FILE,
    checkpoint_texts,
    load_state,
    load_trainable_state,
    read_trainer_state,
    save_state,
    unwrap,
    write_checkpoint,
)

__all__ = ["CONFIG_FILE", "META_FILE", "MODEL_FILE", "TRAINER_FILE", "Precision", "StepResult", "TrialTracking",
           "headline", "infer", "model_builder", "model_meta", "param_groups", "run_trial", "train_context",
           "train_step"]


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial logs in MLflow (``parent_run_id`` is the sweep's run, None for ``fairray train``).
    ``writer``: the sweep's :class:`~fairray.tracking.TrackingWriter` actor, through which the trial logs without
    importing MLflow; None (``fairray train``, tests): the trial's process writes to the store itself."""

    uri: str
    experiment_id: str
    parent_run_id: str | None
    trial_id: str
    sweep: str
    writer: Any = None

    def open(self, tags: Mapping[str, str], params: Mapping[str, str]):
        """The trial's run (a retry resumes its own): a :class:`~fairray.tracking.RemoteTrialRun` through the
        writer, else a :class:`~fairray.tracking.TrialRun`."""
        from fairray.tracking import RemoteTrialRun, TrialRun

        if self.writer is not None:
            return RemoteTrialRun.open(self.writer, self.uri, self.experiment_id, self.parent_run_id, self.trial_id,
                                       tags, params)
        return TrialRun.open(self.uri, self.experiment_id, self.parent_run_id, self.trial_id, tags, params)


def headline(flat: Mapping[str, float]) -> dict[str, float]:
    """Overall utilities and gaps (pooled, worst, mean) — what is shown and logged every epoch."""
    return {key: value for key, value in flat.items() if _is_headline(key)}


@functools.lru_cache(maxsize=65536)
def _is_headline(key: str) -> bool:
    """Whether ``key`` is shown every epoch (cached: an epoch's report has the keys of the last one)."""
    k = MetricKey.parse(key)
    return k.metric != "n" and (k.scope == "overall" or (k.scope == "gap" and (k.stratum is None or k.is_aggregate)))


def _batch(data: SERData, idx: np.ndarray, stores: Mapping[str, InputStore] | None = None,
           rng: np.random.Generator | None = None) -> Batch:
    """Rows ``idx`` as a CPU batch: every named input (``rng``: random crops in training) and the labels."""
    t = torch.as_tensor
    inputs = take_inputs(data.inputs if stores is None else stores, idx, rng)
    context = None
    if data.context is not None:
        c = t(data.context[idx])
        context = DialogueContext(c[:, 0], c[:, 1], c[:, 2])
    # a regression's target is y itself (float): batches carry target=None, so loss_target is y
    target = None if data.task == "regression" else t(data.soft[idx])
    return Batch(y=t(data.y[idx]), attr=t(data.attr[idx]), stratum=t(data.stratum[idx]), index=t(idx),
                 group=t(data.group[idx]), group_prob=t(data.group_prob[idx]), target=target,
                 inputs=inputs, context=context)


class _Rows:
    """Batches of dataset rows on the training path, equal to :func:`_batch`'s but cheaper per step.

    The per-row tables (labels, attribute, stratum and group codes, soft memberships, targets, dialogue context
    and every plain vector input) become tensors once per trial (zero-copy views of the dataset's arrays, only
    ever read), and a batch gathers them with ``index_select`` — the int64 codes as one ``[4, N]`` table in one
    gather (and one host-to-device copy) — instead of converting NumPy rows field by field at every step.
    Other inputs (sequence, waveform, tokens) are taken by their store, in store order, so random crops draw
    the same stream as :func:`_batch`.
    """

    def __init__(self, data: SERData, stores: Mapping[str, InputStore] | None = None) -> None:
        self.stores = data.inputs if stores is None else stores
        codes = (data.y, data.attr, data.stratum, data.group)
        with warnings.catch_warnings():  # the dataset's arrays may be read-only: they are only gathered from
            warnings.simplefilter("ignore", UserWarning)
            t = torch.as_tensor
            packed = all(c.ndim == 1 and c.dtype == np.int64 for c in codes)
            self.codes = torch.from_numpy(np.stack(codes)) if packed else None
            self.code_tables = None if packed else [t(c) for c in codes]
            self.group_prob = t(data.group_prob)
            # single-label targets are the one-hot of y: batches then carry target=None (Batch: "None means the
            # one-hot of y"), and base losses take the integer-label path, the same values in fewer operations
            n_c = len(data.classes)
            one_hot = (data.task == "single" and data.soft.shape == (len(data.y), n_c)
                       and np.array_equal(data.soft, np.eye(n_c, dtype=data.soft.dtype)[data.y]))
            self.soft = None if one_hot or data.task == "regression" else t(data.soft)
            self.context = None if data.context is None else t(data.context)
            # a VectorStore's take is X[rows] as a tensor: the same rows by index_select on its tensor view
            self.vectors = {name: t(store.X) for name, store in self.stores.items()
                            if type(store).take is VectorStore.take}

    def batch(self, idx: np.ndarray, rng: np.random.Generator | None = None,
              device: torch.device | None = None) -> Batch:
        """Rows ``idx`` as a batch on ``device`` (None: the CPU); ``rng``: random crops in training."""
        i = torch.as_tensor(idx)
        move = device is not None and device.type != "cpu"

        def to(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=True) if move else x

        if self.codes is not None:
            y, attr, stratum, group = to(self.codes.index_select(1, i)).unbind(0)
        else:
            y, attr, stratum, group = (to(c.index_select(0, i)) for c in self.code_tables)
        inputs = {name: (self.vectors[name].index_select(0, i) if name in self.vectors else store.take(idx, rng))
                  for name, store in self.stores.items()}
        if move:
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        context = None
        if self.context is not None:
            c = to(self.context.index_select(0, i))
            context = DialogueContext(c[:, 0], c[:, 1], c[:, 2])
        return Batch(y=y, attr=attr, stratum=stratum, index=to(i), group=group,
                     group_prob=to(self.group_prob.index_select(0, i)),
                     target=None if self.soft is None else to(self.soft.index_select(0, i)),
                     inputs=inputs, context=context)


def forward(module: torch.nn.Module, inputs: Mapping[str, Any], context: DialogueContext | None) -> Any:
    """``module(inputs)``; a model that declares ``reads_context`` (a dialogue model: CBERL's graph) also gets
    the rows' :class:`~fairray.inputs.DialogueContext` (None when the dataset has none) as ``context=``."""
    if getattr(unwrap(module), "reads_context", False):
        return module(inputs, context=context)
    return module(inputs)


def _context_rows(context: np.ndarray | None, rows: np.ndarray, device: torch.device) -> DialogueContext | None:
    if context is None:
        return None
    c = torch.as_tensor(context[rows]).to(device)
    return DialogueContext(c[:, 0], c[:, 1], c[:, 2])


def _chunks(rows: np.ndarray, batch_size: int, context: np.ndarray | None) -> Iterator[np.ndarray]:
    """``rows`` in chunks of ``batch_size``; with dialogue context a chunk runs on to the end of the dialogue
    its last row is in (consecutive rows of one dialogue stay together, so a dialogue model sees them whole)."""
    start = 0
    while start < len(rows):
        stop = min(start + batch_size, len(rows))
        if context is not None:
            dialogue = context[rows, 0]
            while stop < len(rows) and dialogue[stop] >= 0 and dialogue[stop] == dialogue[stop - 1]:
                stop += 1
        yield rows[start:stop]
        start = stop


def train_context(data: SERData, epochs: int) -> TrainContext:
    """Training-split counts a method may use (classes, groups, class x group, soft group mass), the
    number of dataset rows (``Batch.index`` range) and the trial's epochs. For multi-label data also
    ``class_target_counts`` (label x positive class), whose column sums are the class-balanced ``n_c``:
    training samples whose soft label exceeds ``1/|C|`` (METHODS §3.1)."""
    idx = data.indices("train")
    y, g = data.y[idx], data.group[idx]
    n_c, n_g = len(data.classes), len(data.group_values)
    known = g >= 0
    if data.task == "regression":  # no classes (y is a float target): no class counts, groups over all rows
        return TrainContext(classes=(), class_counts=np.zeros(0, dtype=np.int64), attr_values=data.attr_values,
                            strata_values=data.strata_values, n_train=len(idx), group_values=data.group_values,
                            group_counts=np.bincount(g[known], minlength=n_g).astype(np.int64),
                            class_group_counts=np.zeros((0, n_g), np.int64),
                            group_soft_counts=data.group_prob[idx].sum(axis=0), n_rows=len(data.y), epochs=epochs,
                            train_group_prob=data.group_prob[idx], task="regression")
    class_group = np.zeros((n_c, n_g), dtype=np.int64)
    np.add.at(class_group, (y[known], g[known]), 1)
    class_target = None
    if data.task == "multi":
        class_target = np.zeros((n_c, n_c), dtype=np.int64)
        np.add.at(class_target, y, multi_hot(data.soft[idx]))
    return TrainContext(classes=data.classes, class_counts=np.bincount(y, minlength=n_c),
                        attr_values=data.attr_values, strata_values=data.strata_values, n_train=len(idx),
                        group_values=data.group_values, group_counts=class_group.sum(axis=0),
                        class_group_counts=class_group, group_soft_counts=data.group_prob[idx].sum(axis=0),
                        n_rows=len(data.y), epochs=epochs, class_target_counts=class_target,
                        train_group_prob=data.group_prob[idx], task=data.task)


class Precision:
    """``train.precision``: autocast of forward and loss (bf16 / fp16) and, for fp16, a gradient scaler."""

    DTYPES: ClassVar[dict[str, torch.dtype | None]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode, self.device, self.dtype = mode, device, self.DTYPES[mode]
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Take the optimiser step; False when the fp16 scaler skipped it (inf/NaN gradients)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@torch.no_grad()
def infer(model: torch.nn.Module, stores: Mapping[str, InputStore], rows: np.ndarray, batch_size: int,
          device: torch.device, precision: Precision | None = None, context: np.ndarray | None = None
          ) -> torch.Tensor:
    """Class logits ``[len(rows), C]`` (float32, CPU) of ``model`` in chunks of ``batch_size`` rows, so peak
    memory does not grow with the split. Evaluation and ``fairray predict`` both go through here. ``context``:
    the dataset's dialogue context ``[N, 3]`` (``SERData.context``), for models that read it (:func:`forward`);
    chunks then end at dialogue ends."""
    model.eval()
    out = []
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    reads = getattr(model, "reads_context", False)
    for part in _chunks(np.asarray(rows), batch_size, context if reads else None):
        chunk = take_inputs(stores, part)
        with autocast():
            logits = forward(model, {k: v.to(device) for k, v in chunk.items()}, _context_rows(context, part, device))
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


class _Evaluator:
    """Dev/test predictions of the method's inference net, and their one GroupReport per split.

    The report is ``Predictions.report()`` of exactly what is logged as ``predictions/{split}.npz``, so the
    logged metrics and the bootstrap read one computation. Regression: ``y_true`` = the float target and ``y_pred``
    = the model's one output (no softmax, no decision). Single-label: ``y_true`` = the class, ``y_pred``
    = the argmax of the logits. Multi-label (METHODS §1.2, §2.1): ``y_true = multi_hot(soft)`` and
    ``y_pred = decide(softmax(logits), "multi")``, both ``1[· > 1/|C|]``. Logits are computed in chunks of
    ``train.eval_batch_size`` rows (:func:`infer`); the per-sample losses on the model's device.
    """

    def __init__(self, data: SERData, method: Method, s_min: int, batch_size: int, device: torch.device,
                 precision: Precision) -> None:
        self.data, self.method, self.s_min = data, method, s_min
        self.batch_size, self.device, self.precision = batch_size, device, precision
        self.stores = data.inputs
        # dev, test and the dataset's extra test splits (``SERData.test_sets``: subsets of test, e.g. OOD sets)
        self.idx = {"dev": data.indices("dev"), "test": data.indices("test"), **data.test_sets}
        self.labels = {s: _batch(data, self.idx[s], stores={}).to(device) for s in self.idx}
        columns = [data.attribute, data.stratum_name]
        meta = data.meta
        # every column read here as one array, taken per split (no DataFrame selection and take per split);
        # Predictions normalises the group columns, and uid / speaker are meta's, as strings (missing stays NaN)
        groups = {c: meta[c].to_numpy() for c in columns}
        ids = {c: meta[c].astype(str).to_numpy() for c in ("uid", "speaker") if c in meta.columns}
        self.template = {}  # per split, the rows' Predictions checked once; an epoch adds its outputs
        for s, rows in self.idx.items():
            y_true = multi_hot(data.soft[rows]) if data.task == "multi" else data.y[rows]
            if data.task == "regression":
                y_true = y_true.astype(np.float64)
            self.template[s] = Predictions(
                uid=ids["uid"][rows] if "uid" in ids else rows.astype(str), speaker=ids["speaker"][rows],
                groups=pd.DataFrame({c: groups[c][rows] for c in columns}), y_true=y_true,
                y_pred=y_true, prob=None, classes=data.classes, attribute=data.attribute, stratum=data.stratum_name,
                task=data.task, s_min=s_min)

    def logits(self, module: torch.nn.Module, rows: np.ndarray) -> torch.Tensor:
        """Inference logits of the training ``module`` (DDP-wrapped or not) on ``rows``, on the model's device."""
        model = self.method.inference_model(unwrap(module))
        try:
            return infer(model, self.stores, rows, self.batch_size, self.device, self.precision,
                         self.data.context).to(self.device)
        finally:
            module.train()

    def __call__(self, module: torch.nn.Module, split: str) -> tuple[torch.Tensor, float, Predictions]:
        logits = self.logits(module, self.idx[split])
        with torch.no_grad():
            loss = float(self.method.per_sample_loss(logits, self.labels[split]).mean())
        if self.data.task == "regression":  # the model's one output is the prediction itself
            pred = logits[:, 0].double().cpu().numpy()
            return logits, loss, self.template[split].with_outputs(pred, None)
        prob = torch.softmax(logits, dim=1).cpu().numpy()
        return logits, loss, self.template[split].with_outputs(decide(prob, self.data.task), prob)


def input_specs_plain(specs: Mapping[str, InputSpec]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(s), "meta": dict(s.meta)} for s in specs.values()]


def input_specs_from_meta(meta: Mapping[str, Any]) -> dict[str, InputSpec]:
    """The input specs a checkpoint was built from (``n_features`` only: written before named inputs)."""
    if "inputs" in meta:
        return {d["name"]: InputSpec(**d) for d in meta["inputs"]}
    return as_specs(int(meta["n_features"]))


def model_meta(spec: SweepSpec, data: SERData, ctx: TrainContext) -> dict[str, Any]:
    """What a checkpoint needs besides weights to be applied to new data (``fairray predict``).

    ``task`` (``single``/``multi``) says how predict turns probabilities into decisions; checkpoints
    written before it are single-label. ``inputs`` are the input specs the model was built from.

    ``train_context`` lets predict rebuild the method, whose ``build_model`` made the training module
    saved in ``model.pt``, and take its ``inference_model``.
    """
    return {
        "method": spec.method.name, "train_context": ctx.to_plain(),
        "model": to_plain(spec.model), "inputs": input_specs_plain(specs_of(data.inputs)),
        "classes": list(data.classes), "task": data.task, "attribute": data.attribute,
        "attr_values": list(data.attr_values),
        "stratum": data.stratum_name, "strata_values": list(data.strata_values), "n_features": data.n_features,
        "feature_mean": data.mean.tolist(), "feature_std": data.std.tolist(), "data_fingerprint": data.fingerprint,
    }


def model_builder(spec: SweepSpec, inputs: Mapping[str, InputSpec] | int) -> Callable[[int], torch.nn.Module]:
    """``build(n_out)`` for :meth:`Method.build_model`: a fresh instance of the trial's model plugin."""
    return lambda n_out: build_model(spec.model.name, spec.model.params, inputs, n_out)


def param_groups(module: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate, every one in exactly one group: each parameter trains at
    ``lr`` times the product of the scales its modules declare (:mod:`fairray.models._base`): a submodule marked
    by ``set_lr_scale`` (all its parameters; a modality's encoder, and GEAR's copies of it) and a submodule's
    ``lr_scales()`` (parameter name prefix -> multiplier; of one module's prefixes the longest match applies).
    Parameters nothing scales train at ``lr``; groups are ordered by scale."""
    declared: list[dict[str, float]] = []  # per declaring module: full parameter-name prefix -> scale
    for prefix, sub in module.named_modules():
        own = getattr(sub, LR_SCALE, None)
        if own is not None:
            declared.append({prefix: float(own)})
        if hasattr(sub, "lr_scales"):
            declared.append({f"{prefix}.{local}" if prefix else local: float(scale)
                             for local, scale in sub.lr_scales().items()})
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        for scales in declared:
            match = max((k for k in scales if k == "" or name == k or name.startswith(k + ".")), key=len,
                        default=None)
            if match is not None:
                scale *= scales[match]
        groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": lr * scale, "lr_scale": scale} for scale, ps in sorted(groups.items())]


def resolve_device(gpus_per_worker: float, session: Session) -> torch.device:
    """CUDA whenever the spec gives a worker a GPU (one worker included), else the CPU."""
    if gpus_per_worker <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrialError(f"resources.gpus_per_worker is {gpus_per_worker:g}, but this worker sees no CUDA device; "
                         "set resources.gpus_per_worker: 0 or run on GPU nodes")
    return session.cuda_device()


def _non_finite(value: torch.Tensor, device: torch.device) -> tuple[str | None, float]:
    """``(None, loss)`` when the loss is finite on every worker; else ``"nan"`` (this process) or ``"nan (first
    seen on worker 1 of 2)"`` (the first worker with a non-finite loss) on every worker alike: one all-gather of
    two numbers under DDP. ``loss`` is this worker's value as a float: the step's one read of it (one device
    sync), which the loop's epoch mean reuses."""
    v = float(value)
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return (None if math.isfinite(v) else f"{v}"), v
    mine = torch.tensor([0.0 if math.isfinite(v) else 1.0, v], device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    bad = [(rank, float(p[1])) for rank, p in enumerate(parts) if p[0] > 0]
    if not bad:
        return None, v
    rank, r = bad[0]  # batch statistics spread a NaN to every worker's loss: the first is where it was seen
    return f"{r} (first seen on worker {rank} of {len(parts)})", v


def _seed_epoch(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for a trial on ``device``: the CPU generator, and the CUDA ones on a GPU.
    (``torch.manual_seed`` also queues a lazy CUDA seeding, which records a stack trace when CUDA is not
    initialised: ~0.1-0.5 ms an epoch on a CPU trial, for generators it never draws from.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass
class StepResult:
    outputs: list[LossOutput]
    #: why the step was skipped (a non-finite loss with fail_on_nan: false, or an fp16 overflow), or None
    skipped: str | None = None
    grad_norm: float | None = None
    #: the step's loss: the micro-batches' losses weighted by their share of the step's rows (NaN if skipped early)
    loss: float = math.nan


def train_step(module: torch.nn.Module, method: Method, micro: list[Batch], optimizer: torch.optim.Optimizer,
               precision: Precision, grad_clip: float | None = None, fail_on_nan: bool = True,
               where: str = "") -> StepResult:
    """One optimiser step over the micro-batches ``micro`` (gradient accumulation when there are several).

    Each micro-batch's loss enters with weight ``n_m / N``, so the step's gradient is the gradient of the
    whole batch: exactly for means of per-sample losses, and for batch statistics (group means, gaps) too,
    since a method with ``batch_statistics`` gets the whole step's batch sums in every micro-batch (a
    recorded pass without gradients first, with the same random state; see :mod:`fairray.methods._reduce`).
    Under DDP only the last micro-batch synchronises gradients (``no_sync``). A non-finite loss on any
    worker skips the step on every worker (``fail_on_nan: false``) or raises :class:`TrialError` on every
    worker with the reason. The method's :meth:`~Method.on_step` commits the state only if the step is taken.
    """
    device = micro[0].device
    total = sum(len(b) for b in micro)
    acc = None
    if len(micro) > 1 and method.batch_statistics:
        acc = Accumulation(len(micro))
        states = []
        with torch.no_grad():
            for m, b in enumerate(micro):
                states.append(_rng_state(device))
                with recording(acc, m), precision.autocast():
                    method.loss(forward(module, b.inputs, b.context), b)
    optimizer.zero_grad(set_to_none=True)
    outputs: list[LossOutput] = []
    step_loss = 0.0
    for m, b in enumerate(micro):
        weight = len(b) / total
        if acc is not None:
            _set_rng_state(states[m], device)
            reduction = replaying(acc, m, weight)
        elif len(micro) > 1:
            reduction = forbidden(f"{type(method).__name__} declares batch_statistics = False but its loss calls "
                                  "batch_sum; declare it True")
        else:
            reduction = contextlib.nullcontext()
        last = m == len(micro) - 1
        sync = module.no_sync() if (not last and hasattr(module, "no_sync")) else contextlib.nullcontext()
        with sync:
            with reduction, precision.autocast():
                out = method.loss(forward(module, b.inputs, b.context), b)
            bad, value = _non_finite(out.loss.detach().float(), device)
            step_loss += value * len(b) / total  # the epoch's train/loss, as the loop always summed it
            if bad is not None:
                msg = (f"training loss is {bad} {where}".rstrip()
                       + (f" (micro-batch {m + 1} of {len(micro)})" if len(micro) > 1 else ""))
                if fail_on_nan:
                    raise TrialError(msg + "; lower train.lr or the method's weights, or set train.fail_on_nan: false "
                                           "to skip such steps")
                optimizer.zero_grad(set_to_none=True)
                return StepResult(outputs, skipped=msg)
            precision.backward(out.loss.float() * weight if len(micro) > 1 else out.loss)
        outputs.append(out)
    norm = None
    if grad_clip is not None:
        precision.unscale(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    if not precision.step(optimizer):
        return StepResult(outputs, skipped="fp16 gradient overflow (the scaler lowered its scale)", grad_norm=norm,
                          loss=step_loss)
    method.on_step(outputs)
    return StepResult(outputs, grad_norm=norm, loss=step_loss)


def _steps(batches: Iterator[np.ndarray], accumulate: int, world_size: int = 1) -> Iterator[list[np.ndarray]]:
    """Consecutive sampler batches, ``accumulate`` per optimiser step (the last step may have fewer). Under data
    parallelism a batch with fewer rows than workers is left out on every worker alike (a worker without rows
    has no loss), so every worker takes the same steps and collectives."""
    step: list[np.ndarray] = []
    for idx in batches:
        if len(idx) < world_size:
            continue
        step.append(idx)
        if len(step) == accumulate:
            yield step
            step = []
    if step:
        yield step


class _EpochLogs:
    """Per-epoch means of the method's per-batch and per-round logs (``method/<key>``)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: Mapping[str, float]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def run_trial(raw: Mapping[str, Any], params: Mapping[str, Any], data: SERData, session: Session,
              tracking: TrialTracking | None = None, on_epoch: Callable[[dict], None] | None = None
              ) -> dict[str, float]:
    """Train one configuration (``raw`` spec with sampled ``params``) and return its final metrics."""
    loaded = resolve_trial(raw, params, source=f"trial {tracking.trial_id if tracking else ''}".strip())
    spec, trial_raw = loaded.spec, loaded.raw
    tcfg = spec.train
    device = resolve_device(spec.resources.gpus_per_worker, session)
    torch.manual_seed(tcfg.seed)
    ctx = train_context(data, tcfg.epochs)
    method_cls = METHODS.get(spec.method.name)
    method = method_cls(spec.method.params, ctx)
    sampler = method_cls.sampler if tcfg.sampler == "auto" else tcfg.sampler
    dialogue = data.context[:, 0] if data.context is not None else None  # dialogue samplers batch whole dialogues
    sampler_input = SamplerInput(data.indices("train"), data.y, data.attr, data.stratum, data.group, dialogue)
    stores = data.inputs
    tables = _Rows(data, stores)  # the training batches' tables, as tensors once
    # the training module (several nets for some methods); evaluation goes through method.inference_model
    module = method.build_model(model_builder(spec, specs_of(stores))).to(device)
    optimizer = torch.optim.AdamW(param_groups(module, tcfg.lr), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    precision = Precision(tcfg.precision, device)
    meta = model_meta(spec, data, ctx)
    objectives = [o.metric for o in spec.search.objectives]  # in every report: Tune checks they are there
    epoch0 = method.batches(sampler_input, tcfg.batch_size, np.random.default_rng([tcfg.seed, 0]), 0, sampler)
    steps_per_epoch = sum(1 for _ in _steps(epoch0, tcfg.accumulate, session.world_size))

    workdir = Path(tempfile.mkdtemp(prefix="fairray-trial-"))  # this worker's best-epoch weights, on local disk
    best_file = workdir / BEST_FILE
    run = None
    try:  # from here on the trial's folder is removed and its MLflow run ended, whatever happens
        state: dict[str, Any] = {"epoch": 0, "best": None, "failure": None, "step": 0, "skipped_steps": 0}
        with session.latest_checkpoint() as ckpt:
            if ckpt is not None:
                load_trainable_state(module, load_state(Path(ckpt) / MODEL_FILE), source=str(ckpt))
                state = {**state, **read_trainer_state(ckpt)}
                optimizer.load_state_dict(state.pop("optimizer"))
                method.load_state_dict(state.pop("method"))
                precision.load_state_dict(state.pop("scaler", {}))
                if (Path(ckpt) / BEST_FILE).is_file():
                    shutil.copyfile(Path(ckpt) / BEST_FILE, best_file)
                elif state.get("best") and "model" in state["best"]:  # written before best.pt: an in-memory copy
                    torch.save(state["best"].pop("model"), best_file)
        if state.get("failure"):
            raise TrialError(state["failure"])  # a deterministic failure: do not redo the work on retry
        method.to(device)
        method.on_train_start(steps_per_epoch)
        module = session.prepare_model(module)
        evaluate = _Evaluator(data, method, tcfg.s_min, tcfg.eval_batch_size, device, precision)
        round_rows = None
        if method.round_steps:
            dev_input = SamplerInput(data.indices("dev"), data.y, data.attr, data.stratum, data.group)
            round_rows = np.asarray(method.round_rows(dev_input, np.random.default_rng([tcfg.seed, 7])))
            round_labels = _batch(data, round_rows, stores={}).to(device)

        if tracking is not None and session.world_rank == 0:
            from fairray.tracking import flatten

            tags = {"fairray.kind": "trial" if tracking.parent_run_id else "train", "fairray.sweep": tracking.sweep,
                    "fairray.method": spec.method.name, "fairray.dataset": spec.dataset.name,
                    "fairray.searched_params": json.dumps(sorted(params))}
            # the raw spec, plus the values the loader derived (s_min defaults to 5 for gap objectives) and the
            # method's knobs the spec left at their defaults (a cell that sets only method.name still shows its
            # augment_ratio, masking_rate, ... in the MLflow UI)
            logged = {**flatten({"method": spec.method.to_plain()}),
                      **flatten({k: v for k, v in trial_raw.items() if k != "search"}), "train.s_min": str(tcfg.s_min)}
            run = tracking.open(tags, logged)
            n_train = sum(p.numel() for p in unwrap(module).parameters() if p.requires_grad)
            run.log({"model/trainable_params": float(n_train),
                     "model/total_params": float(sum(p.numel() for p in unwrap(module).parameters()))}, step=0)

        def trainer_state() -> dict[str, Any]:
            return {**state, "optimizer": optimizer.state_dict(), "method": method.state_dict(),
                    "scaler": precision.state_dict()}

        texts = checkpoint_texts(meta, trial_raw)
        selected_loaded = False  # whether the module holds the best epoch's weights (from best.pt)

        last_checkpoint = time.monotonic()

        def checkpoint_and_report(metrics: dict[str, Any], force: bool = True, selected: bool = False) -> None:
            """Report ``metrics``, with a checkpoint when ``force``d or ``checkpoint_interval_s`` has passed.
            ``selected``: the module holds the best epoch's weights (the end checkpoint): ``model.pt`` is
            ``best.pt``'s bytes, not saved again."""
            nonlocal last_checkpoint
            due = force or time.monotonic() - last_checkpoint >= tcfg.checkpoint_interval_s
            if session.world_rank != 0 or not due:
                session.report(metrics, None)
                return
            if run is not None:  # through a sweep's writer, the rows are stored while the checkpoint is written
                run.flush(wait=False)
            d = Path(tempfile.mkdtemp(prefix="ckpt-", dir=workdir))
            try:
                write_checkpoint(d, module, trainer_state(), texts, best=best_file,
                                 model_state=best_file if selected else None)
                if run is not None:  # MLflow holds every epoch a checkpoint holds: a trial resumed from it loses none
                    run.flush()
                session.report(metrics, str(d))  # Tune copies the folder; a LocalSession moves it
            finally:
                shutil.rmtree(d, ignore_errors=True)
            last_checkpoint = time.monotonic()

        for epoch in range(state["epoch"], tcfg.epochs):
            _seed_epoch(tcfg.seed * 100_003 + epoch, device)
            rng = np.random.default_rng([tcfg.seed, epoch])
            crop_rng = np.random.default_rng([tcfg.seed, epoch, 1])  # random crops; the sampler keeps its stream
            module.train()
            losses, logs, norms, skipped = [], _EpochLogs(), [], 0
            batches = method.batches(sampler_input, tcfg.batch_size, rng, epoch, sampler)
            for step, step_idx in enumerate(_steps(batches, tcfg.accumulate, session.world_size)):
                micro = [tables.batch(idx[session.world_rank::session.world_size], crop_rng, device) for idx in step_idx]
                try:
                    result = train_step(module, method, micro, optimizer, precision, tcfg.grad_clip,
                                        tcfg.fail_on_nan, where=f"at epoch {epoch}, step {step}")
                except TrialError as exc:
                    state = {**state, "failure": str(exc)}
                    checkpoint_and_report({"epoch": epoch, "failed": 1.0, **dict.fromkeys(objectives, math.nan)})
                    raise
                if result.skipped is not None:
                    skipped += 1
                    continue
                state["step"] += 1
                losses.append(result.loss)
                for out in result.outputs:
                    logs.add(out.logs)
                if result.grad_norm is not None:
                    norms.append(result.grad_norm)
                if round_rows is not None and state["step"] % method.round_steps == 0:
                    logs.add(method.on_round(DevEval(evaluate.logits(module, round_rows), round_labels)))

            dev_logits, dev_loss, dev_pred = evaluate(module, "dev")
            dev_report = dev_pred.report()
            method_logs = {**logs.means(), **method.on_epoch_end(DevEval(dev_logits, evaluate.labels["dev"]))}
            best = state["best"]
            if tcfg.selection == "last" or best is None or dev_loss < best["dev_loss"]:
                best = {"epoch": epoch, "dev_loss": dev_loss}
                save_state(module, best_file)  # every worker keeps its own copy (identical under DDP)
            flat = dev_report.flat("dev")
            state["skipped_steps"] += skipped
            metrics = {"epoch": epoch, "train/loss": float(np.mean(losses)) if losses else math.nan,
                       "dev/loss": dev_loss, **headline(flat),
                       **{k: flat.get(k, math.nan) for k in objectives},
                       **({"train/skipped_steps": float(skipped)} if skipped or not tcfg.fail_on_nan else {}),
                       **({"train/grad_norm": float(np.mean(norms))} if norms else {}),
                       **{f"method/{k}": v for k, v in method_logs.items()}}
            state = {**state, "epoch": epoch + 1, "best": best, "failure": None}
            if run is not None:
                run.log(metrics, step=epoch)
            if on_epoch is not None and session.world_rank == 0:
                on_epoch(metrics)
            if epoch + 1 < tcfg.epochs:
                checkpoint_and_report(metrics, force=False)
                continue
            # after the last epoch: the selected epoch's weights back into the module, then the one end
            # checkpoint (trainer state of the last epoch, model.pt = the selected model, what `fairray train`
            # leaves and predict / export read); a restart from it goes straight to the final evaluation
            load_trainable_state(module, load_state(best_file), source=str(best_file))
            selected_loaded = True
            checkpoint_and_report(metrics, selected=True)

        final = _final(spec, module, state, best_file, evaluate, run, method, meta, trial_raw,
                       loaded=selected_loaded)
        session.report(final, None)  # the end checkpoint above stays the trial's latest
        if run is not None:
            run.finish()
        return final
    except (KeyboardInterrupt, SystemExit):
        if run is not None:  # stopped from outside (Ctrl-C, Tune shutting down): resumable, not a failure
            run.end("KILLED", "interrupted; the sweep can continue with --resume")
        raise
    except BaseException as exc:
        if run is not None:
            reason = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, TrialError):
                reason += "\n" + traceback.format_exc(limit=8)
            run.end("FAILED", reason)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _final(spec: SweepSpec, module, state: dict[str, Any], best_file: Path, evaluate: _Evaluator, run,
           method: Method, meta: dict[str, Any], trial_raw: Mapping[str, Any], loaded: bool = False
           ) -> dict[str, float]:
    """Evaluate the selected model on dev and test; check objectives; log everything to MLflow.
    ``loaded``: the module already holds the selected weights (``best_file``'s).

    Artifacts: ``checkpoint/`` (the selected epoch's trainable state as ``model.pt``), ``groups/{dev,test}.csv``
    (the reports' tables), ``predictions/{dev,test}.npz`` (:class:`~fairray.metrics.Predictions`, whose
    ``report()`` equals the logged metrics) and ``method_state.json``.
    """
    best = state["best"]
    if not loaded:  # a trial resumed from its end checkpoint
        load_trainable_state(module, load_state(best_file), source=str(best_file))
    _, dev_loss, dev_pred = evaluate(module, "dev")
    _, test_loss, test_pred = evaluate(module, "test")
    dev_report, test_report = dev_pred.report(), test_pred.report()
    extra = {name: evaluate(module, name) for name in evaluate.data.test_sets}  # logged like test, never selected on
    extra_reports = {name: pred.report() for name, (_, _, pred) in extra.items()}
    final = {**dev_report.flat("dev"), **test_report.flat("test"), "dev/loss": dev_loss, "test/loss": test_loss,
             **{f"{name}/{k[len('test/'):]}": v for name, r in extra_reports.items() for k, v in r.flat("test").items()},
             **{f"{name}/loss": loss for name, (_, loss, _) in extra.items()},
             **{f"data/{k}": v for k, v in evaluate.data.test_set_info.items()},
             "selected_epoch": float(best["epoch"]), "final": 1.0, "train/skipped_steps_total":
             float(state.get("skipped_steps", 0)),
             **{f"groups/{k}": v for k, v in evaluate.data.group_info.items()}}
    for objective in spec.search.objectives:
        value = final.get(objective.metric)
        if value is None or not math.isfinite(value):
            raise TrialError(f"objective {objective.metric} is {value} for the selected model (epoch "
                             f"{best['epoch']}); the trial cannot be placed on a front "
                             "(is a group missing from a dev stratum? see the dev supports)")
    if run is not None:
        run.log(final, step=spec.train.epochs)
        with tempfile.TemporaryDirectory(prefix="fairray-art-") as d:
            root = Path(d)
            write_checkpoint(root / "checkpoint", module, {"selected_epoch": best["epoch"]}, meta, trial_raw)
            (root / "groups").mkdir()
            dev_report.table().to_csv(root / "groups" / "dev.csv", index=False)
            test_report.table().to_csv(root / "groups" / "test.csv", index=False)
            for name, report in extra_reports.items():
                report.table().to_csv(root / "groups" / f"{name}.csv", index=False)
            # the evaluated predictions: their report() is exactly the logged dev/test metrics
            (root / "predictions").mkdir()
            dev_pred.save(root / "predictions" / "dev.npz")
            test_pred.save(root / "predictions" / "test.npz")
            for name, (_, _, pred) in extra.items():
                pred.save(root / "predictions" / f"{name}.npz")
            (root / "method_state.json").write_text(json.dumps(method.state_dict(), indent=1, default=str))
            run.log_artifacts(root)
    return final
