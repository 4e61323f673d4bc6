"""Fine-tuning a pretrained backbone: which of its weights train, and LoRA adapters through peft.

The one place the backbone model plugins (``ssl``, ``text``, ``qwen2_audio``, fusion) decide what trains:

* :func:`set_finetune` ``(backbone, mode, ...)``: ``frozen`` (nothing trains), ``top_k`` (the last ``k``
  blocks of ``layers``, plus ``extra`` modules such as a final norm), ``full`` (everything) or ``lora``
  (:func:`apply_lora`). Returns the backbone to use (a ``peft.PeftModel`` for ``lora``).
* :func:`apply_lora` ``(module, r=, alpha=, dropout=, target_modules=, who=)``: LoRA adapters on the named
  modules (``peft.LoraConfig`` + ``peft.get_peft_model``); every other weight of ``module`` is frozen. A
  target name the model lacks is a one-line :class:`~fairray.errors.ConfigError` that lists the module
  names it has (:func:`check_targets`, which also runs on a meta-device skeleton when a spec is loaded).
* :func:`peft_models` / :func:`save_adapters`: the ``PeftModel`` s inside a module tree and their adapter
  folders (``adapter_config.json`` + ``adapter_model.safetensors``, what
  ``peft.PeftModel.from_pretrained(base, folder)`` loads); :func:`adapter_state` gives one adapter's
  weights and ``LoraConfig``. :mod:`fairray.train.checkpoint` writes the folders beside ``model.pt``.
* :func:`unreached_adapters`: LoRA modules a forward pass never calls (a model that reads a target's
  weight directly instead of calling it); a plugin refuses those targets instead of training dead adapters.

Only ``requires_grad`` parameters are optimised and checkpointed by the loop, so what this module leaves
trainable is exactly what a checkpoint holds (adapters + head for LoRA).

Example::

    backbone = set_finetune(AutoModel.from_pretrained(folder), "lora", who="model ssl",
                            lora={"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ("q_proj", "v_proj")})
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fairray.errors import ConfigError

Finetune = Literal["frozen", "top_k", "full", "lora"]
FINETUNE_MODES: tuple[str, ...] = ("frozen", "top_k", "full", "lora")
#: The pip requirement named when peft is missing.
PEFT_HINT = "pip install 'peft==0.21.2'"
#: Folder (inside a checkpoint or an export) that holds one peft adapter folder per PeftModel.
ADAPTERS_DIR = "adapters"


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 calls transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning on every
    wrap and load with transformers 5): third-party noise, not something a user can act on; likewise the
    input-embeddings notice below."""
    import transformers

    logging = transformers.utils.logging
    level = logging.get_verbosity()
    # with gradient checkpointing, peft asks a speech model for input embeddings it does not have (a logged
    # warning); the non-reentrant checkpointing fairray enables needs none
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        logging.set_verbosity(level)


def _peft(who: str) -> Any:
    from fairray._local_model import require

    return require("peft", who, PEFT_HINT)


def module_names(module: nn.Module) -> list[str]:
    """The deduplicated last name components of the submodules that own weights (what ``target_modules``
    names match: ``q_proj``, ``v_proj``, ``intermediate_dense`` ...), sorted."""
    names = {name.rsplit(".", 1)[-1] for name, sub in module.named_modules()
             if name and next(sub.parameters(recurse=False), None) is not None}
    return sorted(n for n in names if not n.isdigit())


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_targets(module: nn.Module, target_modules: Sequence[str] | str, who: str) -> None:
    """Every name of ``target_modules`` (or the regex, peft's full-match semantics) must name a module
    of ``module``; otherwise one ConfigError line listing the module names there are."""
    names = [n for n, _ in module.named_modules() if n]
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, n) for n in names):
            raise ConfigError(f"{who}: target_modules regex {target_modules!r} matches no module of "
                              f"{type(module).__name__}; its module names: {', '.join(module_names(module))}")
        return
    if not target_modules:
        raise ConfigError(f"{who}: target_modules is empty; name the modules to adapt, e.g. q_proj, v_proj "
                          f"(module names of {type(module).__name__}: {', '.join(module_names(module))})")
    missing = [t for t in target_modules if not any(_matches(n, t) for n in names)]
    if missing:
        raise ConfigError(f"{who}: target_modules {missing} are not modules of {type(module).__name__}; "
                          f"its module names: {', '.join(module_names(module))}")


def apply_lora(module: nn.Module, *, r: int, alpha: float, dropout: float, target_modules: Sequence[str] | str,
               who: str) -> nn.Module:
    """``module`` wrapped in a ``peft.PeftModel`` with LoRA adapters (rank ``r``, scale ``alpha / r``,
    ``dropout`` before A) on ``target_modules``; every non-LoRA weight of ``module`` is frozen.

    ``target_modules``: module names (a module matches when its dotted name is, or ends with, the name)
    or one regex string that must match whole names (``.*language_model.*\\.(q_proj|v_proj)``). A name the
    model lacks, or a module type LoRA cannot adapt, is a one-line ConfigError.
    """
    peft = _peft(who)
    if r < 1:
        raise ConfigError(f"{who}: LoRA rank r must be >= 1, got {r}")
    check_targets(module, target_modules, who)
    names = module_names(module)  # before peft adds its own submodules
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    try:
        with _quiet_peft():
            wrapped = peft.get_peft_model(module, config)
    except ValueError as exc:  # e.g. a GroupNorm target: LoRA adapts Linear, Conv, Embedding only
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{who}: LoRA cannot adapt target_modules {target_modules} ({first}); module names: "
                          f"{', '.join(names)}") from None
    for name, p in wrapped.named_parameters():  # peft's own invariant, stated where we rely on it
        if p.requires_grad and "lora_" not in name:
            p.requires_grad_(False)
    return wrapped


def unreached_adapters(model: nn.Module, run: Callable[[], Any]) -> list[str]:
    """The LoRA-wrapped modules of ``model`` whose adapters ``run()`` (one forward pass) never calls.

    peft adapts a module by wrapping its ``forward``; a model that reads the module's ``weight`` directly
    (transformers' WavLM attention passes ``q_proj.weight`` to ``F.multi_head_attention_forward``) would
    train adapters that change nothing. A plugin calls this once on a tiny input and refuses such targets.
    """
    from peft.tuners.lora import LoraLayer

    called: set[str] = set()
    hooks = []
    for name, sub in model.named_modules():
        if isinstance(sub, LoraLayer):
            for a in sub.lora_A.values():
                hooks.append(a.register_forward_hook(lambda *_, n=name: called.add(n)))
    wrapped = {name for name, sub in model.named_modules() if isinstance(sub, LoraLayer)}
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return sorted(wrapped - called)


def set_finetune(backbone: nn.Module, mode: str, *, who: str, layers: Sequence[nn.Module] | None = None,
                 top_k: int = 1, extra: Sequence[nn.Module] = (), lora: Mapping[str, Any] | None = None
                 ) -> nn.Module:
    """Set which weights of ``backbone`` train; returns the backbone to use (wrapped for ``lora``).

    ``frozen``: none. ``top_k``: the last ``top_k`` of ``layers`` (the transformer blocks, in order) and
    the ``extra`` modules (e.g. a final layer norm after them). ``full``: all (a plugin may then freeze
    parts again, e.g. a convolutional feature encoder). ``lora``: :func:`apply_lora` with the keyword
    arguments in ``lora`` (``r``, ``alpha``, ``dropout``, ``target_modules``).
    """
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"{who}: finetune must be one of {', '.join(FINETUNE_MODES)}, got {mode!r}")
    if mode == "lora":
        if lora is None:
            raise ConfigError(f"{who}: finetune lora needs the LoRA settings (r, alpha, dropout, target_modules)")
        return apply_lora(backbone, who=who, **dict(lora))
    backbone.requires_grad_(mode == "full")
    if mode == "top_k":
        if layers is None or not len(layers):
            raise ConfigError(f"{who}: finetune top_k needs the backbone's transformer blocks; this model has none")
        if not 1 <= top_k <= len(layers):
            raise ConfigError(f"{who}: top_k must be in 1..{len(layers)} (the model's transformer blocks), "
                              f"got {top_k}")
        for block in [*list(layers)[-top_k:], *extra]:
            block.requires_grad_(True)
    return backbone


def count_params(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def peft_models(module: nn.Module) -> dict[str, nn.Module]:
    """The ``peft.PeftModel`` s inside ``module``, by their dotted module path (``"backbone"``); the
    outermost only (a PeftModel's own submodules are not searched)."""
    if "peft" not in sys.modules:  # nothing can have been wrapped: do not import peft for plain models
        return {}
    from peft import PeftModel

    found: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, PeftModel) and not any(name.startswith(f"{p}.") for p in found):
            found[name or "model"] = sub
    return found


def adapter_state(peft_model: nn.Module) -> tuple[dict[str, torch.Tensor], Any]:
    """(adapter weights as peft saves them, the ``LoraConfig``) of a PeftModel's active adapter."""
    from peft import get_peft_model_state_dict

    name = peft_model.active_adapter
    return get_peft_model_state_dict(peft_model, adapter_name=name), peft_model.peft_config[name]


def save_adapters(module: nn.Module, folder: str | Path) -> dict[str, Path]:
    """Write one peft adapter folder per PeftModel in ``module`` under ``folder`` (``folder/<path>``), each
    loadable with ``peft.PeftModel.from_pretrained(base_model, that_folder)``; returns them by module path."""
    out: dict[str, Path] = {}
    for name, model in peft_models(module).items():
        target = Path(folder) / name
        with _quiet_peft():
            model.save_pretrained(str(target))
        out[name] = target
    return out


def load_adapter(base: nn.Module, folder: str | Path) -> nn.Module:
    """``peft.PeftModel.from_pretrained(base, folder)``, without peft's deprecation noise."""
    peft = _peft("load_adapter")
    with _quiet_peft():
        return peft.PeftModel.from_pretrained(base, str(folder))
