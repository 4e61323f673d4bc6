"""One local-model loader: Hugging Face folders (and other weights) found on disk, never downloaded.

Every component that loads weights (the feature extractors of :mod:`fairray.data.features`, the backbone
model plugins of :mod:`fairray.models`) finds its folder, checks it, fingerprints it and imports its
optional libraries through these helpers, so a missing folder, an incomplete one or a missing package is
the same one-line error everywhere. A leaf module: it imports nothing else of fairray but the errors.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any

from fairray.errors import DataError

#: What the pip extra that carries the optional feature dependencies is called.
FEATURES_EXTRA = "pip install 'fairray[features]'"
#: Bytes hashed at each end of a large weight file for its fingerprint (size + head + tail).
_EDGE_BYTES = 1 << 20


def require(module: str, what: str, hint: str = FEATURES_EXTRA) -> Any:
    """Import an optional dependency or fail with one line naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(f"{what} needs the Python package {module!r} ({exc}); install it: {hint}") from None


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_dir(path: str, env_var: str | None, what: str, expected: str, required: tuple[str, ...],
                      key: str = "params.model_path") -> Path:
    """The local model folder from ``path`` or ``$env_var``; one DataError line when it is absent or incomplete.

    ``expected`` says what to put there (e.g. a Hugging Face model id to save with ``save_pretrained``);
    ``required`` are file names that must exist in the folder; ``key`` is the spec key that sets the path
    (``env_var`` None: the key alone).
    """
    raw = path or (os.environ.get(env_var, "") if env_var else "")
    where = f"{key} or {env_var}" if env_var else key
    if not raw:
        raise DataError(f"{what}: no local model folder; set {where} to a folder holding "
                        f"{expected} (models are never downloaded)")
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise DataError(f"{what}: model folder {folder} does not exist; set {where} to a "
                        f"folder holding {expected} (models are never downloaded)")
    missing = [name for name in required if not (folder / name).exists()]
    if missing:
        raise DataError(f"{what}: model folder {folder} lacks {missing}; it must hold {expected}")
    return folder


def folder_digest(folder: Path) -> str:
    """Digest of a model folder: every file's relative name, size, and the first/last MiB of its bytes."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}:{size}\n".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(_EDGE_BYTES))
            if size > _EDGE_BYTES:
                fh.seek(max(_EDGE_BYTES, size - _EDGE_BYTES))
                digest.update(fh.read())
    return digest.hexdigest()


def hf_offline() -> None:
    """Make every Hugging Face load of this process local-only (respects an explicit user setting)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_hf(auto_class: str, folder: Path, what: str, expected: str, **kwargs: Any) -> Any:
    """``transformers.<auto_class>.from_pretrained(folder, local_files_only=True, **kwargs)`` (``AutoConfig``,
    ``AutoModel``, ``AutoFeatureExtractor``, ``AutoTokenizer``, ``AutoProcessor`` ...), offline; one DataError
    line naming the folder and what it must hold when it cannot be read."""
    hf_offline()
    transformers = require("transformers", what)
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a "Loading weights" bar per trial and per predict is noise on stderr
    try:
        return getattr(transformers, auto_class).from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{what}: {auto_class} cannot load {folder} ({_first_line(exc)}); it must hold {expected}"
                        ) from None
    finally:
        if bars:
            logging.enable_progress_bar()


def hf_skeleton(config: Any) -> Any:
    """``AutoModel.from_config(config)`` on the meta device: the module tree without weights or memory (to
    check module names, e.g. LoRA target modules, when a spec is loaded)."""
    import torch

    transformers = require("transformers", "model skeleton")
    with torch.device("meta"):
        return transformers.AutoModel.from_config(config)


def base_model_record(folder: Path) -> dict[str, str]:
    """What a checkpoint keeps of the frozen base model it was trained on: the folder and its content hash."""
    return {"path": str(Path(folder).resolve()), "digest": folder_digest(Path(folder))}
