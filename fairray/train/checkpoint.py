"""The one checkpoint format of a trial (what ``fairray predict`` and ``export`` read back).

A checkpoint folder holds::

    model.pt      trainable state of the training module (parameters with requires_grad, and buffers)
    best.pt       trainable state of the best epoch so far (selection), during training only
    trainer.pt    epoch, selection record, optimiser / grad-scaler / method state, skipped-step count
    fairray.json  what predict needs besides weights (classes, input specs, normalisation, fingerprint)
    config.yaml   the resolved trial spec
    adapters/     one peft adapter folder per LoRA-wrapped backbone (``adapters/backbone``: adapter_config.json
                  + adapter_model.safetensors, what ``peft.PeftModel.from_pretrained(base, folder)`` loads)

Only trainable state is saved: a model that freezes a backbone (a LoRA adapter over a speech LLM)
saves its adapters and head, never the frozen weights, which are rebuilt from the model's own folder.
A module's ``get_extra_state`` (e.g. the base model's folder and content hash, see
:class:`fairray.models.ssl.SSLClassifier`) is saved with it, and its ``set_extra_state`` may refuse a
checkpoint on load (a base model whose hash differs).
Files are written to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

MODEL_FILE = "model.pt"
BEST_FILE = "best.pt"
TRAINER_FILE = "trainer.pt"
META_FILE = "fairray.json"
CONFIG_FILE = "config.yaml"
ADAPTERS_DIR = "adapters"
#: libyaml's emitter when PyYAML has it (the same safe subset, ~10x faster than the pure-Python one)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
#: The state-dict key of a module's ``get_extra_state`` (torch's ``_EXTRA_STATE_KEY_SUFFIX``).
EXTRA_STATE = "_extra_state"


def unwrap(model: nn.Module) -> nn.Module:
    """The training module inside a DDP wrapper (``session.prepare_model``)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def trainable_names(module: nn.Module) -> set[str]:
    """State-dict keys that are trained: parameters with ``requires_grad``, (persistent) buffers and the
    modules' extra state (``get_extra_state``)."""
    module = unwrap(module)
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers()}
    keys = set(module.state_dict())
    return names | (buffers & keys) | {k for k in keys if k.rsplit(".", 1)[-1] == EXTRA_STATE}


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable entries of the module's state dict, on the CPU (detached copies)."""
    keep = trainable_names(module)
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
            for k, v in unwrap(module).state_dict().items() if k in keep}


def load_trainable_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into the trainable part of ``module``; every trainable key must be there, and no other."""
    module = unwrap(module)
    want = trainable_names(module)
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - set(module.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{source}: the saved weights do not fit the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); was it written by another model or method configuration?")
    try:
        module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches: torch's message spans lines
        first = str(exc).strip().splitlines()[-1].strip()
        raise ValueError(f"{source}: the saved weights do not fit the model ({first}); was it written by another "
                         "model configuration?") from None


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(module: nn.Module, path: str | Path) -> None:
    """Write the trainable state of ``module`` to ``path`` atomically."""
    _save(trainable_state(module), Path(path))


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(path), weights_only=True, map_location="cpu")


def checkpoint_texts(meta: Mapping[str, Any], raw: Mapping[str, Any]) -> tuple[str, str]:
    """``fairray.json`` and ``config.yaml`` of a trial: the same in every checkpoint, rendered once."""
    return json.dumps(meta, indent=1), yaml.dump(dict(raw), Dumper=_YAML_DUMPER, sort_keys=False)


def write_checkpoint(d: str | Path, module: nn.Module, trainer_state: Mapping[str, Any],
                     meta: Mapping[str, Any] | tuple[str, str], raw: Mapping[str, Any] | None = None,
                     best: str | Path | None = None, model_state: str | Path | None = None) -> None:
    """A complete checkpoint folder in ``d`` (``best``: the best-epoch weights file to include). ``meta`` is
    the meta dict (with ``raw``, the trial spec) or both already rendered by :func:`checkpoint_texts`.
    ``model_state``: a file already holding ``module``'s trainable state (the best epoch's, once the module
    has been given it back), used as ``model.pt`` instead of saving the module again."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if model_state is not None:
        _link(model_state, d / MODEL_FILE)
    else:
        save_state(module, d / MODEL_FILE)
    if best is not None and Path(best).is_file():
        _link(best, d / BEST_FILE)
    _save(dict(trainer_state), d / TRAINER_FILE)
    write_adapters(module, d)
    meta_text, config_text = meta if isinstance(meta, tuple) else checkpoint_texts(meta, raw or {})
    (d / META_FILE).write_text(meta_text)
    (d / CONFIG_FILE).write_text(config_text)


def _link(source: str | Path, target: Path) -> None:
    """``target`` with the bytes of ``source``: a hard link when the file system allows it, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_adapters(module: nn.Module, d: str | Path) -> list[Path]:
    """The peft adapter folders of ``module`` under ``d/adapters`` (none for a model without LoRA), each
    staged and renamed into place."""
    from fairray.models._peft import peft_models, save_adapters

    module = unwrap(module)
    if not peft_models(module):
        return []
    root = Path(d) / ADAPTERS_DIR
    root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".adapters.", dir=root))
    try:
        out = []
        for name, folder in save_adapters(module, staged).items():
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(folder, final)
            out.append(final)
        return out
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def read_trainer_state(d: str | Path) -> dict[str, Any]:
    return torch.load(Path(d) / TRAINER_FILE, weights_only=True, map_location="cpu")
