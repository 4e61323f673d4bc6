"""``fairray export``: the Pareto-optimal trials of a sweep as self-contained folders.

Each exported folder holds the selected checkpoint (weights, feature normalisation, classes), the
resolved trial config, the final metrics and a model card with the per-group tables — all read
from MLflow artifacts, so an export works against a remote tracking server too. Folders are staged
and renamed into place, so a crash never leaves a half-written export.

A LoRA model's folder also holds ``adapters/<backbone>/`` (``adapter_config.json`` +
``adapter_model.safetensors``): ``peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), that
folder)`` gives the fine-tuned backbone outside fairray; ``index.json`` lists them per trial. ``model.pt``
keeps the base model's folder and content hash, and ``fairray predict`` refuses a base model whose hash
differs from the one trained on.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fairray._atomic import atomic_write_text
from fairray.errors import DataError
from fairray.frontier.query import Front, Sweep, TrialRecord
from fairray.train.checkpoint import ADAPTERS_DIR

CARD = "MODEL_CARD.md"
METRICS = "metrics.json"
#: The utility columns of a card's per-subset table, in order: class metrics (single- and multi-label
#: trials), then the regression metrics (MAE, Pearson r, Acc2 / F1-2 over the non-zero targets).
CARD_METRICS = ("n", "acc", "weighted_f1", "macro_f1", "uar", "fpr", "mae", "corr", "acc2", "f1_2", "n_nonzero")


@dataclass(frozen=True)
class Exported:
    trial_id: str
    run_id: str
    path: Path
    objectives: dict[str, float]
    model_version: str | None = None


def _download(uri: str, run_id: str, artifact: str, dst: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dst),
                                                    tracking_uri=uri))


def _table_md(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join([df.index.name or "", *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for label, row in df.iterrows():
        cells = ["" if pd.isna(v) else f"{int(v)}" if float(v).is_integer() and (abs(v) > 1 or v == 0) else f"{v:.3f}"
                 for v in row]
        lines.append("| " + " | ".join([str(label), *cells]) + " |")
    return "\n".join(lines)


def _subset(row) -> str:
    parts = [f"{row.attr}={row.group}" if isinstance(row.group, str) else "",
             f"{row.stratum}={row.stratum_value}" if isinstance(row.stratum_value, str) else ""]
    return ", ".join(p for p in parts if p) or "all"


def _card_tables(df: pd.DataFrame) -> str:
    """Utilities per subset (rows) x metric (columns), then gaps per metric x language."""
    parts = df[df["scope"] != "gap"].assign(subset=lambda d: d.apply(_subset, axis=1))
    util = parts.pivot_table(index="subset", columns="metric", values="value", sort=False, dropna=False)
    util = util[[c for c in CARD_METRICS if c in util.columns]]
    util.index.name = "subset"
    gaps = df[df["scope"] == "gap"].assign(where=lambda d: d["stratum_value"].fillna("pooled"))
    gap = gaps.pivot_table(index="metric", columns="where", values="value", sort=False, dropna=False)
    gap.index.name = "gap"
    return f"{_table_md(util)}\n\nGaps between {', '.join(sorted(gaps['attr'].dropna().unique()))} groups:\n\n" \
           f"{_table_md(gap)}"


def _card(sweep: Sweep, front: Front, trial: TrialRecord, groups: dict[str, pd.DataFrame], config: str) -> str:
    m = trial.metrics
    objective_rows = "\n".join(f"| `{k}` | {d.value} | {m.get(k, float('nan')):.4f} | "
                               f"{m.get('test/' + k.split('/', 1)[1], float('nan')):.4f} |"
                               for k, d in zip(front.objectives, front.directions, strict=True))
    params = "\n".join(f"- `{k}` = `{v}`" for k, v in sorted(trial.params.items())) or "- (none searched)"
    sections = [f"### {split}\n\n{_card_tables(df)}\n" for split, df in groups.items()]
    return f"""# Model card — trial `{trial.trial_id}` of sweep `{sweep.experiment}`

Pareto-optimal on the dev objectives of MLflow sweep run `{sweep.run_id}` (trial run `{trial.run_id}`).
Selection used **dev** metrics only; **test** metrics are reported, never used to select.

## Objectives

| objective | direction | dev | test |
|---|---|---|---|
{objective_rows}

## Searched hyperparameters

{params}

## Intended use and limits

Research on gender gaps in speech emotion recognition. The built-in data (RAVDESS, nEMO: CC BY-NC-SA
4.0; EmoDB: free for research) are acted speech of few speakers per language; per-language dev/test
sets hold one to three speakers per gender, so gaps carry large speaker noise. Not for decisions about
people.

## Per-group metrics (selected checkpoint)

{chr(10).join(sections)}

## Resolved config

```yaml
{config}```
"""


def _adapters(folder: Path) -> list[str]:
    """The peft adapter folders of an export (relative paths), each loadable with
    ``peft.PeftModel.from_pretrained(base_model, folder / path)``."""
    root = folder / ADAPTERS_DIR
    return sorted(p.parent.relative_to(folder).as_posix() for p in root.rglob("adapter_config.json")) \
        if root.is_dir() else []


def _trial_folder(out: Path, trial: TrialRecord) -> Path:
    """The export folder of ``trial``: a plain folder name inside ``out``. A trial id is data from MLflow, not a
    path: one that would place the export elsewhere (``..``, a separator, an absolute path) is refused."""
    name = trial.trial_id
    target = out / name
    if (not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute()
            or target.resolve().parent != out.resolve()):
        raise DataError(f"trial {name!r} (MLflow run {trial.run_id}): its id is not a plain folder name, so its "
                        f"export would land outside {out}; nothing was exported")
    return target


def _base_models(folder: Path) -> dict[str, dict[str, str]]:
    """The frozen base models the checkpoint was trained on (module path -> folder and content hash), from
    the extra state in ``model.pt`` (memory-mapped: a fully fine-tuned backbone is not read into memory)."""
    import torch

    from fairray.train.checkpoint import EXTRA_STATE, MODEL_FILE

    state = torch.load(folder / MODEL_FILE, mmap=True, weights_only=True, map_location="cpu")
    return {key.removesuffix(EXTRA_STATE).rstrip(".") or "model": {"path": v["base_model_path"],
                                                                     "digest": v["base_model_digest"]}
            for key, v in state.items() if isinstance(v, dict) and "base_model_digest" in v}


def _backbone_section(folder: Path) -> str:
    bases, adapters = _base_models(folder), _adapters(folder)
    if not bases and not adapters:
        return ""
    lines = [f"- `{name}`: base model `{b['path']}` (content hash `{b['digest'][:16]}`); `fairray predict` refuses "
             "another" for name, b in bases.items()]
    lines += [f"- `{a}/`: peft adapter folder, `PeftModel.from_pretrained(AutoModel.from_pretrained(base), "
              f"'{a}')`" for a in adapters]
    return "\n## Backbone\n\n" + "\n".join(lines) + "\n"


def export_front(sweep: Sweep, front: Front, out_dir: str | Path, register: str | None = None) -> list[Exported]:
    """Write one folder per Pareto-optimal trial of ``front`` under ``out_dir``."""
    out = Path(out_dir)
    folders = {t.trial_id: _trial_folder(out, t) for t, on in zip(front.trials, front.on_front, strict=True) if on}
    out.mkdir(parents=True, exist_ok=True)
    exported = []
    for trial, on_front, values in zip(front.trials, front.on_front, front.values, strict=True):
        if not on_front:
            continue
        final = folders[trial.trial_id]
        staged = Path(tempfile.mkdtemp(prefix=f".{trial.trial_id}.", dir=out))
        try:
            with tempfile.TemporaryDirectory() as d:
                ckpt = _download(sweep.tracking_uri, trial.run_id, "checkpoint", Path(d))
                for f in ckpt.iterdir():  # weights, meta, config, and adapters/<backbone>/ for LoRA models
                    (shutil.copytree if f.is_dir() else shutil.copy2)(f, staged / f.name)
                groups_dir = _download(sweep.tracking_uri, trial.run_id, "groups", Path(d))
                groups = {p.stem: pd.read_csv(p) for p in sorted(groups_dir.glob("*.csv"))}
            config = (staged / "config.yaml").read_text()
            (staged / CARD).write_text(_card(sweep, front, trial, groups, config) + _backbone_section(staged))
            (staged / METRICS).write_text(json.dumps({"trial_id": trial.trial_id, "run_id": trial.run_id,
                                                      "sweep_run_id": sweep.run_id, "params": trial.params,
                                                      "metrics": trial.metrics}, indent=1, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        exported.append(Exported(trial.trial_id, trial.run_id, final,
                                 dict(zip(front.objectives, map(float, values), strict=True))))
    if register:
        exported = _register(sweep, front, exported, register)
    index = [{"trial_id": e.trial_id, "run_id": e.run_id, "path": e.path.name, "objectives": e.objectives,
              "model_version": e.model_version, "adapters": _adapters(e.path), "base_models": _base_models(e.path)}
             for e in exported]
    atomic_write_text(out / "index.json", json.dumps({"sweep": sweep.experiment, "sweep_run_id": sweep.run_id,
                                                      "exports": index}, indent=1))
    return exported


def _register(sweep: Sweep, front: Front, exported: list[Exported], name: str) -> list[Exported]:
    """Register each exported checkpoint as a version of ``name``; aliases ``pareto-K`` and ``best-<i>``."""
    from mlflow.exceptions import MlflowException

    from fairray.tracking import client

    c = client(sweep.tracking_uri)
    try:
        c.create_registered_model(name, description=f"Pareto-optimal trials of fairray sweep {sweep.experiment}")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    out = []
    for e in exported:
        source = f"{c.get_run(e.run_id).info.artifact_uri.rstrip('/')}/checkpoint"
        mv = c.create_model_version(name, source=source, run_id=e.run_id,
                                    tags={"fairray.trial_id": e.trial_id, "fairray.sweep_run_id": sweep.run_id})
        out.append(Exported(e.trial_id, e.run_id, e.path, e.objectives, mv.version))
    ordered = sorted(out, key=lambda e: e.objectives[front.objectives[0]],
                     reverse=front.directions[0].value == "max")
    for k, e in enumerate(ordered, 1):
        c.set_registered_model_alias(name, f"pareto-{k}", e.model_version)
    for i, (metric, direction) in enumerate(zip(front.objectives, front.directions, strict=True)):
        best = (max if direction.value == "max" else min)(out, key=lambda e, m=metric: e.objectives[m])
        c.set_registered_model_alias(name, f"best-{i}", best.model_version)
    return out
