"""The one training loop every method plugs into.

``run_trial`` trains one configuration: batches from the method's sampler, the method's loss, an
evaluation of the dev split after each epoch (one :class:`~fairray.metrics.GroupReport`, read by the
progress report, MLflow and model selection alike), the method's ``on_epoch_end`` hook, a checkpoint
per epoch, and a final report of the selected model on dev and test. It runs unchanged as a Ray
Train ``train_loop_per_worker``, directly inside a Tune trial, or in a plain process.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fairray.config import SweepSpec, resolve_trial, to_plain
from fairray.data import SERData
from fairray.errors import TrialError
from fairray.methods import METHODS, Batch, DevEval, Method, SamplerInput, TrainContext
from fairray.metrics import MetricKey, Predictions, decide, multi_hot
from fairray.models import build_model
from fairray.train._session import Session

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"
META_FILE = "fairray.json"
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial logs in MLflow (``parent_run_id`` is the sweep's run, None for ``fairray train``)."""

    uri: str
    experiment_id: str
    parent_run_id: str | None
    trial_id: str
    sweep: str


def headline(flat: Mapping[str, float]) -> dict[str, float]:
    """Overall utilities and gaps (pooled, worst, mean) — what is shown and logged every epoch."""
    out = {}
    for key, value in flat.items():
        k = MetricKey.parse(key)
        if k.metric == "n":
            continue
        if k.scope == "overall" or (k.scope == "gap" and (k.stratum is None or k.is_aggregate)):
            out[key] = value
    return out


def _batch(data: SERData, idx: np.ndarray) -> Batch:
    t = torch.as_tensor
    return Batch(x=t(data.X[idx]), y=t(data.y[idx]), attr=t(data.attr[idx]), stratum=t(data.stratum[idx]),
                 index=t(idx), group=t(data.group[idx]), group_prob=t(data.group_prob[idx]), target=t(data.soft[idx]))


def train_context(data: SERData, epochs: int) -> TrainContext:
    """Training-split counts a method may use (classes, groups, class x group, soft group mass), the
    number of dataset rows (``Batch.index`` range) and the trial's epochs. For multi-label data also
    ``class_target_counts`` (label x positive class), whose column sums are the class-balanced ``n_c``:
    training samples whose soft label exceeds ``1/|C|`` (METHODS §3.1)."""
    idx = data.indices("train")
    y, g = data.y[idx], data.group[idx]
    n_c, n_g = len(data.classes), len(data.group_values)
    known = g >= 0
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
                        n_rows=len(data.y), epochs=epochs, class_target_counts=class_target)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The training module inside a DDP wrapper (``session.prepare_model``)."""
    return model.module if hasattr(model, "module") else model


class _Evaluator:
    """Dev/test predictions of the method's inference net, and their one GroupReport per split.

    The report is ``Predictions.report()`` of exactly what is logged as ``predictions/{split}.npz``, so the
    logged metrics and the bootstrap read one computation. Single-label: ``y_true`` = the class, ``y_pred``
    = the argmax of the logits. Multi-label (METHODS §1.2, §2.1): ``y_true = multi_hot(soft)`` and
    ``y_pred = decide(softmax(logits), "multi")``, both ``1[· > 1/|C|]``.
    """

    def __init__(self, data: SERData, method: Method, s_min: int) -> None:
        self.data, self.method, self.s_min = data, method, s_min
        self.batches = {s: _batch(data, data.indices(s)) for s in ("dev", "test")}
        self.frames = {s: data.groups_frame(s) for s in ("dev", "test")}
        self.rows = {}
        for s in ("dev", "test"):
            idx = data.indices(s)
            meta = data.meta.iloc[idx]
            uid = meta["uid"].astype(str).to_numpy() if "uid" in meta.columns else idx.astype(str)
            y_true = multi_hot(data.soft[idx]) if data.task == "multi" else data.y[idx]
            self.rows[s] = (uid, meta["speaker"].astype(str).to_numpy(), y_true)

    @torch.no_grad()
    def __call__(self, module: torch.nn.Module, split: str) -> tuple[torch.Tensor, float, Predictions]:
        """Evaluate the training ``module`` (DDP-wrapped or not) through ``method.inference_model``."""
        model = self.method.inference_model(_unwrap(module))
        model.eval()
        batch = self.batches[split]
        logits = model(batch.x)
        loss = float(self.method.per_sample_loss(logits, batch).mean())
        prob = torch.softmax(logits, dim=1).numpy()
        uid, speaker, y_true = self.rows[split]
        data = self.data
        pred = Predictions(uid=uid, speaker=speaker, groups=self.frames[split], y_true=y_true,
                           y_pred=decide(prob, data.task), prob=prob, classes=data.classes, attribute=data.attribute,
                           stratum=data.stratum_name, task=data.task, s_min=self.s_min)
        return logits, loss, pred


def model_meta(spec: SweepSpec, data: SERData, ctx: TrainContext) -> dict[str, Any]:
    """What a checkpoint needs besides weights to be applied to new features (``fairray predict``).

    ``task`` (``single``/``multi``) says how predict turns probabilities into decisions; checkpoints
    written before it are single-label.

    ``train_context`` lets predict rebuild the method, whose ``build_model`` made the training module
    saved in ``model.pt``, and take its ``inference_model``.
    """
    return {
        "method": spec.method.name, "train_context": ctx.to_plain(),
        "model": to_plain(spec.model),
        "classes": list(data.classes), "task": data.task, "attribute": data.attribute,
        "attr_values": list(data.attr_values),
        "stratum": data.stratum_name, "strata_values": list(data.strata_values), "n_features": data.n_features,
        "feature_mean": data.mean.tolist(), "feature_std": data.std.tolist(), "data_fingerprint": data.fingerprint,
    }


def model_builder(spec: SweepSpec, n_features: int) -> Callable[[int], torch.nn.Module]:
    """``build(n_out)`` for :meth:`Method.build_model`: a fresh instance of the trial's model plugin."""
    return lambda n_out: build_model(spec.model.name, spec.model.params, n_features, n_out)


def _write_checkpoint(d: Path, module, trainer_state: dict, meta: dict, raw: Mapping[str, Any]) -> None:
    """``model.pt`` holds the whole training module (resume needs every net), not just the inference net."""
    torch.save(_unwrap(module).state_dict(), d / MODEL_FILE)
    torch.save(trainer_state, d / TRAINER_FILE)
    (d / META_FILE).write_text(json.dumps(meta, indent=1))
    (d / CONFIG_FILE).write_text(yaml.safe_dump(dict(raw), sort_keys=False))


def run_trial(raw: Mapping[str, Any], params: Mapping[str, Any], data: SERData, session: Session,
              tracking: TrialTracking | None = None, on_epoch: Callable[[dict], None] | None = None
              ) -> dict[str, float]:
    """Train one configuration (``raw`` spec with sampled ``params``) and return its final metrics."""
    loaded = resolve_trial(raw, params, source=f"trial {tracking.trial_id if tracking else ''}".strip())
    spec, trial_raw = loaded.spec, loaded.raw
    tcfg = spec.train
    torch.manual_seed(tcfg.seed)
    ctx = train_context(data, tcfg.epochs)
    method_cls = METHODS.get(spec.method.name)
    method = method_cls(spec.method.params, ctx)
    sampler = method_cls.sampler if tcfg.sampler == "auto" else tcfg.sampler
    sampler_input = SamplerInput(data.indices("train"), data.y, data.attr, data.stratum, data.group)
    # the training module (several nets for some methods); evaluation goes through method.inference_model
    module = method.build_model(model_builder(spec, data.n_features))
    optimizer = torch.optim.AdamW(module.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    meta = model_meta(spec, data, ctx)
    objectives = [o.metric for o in spec.search.objectives]  # in every report: Tune checks they are there

    state: dict[str, Any] = {"epoch": 0, "best": None, "failure": None}
    with session.latest_checkpoint() as ckpt:
        if ckpt is not None:
            module.load_state_dict(torch.load(Path(ckpt) / MODEL_FILE, weights_only=True))
            state = torch.load(Path(ckpt) / TRAINER_FILE, weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            method.load_state_dict(state["method"])
    if state.get("failure"):
        raise TrialError(state["failure"])  # a deterministic failure: do not redo the work on retry
    module = session.prepare_model(module)
    evaluate = _Evaluator(data, method, tcfg.s_min)

    run = None
    if tracking is not None and session.world_rank == 0:
        from fairray.tracking import TrialRun, flatten

        tags = {"fairray.kind": "trial" if tracking.parent_run_id else "train", "fairray.sweep": tracking.sweep,
                "fairray.method": spec.method.name, "fairray.dataset": spec.dataset.name,
                "fairray.searched_params": json.dumps(sorted(params))}
        run = TrialRun.open(tracking.uri, tracking.experiment_id, tracking.parent_run_id, tracking.trial_id,
                            tags, flatten({k: v for k, v in trial_raw.items() if k != "search"}))

    def checkpoint_and_report(metrics: dict[str, Any], trainer_state: dict[str, Any]) -> None:
        if session.world_rank != 0:
            session.report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="fairray-ckpt-") as d:
            _write_checkpoint(Path(d), module, trainer_state, meta, trial_raw)
            session.report(metrics, d)

    try:
        for epoch in range(state["epoch"], tcfg.epochs):
            torch.manual_seed(tcfg.seed * 100_003 + epoch)
            rng = np.random.default_rng([tcfg.seed, epoch])
            module.train()
            losses = []
            for step, idx in enumerate(method.batches(sampler_input, tcfg.batch_size, rng, epoch, sampler)):
                batch = _batch(data, idx[session.world_rank::session.world_size])
                out = method.loss(module(batch.x), batch)
                if not torch.isfinite(out.loss.detach()):
                    msg = (f"training loss is {out.loss.item()} at epoch {epoch}, step {step}; "
                           f"lower train.lr (now {tcfg.lr}) or the method's weights")
                    if tcfg.fail_on_nan:
                        state = {**state, "failure": msg}
                        checkpoint_and_report({"epoch": epoch, "failed": 1.0, **dict.fromkeys(objectives, math.nan)},
                                              {**state, "optimizer": optimizer.state_dict(),
                                               "method": method.state_dict()})
                        raise TrialError(msg)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                losses.append(float(out.loss.detach()))

            dev_logits, dev_loss, dev_pred = evaluate(module, "dev")
            dev_report = dev_pred.report()
            method_logs = method.on_epoch_end(DevEval(dev_logits, evaluate.batches["dev"]))
            best = state["best"]
            if tcfg.selection == "last" or best is None or dev_loss < best["dev_loss"]:
                best = {"epoch": epoch, "dev_loss": dev_loss,
                        "model": copy.deepcopy(_unwrap(module).state_dict())}
            flat = dev_report.flat("dev")
            metrics = {"epoch": epoch, "train/loss": float(np.mean(losses)), "dev/loss": dev_loss, **headline(flat),
                       **{k: flat.get(k, math.nan) for k in objectives},
                       **{f"method/{k}": v for k, v in method_logs.items()}}
            state = {"epoch": epoch + 1, "best": best, "failure": None}
            if run is not None:
                run.log(metrics, step=epoch)
            if on_epoch is not None and session.world_rank == 0:
                on_epoch(metrics)
            checkpoint_and_report(metrics, {**state, "optimizer": optimizer.state_dict(),
                                            "method": method.state_dict()})

        final = _final(spec, module, state, evaluate, run, method, meta, trial_raw)
        checkpoint_and_report(final, {**state, "optimizer": optimizer.state_dict(), "method": method.state_dict()})
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


def _final(spec: SweepSpec, module, state: dict[str, Any], evaluate: _Evaluator, run, method: Method,
           meta: dict[str, Any], trial_raw: Mapping[str, Any]) -> dict[str, float]:
    """Evaluate the selected model on dev and test; check objectives; log everything to MLflow.

    Artifacts: ``checkpoint/``, ``groups/{dev,test}.csv`` (the reports' tables),
    ``predictions/{dev,test}.npz`` (:class:`~fairray.metrics.Predictions`, whose ``report()`` equals
    the logged metrics) and ``method_state.json``.
    """
    best = state["best"]
    _unwrap(module).load_state_dict(best["model"])
    _, dev_loss, dev_pred = evaluate(module, "dev")
    _, test_loss, test_pred = evaluate(module, "test")
    dev_report, test_report = dev_pred.report(), test_pred.report()
    final = {**dev_report.flat("dev"), **test_report.flat("test"), "dev/loss": dev_loss, "test/loss": test_loss,
             "selected_epoch": float(best["epoch"]), "final": 1.0,
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
            (root / "checkpoint").mkdir()
            _write_checkpoint(root / "checkpoint", module, {"selected_epoch": best["epoch"]}, meta, trial_raw)
            (root / "groups").mkdir()
            dev_report.table().to_csv(root / "groups" / "dev.csv", index=False)
            test_report.table().to_csv(root / "groups" / "test.csv", index=False)
            # the evaluated predictions: their report() is exactly the logged dev/test metrics
            (root / "predictions").mkdir()
            dev_pred.save(root / "predictions" / "dev.npz")
            test_pred.save(root / "predictions" / "test.npz")
            (root / "method_state.json").write_text(json.dumps(method.state_dict(), indent=1, default=str))
            run.log_artifacts(root)
    return final
