"""``fairray predict``: apply an exported checkpoint to a split of its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fairray._atomic import atomic_write_text
from fairray.config import SweepSpec, build_spec, parse_yaml
from fairray.errors import DataError
from fairray.methods import METHODS, Method, TrainContext
from fairray.metrics import decide, multi_hot
from fairray.train.checkpoint import CONFIG_FILE, META_FILE, MODEL_FILE, load_state, load_trainable_state
from fairray.train.loop import infer, input_specs_from_meta, model_builder


def _rebuild(root: Path, meta: dict, spec: SweepSpec) -> torch.nn.Module:
    """The training module as the trial's method built it, with the saved weights; its inference net."""
    name = spec.method.name
    if meta.get("method", name) != name:
        raise DataError(f"{root}: {META_FILE} says method {meta['method']!r}, {CONFIG_FILE} says {name!r}")
    method_cls = METHODS.get(name)
    build = model_builder(spec, input_specs_from_meta(meta))
    weights = load_state(root / MODEL_FILE)
    if "train_context" in meta:
        method = method_cls(spec.method.params, TrainContext.from_plain(meta["train_context"]))
        module = method.build_model(build)
        load_trainable_state(module, weights, source=str(root / MODEL_FILE))
        return method.inference_model(module)
    # written before methods built their own training modules: one classifier (the default hooks)
    if method_cls.build_model is not Method.build_model or method_cls.inference_model is not Method.inference_model:
        raise DataError(f"{root}: {META_FILE} has no train_context, which method {name!r} needs to rebuild its "
                        "networks; the checkpoint predates it, train the model again")
    model = build(1 if meta.get("task") == "regression" else len(meta["classes"]))
    load_trainable_state(model, weights, source=str(root / MODEL_FILE))
    return model


def load_export(path: str | Path) -> tuple[torch.nn.Module, dict, SweepSpec]:
    """(inference model in eval mode, fairray.json meta, resolved trial spec) of an export or checkpoint
    folder. ``model.pt`` holds the method's whole training module (e.g. both LfF nets); the returned
    model is the part that maps features to class logits (``Method.inference_model``)."""
    root = Path(path)
    missing = [f for f in (MODEL_FILE, META_FILE, CONFIG_FILE) if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root}: not a fairray export (missing {', '.join(missing)}); "
                        "pass a folder written by `fairray export SWEEP --out DIR`")
    meta = json.loads((root / META_FILE).read_text())
    source = str(root / CONFIG_FILE)
    spec = build_spec(parse_yaml((root / CONFIG_FILE).read_text(), source), source, check_space=False)
    return _rebuild(root, meta, spec).eval(), meta, spec


def predict(path: str | Path, split: str = "test") -> pd.DataFrame:
    """Predictions of an export on ``split``.

    Single-label models (``task`` in the checkpoint meta, default single): uid, speaker, the attribute
    and stratum columns, ``y_true``, ``y_pred`` (class names; argmax) and ``p_<class>``.
    Multi-label models: uid, speaker, the group columns, ``p_<class>`` (softmax) and per class the 0/1
    columns ``true_<class>`` (``1[soft_c > 1/|C|]``) and ``pred_<class>`` (``1[p_c > 1/|C|]``)
    (METHODS §1.2, §2.1); there is no single ``y_true``/``y_pred`` column. Regression models: ``y_true`` (the
    float target) and ``y_pred`` (the model's one output), no ``p_`` columns.
    """
    from fairray.sweep import prepare_data

    if split not in ("train", "dev", "test"):
        raise DataError(f"--split {split!r}: expected train, dev or test")
    model, meta, spec = load_export(path)
    data = prepare_data(spec)
    if data.fingerprint != meta["data_fingerprint"]:
        raise DataError(f"{path}: the dataset differs from the one this model was trained on "
                        f"(fingerprint {data.fingerprint} != {meta['data_fingerprint']}); rebuild it as it was")
    idx = data.indices(split)
    logits = infer(model, data.inputs, idx, spec.train.eval_batch_size, torch.device("cpu"), context=data.context)
    classes = np.array(meta["classes"])
    frame = data.meta.loc[idx, ["uid", "speaker", data.attribute, data.stratum_name]].reset_index(drop=True)
    task = meta.get("task", "single")
    if task != data.task:
        raise DataError(f"{path}: the model is {task}-label but its dataset prepares {data.task}-label targets")
    if task == "regression":
        frame["y_true"] = data.y[idx].astype(np.float64)
        frame["y_pred"] = logits[:, 0].double().numpy()
        return frame
    proba = torch.softmax(logits, dim=1).numpy()
    if task == "multi":
        for k, c in enumerate(classes):
            frame[f"p_{c}"] = proba[:, k]
        for name, values in (("true", multi_hot(data.soft[idx])), ("pred", decide(proba, "multi"))):
            for k, c in enumerate(classes):
                frame[f"{name}_{c}"] = values[:, k]
        return frame
    frame["y_true"] = classes[data.y[idx]]
    frame["y_pred"] = classes[proba.argmax(axis=1)]
    for k, c in enumerate(classes):
        frame[f"p_{c}"] = proba[:, k]
    return frame


def write_predictions(path: str | Path, split: str, out: str | Path) -> pd.DataFrame:
    frame = predict(path, split)
    atomic_write_text(out, frame.to_csv(index=False, float_format="%.6f"))
    return frame
