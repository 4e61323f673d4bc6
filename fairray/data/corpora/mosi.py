"""CMU-MOSI / CMU-MOSEI sentiment from pre-extracted features: MulT pickles or CMU-Multimodal-SDK ``.csd`` files.

Two formats are read; the adapter picks one from what is in ``root`` (the pickle when there is one, else the
labels ``.csd``; ``format="pickle"`` / ``format="csd"`` forces it). Both give the same table.

**MulT pickles** (yaohungt/Multimodal-Transformer: ``mosi_data.pkl``, ``mosei_senti_data.pkl`` and their
``*_noalign.pkl``)::

    {train, valid, test} → {text (N,T,300), audio (N,T,Da), vision (N,T,Dv), labels (N,1,1), id (N,k)}

numpy arrays only (anything else in the pickle is refused). Sequences are zero-padded to T steps.

**CMU-Multimodal-SDK computational sequences** (``mmsdk.mmdatasdk``), *aligned to the labels* (``dataset.align(
<labels>)`` then ``deploy``, as in the SDK's ``process_mosi.py``), one HDF5 file per sequence::

    <file>.csd
      <root name>/                      # the single top-level group, named after the sequence
        data/<video>[<k>]/features      # float [T, D]: the segment's T steps (words, frames)
        data/<video>[<k>]/intervals     # float [T, 2]: start/end seconds of each step
        metadata/<key>                  # JSON strings (bytes or str, as datasets or attributes)
    root/
      <labels>.csd       # MOSI: features [1, 1] sentiment; MOSEI: [1, 7] = sentiment + 6 emotions (column 0 read)
      <text>.csd  <audio>.csd  <vision>.csd      # the modalities in ``modalities`` (default all three)
      standard_folds.json                        # {"train": [video ids], "valid": [...], "test": [...]}

File names: the options ``labels``, ``text``, ``audio``, ``vision`` (relative to ``root``, ``.csd`` optional),
else the first present of the SDK's names: the recipe keys that ``deploy({k: k})`` writes (``glove_vectors``,
``COVAREP``, ``FACET_4.2``, ``Opinion Segment Labels``; MOSEI ``FACET 4.2``, ``All Labels``) or the names of
the downloaded files (``CMU_MOSI_COVAREP``, ``CMU_MOSEI_Labels`` ...; see each adapter). The standard splits
are Python lists in the SDK; save them once as JSON (``folds=`` names another file)::

    from mmsdk.mmdatasdk import cmu_mosi as sdk          # cmu_mosei for MOSEI
    f = sdk.standard_folds
    json.dump({"train": f.standard_train_fold, "valid": f.standard_valid_fold, "test": f.standard_test_fold},
              open("standard_folds.json", "w"))

A segment ``<video>[k]`` belongs to its video's fold; segments of a video in no fold (as in the SDK's
``get_tensors``), and segments a selected modality has no entry for, are left out and listed in
``adapter.left_out`` (segment id → reason, also logged). Non-finite features (COVAREP holds -inf) follow
``nonfinite``: ``"zero"`` (default; replaced by 0 as the SDK authors do, CMU-MultimodalSDK issue 179),
``"skip"`` (left out) or ``"error"``; the segments are listed in ``adapter.nonfinite`` either way. The same
checks apply to the pickles.

The table has one row per segment; features stay in the files: :meth:`features` returns each row's
time-averaged features (mean over the steps that are not all zero: MulT's and ``get_tensors``' padding, the
SDK's ``impute`` fill), the selected modalities side by side.

``sequences=True`` gives the aligned steps themselves instead: one ``sequence`` input per selected modality,
named after it (``text`` [T x 300] GloVe, ``audio`` [T x 74 or 5] COVAREP, ``vision`` [T x 35 or 20] FACET), each
row its segment's frames with their length (:meth:`shipped_inputs`), and no time-averaged vector. Padding is
trimmed per row and modality (:func:`trim_padding`: the all-zero steps at either end, where MulT's pickles and
``get_tensors`` pad; all-zero steps inside a segment are kept, in order). A segment whose modality has no
non-zero step gets an empty sequence (length 0, mask all False; models give it a zero encoding), counted in
``adapter.empty_frames`` and one warning. Frames are read once per (source files, rows, options) and stored in
the feature cache (``sequences/``: content-keyed, atomic, :mod:`fairray.data._sequences`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairray.data.corpora._base import CORPORA, CorpusAdapter, validate_table
from fairray.errors import ConfigError, DataError
from fairray.inputs import InputSpec

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "valid": "dev", "test": "test"}
#: Sentiment range of the MOSI/MOSEI annotations (-3 strongly negative .. +3 strongly positive).
SENTIMENT_RANGE = (-3.0, 3.0)
MODALITIES = ("text", "audio", "vision")
FORMATS = ("auto", "pickle", "csd")
NONFINITE = ("zero", "skip", "error")
#: Default name (under root) of the standard folds as JSON.
FOLDS_FILE = "standard_folds.json"
H5PY_HINT = "pip install h5py"
#: Classes a pickle may reference: numpy arrays, dtypes and scalars, nothing that runs code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocols 0-2 store bytes (MOSI's byte-string ids)
}
_SEGMENT_INDEX = re.compile(r"\[(\d+)\]$")


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path) -> None:
        super().__init__(file, encoding="latin1")  # also reads pickles written by Python 2
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"{self.source}: the pickle references {module}.{name}; only numpy arrays are accepted")


def read_pickle(path: Path) -> dict:
    """Load a feature pickle, refusing anything but dicts of numpy arrays."""
    try:
        with open(path, "rb") as handle:
            data = _ArrayUnpickler(handle, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with keys {sorted(SPLITS)}, got {type(data).__name__}")
    return data


def _as_str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _segment_ids(split: dict, n: int, source: str) -> list[list[str]] | None:
    if "id" not in split:
        return None
    ids = np.asarray(split["id"], dtype=object)
    if ids.shape[0] != n:
        raise DataError(f"{source}: 'id' has {ids.shape[0]} rows but 'labels' has {n}")
    return [[_as_str(v) for v in np.atleast_1d(row)] for row in ids]


def _check_sentiment(target: np.ndarray, what: list[str], source: str) -> None:
    """DataError naming the first value outside :data:`SENTIMENT_RANGE` (NaN included)."""
    outside = ~((target >= SENTIMENT_RANGE[0]) & (target <= SENTIMENT_RANGE[1]))
    if outside.any():
        i = int(outside.nonzero()[0][0])
        raise DataError(f"{source}: {what[i]} = {float(target[i])} is outside {list(SENTIMENT_RANGE)}")


def trim_padding(steps: np.ndarray, nonfinite: str = "zero") -> list[np.ndarray]:
    """Each row of ``steps`` [N, T, D] without the all-zero steps at either end (MulT's and the SDK's padding;
    all-zero steps between non-zero ones are kept): N float32 arrays [T_i, D], T_i = 0 for a row that is all
    zero. ``nonfinite="zero"`` first replaces NaN/inf by 0 (COVAREP's -inf)."""
    steps = np.asarray(steps, dtype=np.float32)
    if nonfinite == "zero":
        steps = np.where(np.isfinite(steps), steps, np.float32(0.0))
    used = (steps != 0).any(axis=-1)  # [N, T]
    any_used = used.any(axis=1)
    first = np.where(any_used, used.argmax(axis=1), 0)
    stop = np.where(any_used, steps.shape[1] - used[:, ::-1].argmax(axis=1), 0)
    return [steps[i, a:b] for i, (a, b) in enumerate(zip(first, stop, strict=True))]


def time_average(steps: np.ndarray, nonfinite: str = "zero") -> np.ndarray:
    """Mean over the time axis (-2) of ``steps`` [..., T, D], over the steps that are not all zero (padding,
    imputation); all-zero input gives zeros. ``nonfinite="zero"`` first replaces NaN/inf by 0."""
    steps = np.asarray(steps, dtype=np.float64)
    if nonfinite == "zero":
        steps = np.where(np.isfinite(steps), steps, 0.0)
    used = (steps != 0).any(axis=-1, keepdims=True)
    count = used.sum(axis=-2)
    return np.where(used, steps, 0.0).sum(axis=-2) / np.maximum(count, 1)


# -- CMU-Multimodal-SDK computational sequences --------------------------------------------------------

def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise DataError(f"reading CMU-Multimodal-SDK .csd files needs the Python package 'h5py' ({exc}); "
                        f"install it: {H5PY_HINT}") from None
    return h5py


def _decode(value: Any) -> Any:
    """A metadata value as h5py returns it (bytes, str, 0-d/1-element arrays of either) → JSON value or str."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else [_decode(v) for v in value.reshape(-1)]
        if isinstance(value, list):
            return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@contextmanager
def open_csd(path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Open a ``.csd`` file: yields (its ``data`` group, its metadata as a dict); one-line DataError if the file
    is not HDF5 or not laid out as a computational sequence."""
    h5py = _h5py()
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable HDF5 computational sequence ({first})") from None
    try:
        roots = [k for k in handle if isinstance(handle[k], h5py.Group) and isinstance(handle[k].get("data"),
                                                                                        h5py.Group)]
        if len(roots) != 1:
            raise DataError(f"{path}: expected one top-level group holding 'data' (and 'metadata'), the "
                            f"CMU-Multimodal-SDK layout; found {len(roots)} among {sorted(handle)[:5]}")
        root = handle[roots[0]]
        metadata: dict[str, Any] = {"root name": roots[0]}
        metadata.update({k: _decode(v) for k, v in root.attrs.items()})
        meta = root.get("metadata")
        if isinstance(meta, h5py.Group):
            metadata.update({k: _decode(v) for k, v in meta.attrs.items()})
            for key, item in meta.items():
                if isinstance(item, h5py.Dataset):
                    metadata[key] = _decode(item[()])
        yield root["data"], metadata
    except OSError as exc:  # a file that opens but whose contents cannot be read (truncated, corrupt)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: unreadable HDF5 contents ({first})") from None
    finally:
        handle.close()


def read_csd_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a ``.csd`` file (``root name``, ``computational sequence description``, ``dimension
    names`` ...): JSON-decoded where the value is JSON, else the string."""
    with open_csd(Path(path)) as (_, metadata):
        return metadata


def _features(data: Any, key: str, path: Path) -> np.ndarray:
    entry = data[key]
    if not hasattr(entry, "keys") or "features" not in entry:
        raise DataError(f"{path}: data/{key!r} has no 'features' dataset; expected features [T, D] and intervals "
                        "[T, 2] (CMU-Multimodal-SDK layout)")
    features = np.asarray(entry["features"][()])
    if features.ndim != 2:
        raise DataError(f"{path}: data/{key!r}/features has shape {features.shape}; expected [T, D]")
    return features


def _segment_key(segment: str) -> tuple[str, int, str]:
    match = _SEGMENT_INDEX.search(segment)
    return segment.split("[")[0], int(match.group(1)) if match else -1, segment


def read_csd_labels(path: Path) -> dict[str, float]:
    """Segment id → sentiment (column 0) of a labels ``.csd`` aligned to its segments, in (video, k) order."""
    labels: dict[str, float] = {}
    with open_csd(path) as (data, _):
        for key in data:
            features = _features(data, key, path)
            if features.shape[0] != 1 or features.shape[1] < 1:
                raise DataError(f"{path}: data/{key!r}/features has shape {features.shape}; expected one row per "
                                "segment ([1, 1] MOSI, [1, 7] MOSEI): align the labels with mmsdk first "
                                "(dataset.align(<labels>), then deploy)")
            labels[key] = float(features[0, 0])
    if not labels:
        raise DataError(f"{path}: the labels sequence has no entries under data/")
    keys = sorted(labels, key=_segment_key)
    target = np.array([labels[k] for k in keys])
    _check_sentiment(target, [f"data/{k!r} sentiment" for k in keys], str(path))
    return {k: labels[k] for k in keys}


def read_folds(path: Path) -> dict[str, str]:
    """``standard_folds.json`` → video id → split key (train, valid, test)."""
    if not path.is_file():
        raise DataError(f"{path}: standard folds not found; save mmsdk's standard_folds there as JSON "
                        '{"train": [video ids], "valid": [...], "test": [...]} (see `fairray data list --layouts`) '
                        "or pass folds=FILE")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(raw, dict) and "valid" not in raw and "dev" in raw:
        raw = {**raw, "valid": raw["dev"]}
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), list) for k in SPLITS):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path}: expected {{\"train\": [...], \"valid\": [...], \"test\": [...]}} lists of video "
                        f"ids; got {got}")
    fold_of: dict[str, str] = {}
    for key in SPLITS:
        for video in map(str, raw[key]):
            if fold_of.get(video, key) != key:
                raise DataError(f"{path}: video {video!r} is in both {fold_of[video]!r} and {key!r}")
            fold_of[video] = key
    return fold_of


# -- the adapters ---------------------------------------------------------------------------------------

def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _csd_name(name: str) -> str:
    return name if name.endswith(".csd") else f"{name}.csd"


class _SentimentAdapter(CorpusAdapter):
    #: The float target columns ``dataset.targets: regression`` may read.
    continuous_targets: ClassVar[tuple[str, ...]] = ("reg_target",)
    #: MulT pickle names, in order of preference.
    files: ClassVar[tuple[str, ...]]
    #: Role (labels, text, audio, vision) → candidate .csd names under root, in order of preference.
    csd_files: ClassVar[dict[str, tuple[str, ...]]]

    def __init__(self, format: str = "auto", modalities: Sequence[str] = MODALITIES, text: str | None = None,
                 audio: str | None = None, vision: str | None = None, labels: str | None = None,
                 folds: str | Path | None = None, nonfinite: str = "zero", demographics: str | Path | None = None,
                 sequences: bool = False) -> None:
        if format not in FORMATS:
            raise ConfigError(f"{self.name}: format must be one of {list(FORMATS)}, got {format!r}")
        if nonfinite not in NONFINITE:
            raise ConfigError(f"{self.name}: nonfinite must be one of {list(NONFINITE)}, got {nonfinite!r}")
        modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
        if any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
            raise ConfigError(f"{self.name}: modalities must be distinct names from {list(MODALITIES)}, "
                              f"got {list(modalities)}")
        self.format = format
        self.modalities = modalities
        self.nonfinite_policy = nonfinite
        self.folds = folds
        self.demographics = demographics
        #: Each modality as its own sequence input (its aligned frames) instead of the time-averaged vector.
        self.sequences = bool(sequences)
        #: Modality -> segments of the last :meth:`shipped_inputs` without a non-zero frame (empty sequences).
        self.empty_frames: dict[str, tuple[str, ...]] = {}
        self.names = {role: value for role, value in (("text", text), ("audio", audio), ("vision", vision),
                                                      ("labels", labels)) if value is not None}
        #: Segments of the last :meth:`load` left out of the table: segment id → reason.
        self.left_out: dict[str, str] = {}
        #: Segments of the last :meth:`load` with NaN/inf features (zeroed, left out or refused per ``nonfinite``).
        self.nonfinite: tuple[str, ...] = ()
        #: Role → file the last :meth:`load` read (relative to root).
        self.sources: dict[str, str] = {}

    # -- locating the files ---------------------------------------------------------------------------
    def _candidates(self, role: str) -> tuple[str, ...]:
        return (_csd_name(self.names[role]),) if role in self.names else tuple(map(_csd_name, self.csd_files[role]))

    def _find_csd(self, root: Path, role: str) -> Path | None:
        return next((root / f for f in self._candidates(role) if (root / f).is_file()), None)

    def _locate(self, root: Path) -> tuple[str, Path]:
        pkl = next((root / f for f in self.files if (root / f).is_file()), None)
        if self.format != "csd" and pkl is not None:
            return "pickle", pkl
        labels = self._find_csd(root, "labels") if self.format != "pickle" else None
        if labels is not None:
            return "csd", labels
        if self.format == "pickle":
            raise DataError(f"{root}: none of {list(self.files)} found")
        looked = list(self._candidates("labels"))
        if self.format == "csd":
            raise DataError(f"{root}: no labels .csd found (looked for {looked}); pass labels=FILE")
        raise DataError(f"{root}: none of {list(self.files)} found, nor a labels .csd ({looked}); see "
                        "`fairray data list --layouts`")

    # -- loading -------------------------------------------------------------------------------------
    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        kind, path = self._locate(root)
        self.sources = {}
        frame, left_out = self._load_pickle(path) if kind == "pickle" else self._load_csd(root, path)
        return self._finish(frame, left_out, path, root)

    def _load_pickle(self, path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
        data = read_pickle(path)
        missing = [s for s in SPLITS if s not in data]
        if missing:
            raise DataError(f"{path}: missing split(s) {missing}; got {sorted(map(str, data))}")
        self.sources = {"labels": path.name, **{m: path.name for m in self.modalities}}
        frames = []
        for key, split_name in SPLITS.items():
            split = data[key]
            source = f"{path}[{key!r}]"
            if not isinstance(split, dict) or "labels" not in split:
                raise DataError(f"{source}: expected a dict with 'labels' (and text, audio, vision, id)")
            labels = np.asarray(split["labels"], dtype=np.float64)
            n = labels.shape[0] if labels.ndim else 0
            if labels.size != n:
                raise DataError(f"{source}: 'labels' has shape {labels.shape}; expected (N, 1, 1) sentiment scores")
            target = labels.reshape(n)
            _check_sentiment(target, [f"labels[{i}]" for i in range(n)], source)
            for modality in MODALITIES:
                if modality in split and np.shape(split[modality])[0] != n:
                    raise DataError(f"{source}: {modality!r} has {np.shape(split[modality])[0]} rows, 'labels' {n}")
            nonfinite = np.full(n, "", dtype=object)
            for modality in self.modalities:
                if modality not in split:
                    raise DataError(f"{source}: no {modality!r} array; leave it out of modalities "
                                    f"(now {list(self.modalities)})")
                values = np.asarray(split[modality])
                if not np.issubdtype(values.dtype, np.number):
                    raise DataError(f"{source}: {modality!r} holds {values.dtype}; expected numbers (N, T, D)")
                bad = ~np.isfinite(values).reshape(n, -1).all(axis=1)
                nonfinite[bad & (nonfinite == "")] = f"{source}: NaN/inf in {modality!r}"
            ids = _segment_ids(split, n, source)
            frame = pd.DataFrame({"row": np.arange(n), "split": split_name, "reg_target": target})
            if ids is None:
                # Without ids the video (a speaker proxy) is unknown: every segment is its own pseudo-speaker.
                frame["segment_id"] = [f"{key}{i}" for i in range(n)]
                frame["speaker"] = [f"{self.name}_{key}{i}" for i in range(n)]
            else:
                frame["segment_id"] = ["|".join(fields) for fields in ids]
                frame["video_id"] = [fields[0] for fields in ids]
                frame["speaker"] = [f"{self.name}_{fields[0]}" for fields in ids]
            frame["_missing"] = ""
            frame["_nonfinite"] = [f"{msg}, row {i} (segment {seg!r})" if msg else ""
                                   for i, (msg, seg) in enumerate(zip(nonfinite, frame["segment_id"], strict=True))]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True), {}

    def _load_csd(self, root: Path, labels_path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
        labels = read_csd_labels(labels_path)
        folds_path = root / self.folds if self.folds is not None else root / FOLDS_FILE
        fold_of = read_folds(folds_path)
        self.sources = {"labels": _relative(labels_path, root)}
        left_out: dict[str, str] = {}
        rows: dict[str, list[str]] = {key: [] for key in SPLITS}
        for segment in labels:
            video = segment.split("[")[0]
            if video in fold_of:
                rows[fold_of[video]].append(segment)
            else:
                left_out[segment] = f"video {video!r} is in no fold of {folds_path.name}"
        segments = [s for key in SPLITS for s in rows[key]]
        missing = dict.fromkeys(segments, "")
        nonfinite = dict.fromkeys(segments, "")
        for modality in self.modalities:
            path = self._find_csd(root, modality)
            if path is None:
                raise DataError(f"{root}: no {modality} .csd found (looked for {list(self._candidates(modality))}); "
                                f"pass {modality}=FILE or leave {modality!r} out of modalities")
            self.sources[modality] = _relative(path, root)
            width = None
            with open_csd(path) as (data, _):
                for segment in segments:
                    if segment not in data:
                        missing[segment] = missing[segment] or f"no {modality} entry data/{segment!r} in {path.name}"
                        continue
                    features = _features(data, segment, path)
                    if width is None:
                        width = features.shape[1]
                    elif features.shape[1] != width:
                        raise DataError(f"{path}: data/{segment!r}/features has {features.shape[1]} columns, earlier "
                                        f"segments {width}")
                    if not nonfinite[segment] and not np.isfinite(features).all():
                        nonfinite[segment] = f"{path}: NaN/inf in data/{segment!r}/features"
        videos = [s.split("[")[0] for s in segments]
        frame = pd.DataFrame({"row": [i for key in SPLITS for i in range(len(rows[key]))],
                              "split": [SPLITS[key] for key in SPLITS for _ in rows[key]],
                              "reg_target": np.array([labels[s] for s in segments], dtype=np.float64)})
        frame["segment_id"] = segments
        frame["video_id"] = videos
        frame["speaker"] = [f"{self.name}_{v}" for v in videos]
        frame["_missing"] = [missing[s] for s in segments]
        frame["_nonfinite"] = [nonfinite[s] for s in segments]
        return frame, left_out

    def _finish(self, table: pd.DataFrame, left_out: dict[str, str], path: Path, root: Path) -> pd.DataFrame:
        bad = table["_nonfinite"] != ""
        if bad.any() and self.nonfinite_policy == "error":
            raise DataError(f"{table.loc[bad, '_nonfinite'].iloc[0]}; pass nonfinite='zero' (replace by 0) or "
                            "nonfinite='skip' (leave such segments out)")
        self.nonfinite = tuple(table.loc[bad, "segment_id"])
        total = len(table) + len(left_out)
        drop = table["_missing"] != ""
        if self.nonfinite_policy == "skip":
            table.loc[bad & ~drop, "_missing"] = table.loc[bad & ~drop, "_nonfinite"] + " (nonfinite='skip')"
            drop |= bad
        dropped = table.loc[drop, ["segment_id", "_missing"]].itertuples(index=False)
        self.left_out = {**left_out, **dict(dropped)}
        if self.left_out:
            first = next(iter(self.left_out.items()))
            log.warning("%s: %d of %d segments left out (first: %r: %s); see left_out", self.name,
                        len(self.left_out), total, first[0], first[1])
        if self.nonfinite and self.nonfinite_policy == "zero":
            log.warning("%s: %d segments have NaN/inf features, replaced by 0 (nonfinite='zero'); see nonfinite",
                        self.name, len(self.nonfinite))
        table = table.loc[~drop].drop(columns=["_missing", "_nonfinite"]).reset_index(drop=True)
        table.insert(0, "uid", self.name + "/" + table["split"] + "/" + table["row"].astype(str))
        table.insert(1, "corpus", self.name)
        table.insert(2, "path", _relative(path, root))
        table["gender"] = self._genders(table.get("video_id"), len(table), root)
        table["language"] = "en"
        table["emotion"] = "other"
        positive = table["reg_target"] > 0
        # MulT's eval_mosei_senti(exclude_zero=True): negative vs positive, neutral (0) segments dropped (<NA>).
        table["binary_np"] = positive.astype("Int8").mask(table["reg_target"] == 0)
        # ... and the other common convention: negative (< 0) vs non-negative (>= 0).
        table["binary_nn"] = (table["reg_target"] >= 0).astype("Int8")
        return validate_table(table, source=str(path), root=root, check_files=True)

    def _genders(self, videos: pd.Series | None, n: int, root: Path) -> np.ndarray:
        """Each row's speaker gender from the ``demographics`` CSV (``video_id``, ``gender``; relative to ``root``
        or absolute); ``U`` for videos it does not list, and everywhere without one (the corpora carry none)."""
        if self.demographics is None:
            return np.full(n, "U", dtype=object)
        if videos is None:
            raise DataError(f"{self.name}: demographics map video ids to genders, but the segments carry no ids")
        path = Path(self.demographics)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"{self.name}: demographics file {path} not found (a CSV with video_id and gender)")
        table = pd.read_csv(path, dtype=str)
        missing = [c for c in ("video_id", "gender") if c not in table.columns]
        if missing:
            raise DataError(f"{path}: demographics lacks column(s) {missing}; found {list(table.columns)}")
        if table["video_id"].duplicated().any():
            raise DataError(f"{path}: video_id {table.loc[table['video_id'].duplicated(), 'video_id'].iloc[0]!r} "
                            "is listed twice")
        mapping = dict(zip(table["video_id"], table["gender"].fillna("U"), strict=True))
        return videos.map(mapping).fillna("U").to_numpy(dtype=object)

    # -- features ------------------------------------------------------------------------------------
    def features(self, root: str | Path, table: pd.DataFrame) -> np.ndarray:
        """Time-averaged features of ``table``'s rows (a table this adapter loaded from ``root``): float32
        [len(table), D], the modalities of ``modalities`` side by side (see :func:`time_average`)."""
        if self.sequences:  # the modalities are sequence inputs (shipped_inputs), not one averaged vector
            return np.zeros((len(table), 0), dtype=np.float32)
        root = Path(root)
        path = self._source(root, table)
        blocks = (self._csd_features(root, table) if path.suffix == ".csd" else self._pickle_features(path, table))
        if not blocks:
            return np.zeros((len(table), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _source(self, root: Path, table: pd.DataFrame) -> Path:
        files = table["path"].unique() if len(table) else []
        if len(files) != 1:
            raise DataError(f"{self.name}: features of a table read from one file expected; got path values "
                            f"{sorted(map(str, files))[:3]}")
        return root / files[0]

    # -- sequence inputs -----------------------------------------------------------------------------
    @property
    def ships_vector(self) -> bool:
        """Whether :meth:`features` gives the time-averaged vector (False with ``sequences``)."""
        return not self.sequences

    def input_specs(self) -> dict[str, InputSpec]:
        """The sequence inputs this adapter gives (``sequences=True``), known before any file is read (frame
        widths None until then): one per selected modality, named after it."""
        return {m: InputSpec(m, "sequence", meta={"corpus": self.name, "modality": m})
                for m in self.modalities} if self.sequences else {}

    def shipped_inputs(self, root: str | Path, table: pd.DataFrame, cache: Any) -> tuple[dict[str, Any], list[str]]:
        """With ``sequences``: ``{modality: FrameStore}`` over ``table``'s rows (a table this adapter loaded from
        ``root``), through the feature cache ``cache`` (:class:`fairray.data._sequences.FrameCache`), and the
        entries' keys; ``({}, [])`` without."""
        if not self.sequences:
            return {}, []
        from fairray.data._sequences import FrameCache

        root = Path(root)
        path = self._source(root, table)
        frames = FrameCache(cache)
        uids = table["uid"].astype(str).to_numpy()
        stores, keys = {}, []
        self.empty_frames = {}
        loaded: dict[str, dict] = {}  # the pickle, read at most once for every modality the cache misses

        def pickle_data() -> dict:
            if "data" not in loaded:
                loaded["data"] = read_pickle(path)
            return loaded["data"]

        for modality in self.modalities:
            csd = path.suffix == ".csd"
            source = self._find_csd(root, modality) if csd else path
            if source is None:
                raise DataError(f"{root}: no {modality} .csd found (looked for {list(self._candidates(modality))})")

            def read(m: str = modality, csd: bool = csd) -> tuple[list[np.ndarray], int]:
                return self._csd_frames(root, table, m) if csd else self._pickle_frames(pickle_data(), path, table, m)
            key, identity = FrameCache.identity(self.name, modality, [source], table,
                                                {"nonfinite": self.nonfinite_policy, "format": path.suffix})
            store = frames.get_or_read(modality, key, identity, read, uids,
                                       meta={"corpus": self.name, "modality": modality})
            empty = np.flatnonzero(store.lengths == 0)
            if len(empty):
                self.empty_frames[modality] = tuple(table["segment_id"].iloc[empty].astype(str))
                log.warning("%s: %d of %d segments have no non-zero %s frame (first %r): their %s sequence is "
                            "empty (length 0)", self.name, len(empty), len(table), modality,
                            self.empty_frames[modality][0], modality)
            stores[modality] = store
            keys.append(f"frames:{key}")
        return stores, keys

    def _pickle_frames(self, data: dict, path: Path, table: pd.DataFrame, modality: str
                       ) -> tuple[list[np.ndarray], int]:
        keys = {v: k for k, v in SPLITS.items()}
        split = table["split"].to_numpy()
        rows: list[np.ndarray | None] = [None] * len(table)
        dim = None
        for split_name in pd.unique(split):
            key = keys[split_name]
            if modality not in data.get(key, {}):
                raise DataError(f"{path}[{key!r}]: no {modality!r} array; leave it out of modalities")
            at = np.flatnonzero(split == split_name)
            values = np.asarray(data[key][modality])
            if values.ndim != 3:
                raise DataError(f"{path}[{key!r}][{modality!r}] has shape {values.shape}; expected (N, T, D) steps")
            steps = values[table["row"].to_numpy()[at]]
            self._check_finite(steps, f"{path}[{key!r}][{modality!r}]")
            dim = int(values.shape[2])
            for i, frames in zip(at, trim_padding(steps, self.nonfinite_policy), strict=True):
                rows[i] = frames
        return rows, int(dim or 0)

    def _csd_steps(self, root: Path, table: pd.DataFrame, modality: str) -> Iterator[np.ndarray]:
        """Each segment's frames of ``modality`` from its ``.csd`` file, in ``table``'s order, checked."""
        path = self._find_csd(root, modality)
        if path is None:
            raise DataError(f"{root}: no {modality} .csd found (looked for {list(self._candidates(modality))})")
        with open_csd(path) as (data, _):
            for segment in table["segment_id"]:
                if segment not in data:
                    raise DataError(f"{path}: no data/{segment!r}; the table was not loaded from {root}")
                steps = _features(data, segment, path)
                self._check_finite(steps, f"{path}: data/{segment!r}")
                yield steps

    def _csd_frames(self, root: Path, table: pd.DataFrame, modality: str) -> tuple[list[np.ndarray], int]:
        rows, dim = [], 0
        for steps in self._csd_steps(root, table, modality):
            dim = int(steps.shape[1])
            rows.append(trim_padding(steps[None], self.nonfinite_policy)[0])
        return rows, dim

    def _check_finite(self, values: np.ndarray, where: str) -> None:
        if self.nonfinite_policy != "zero" and not np.isfinite(values).all():
            raise DataError(f"{where}: NaN/inf features; load the table with nonfinite='skip' or 'zero'")

    def _pickle_features(self, path: Path, table: pd.DataFrame) -> list[np.ndarray]:
        data = read_pickle(path)
        keys = {v: k for k, v in SPLITS.items()}
        blocks = []
        for modality in self.modalities:
            out = None
            split = table["split"].to_numpy()
            for split_name in pd.unique(split):
                key = keys[split_name]
                if modality not in data.get(key, {}):
                    raise DataError(f"{path}[{key!r}]: no {modality!r} array; leave it out of modalities")
                at = np.flatnonzero(split == split_name)
                steps = np.asarray(data[key][modality])[table["row"].to_numpy()[at]]
                self._check_finite(steps, f"{path}[{key!r}][{modality!r}]")
                mean = time_average(steps, self.nonfinite_policy)
                if out is None:
                    out = np.zeros((len(table), mean.shape[1]))
                out[at] = mean
            blocks.append(out)
        return blocks

    def _csd_features(self, root: Path, table: pd.DataFrame) -> list[np.ndarray]:
        blocks = []
        for modality in self.modalities:
            blocks.append(np.stack([time_average(steps, self.nonfinite_policy)
                                    for steps in self._csd_steps(root, table, modality)]))
        return blocks


@CORPORA.register("mosi")
class MosiAdapter(_SentimentAdapter):
    """CMU-MOSI sentiment (2199 segments, 93 videos) from pre-extracted features, MulT pickle or SDK .csd::

        root/
          mosi_data.pkl           # or mosi_data_noalign.pkl (MulT)
            {train, valid, test} → {text (N,T,300), audio (N,T,Da), vision (N,T,Dv), labels (N,1,1), id}
        or root/                  # CMU-Multimodal-SDK computational sequences aligned to the labels
          Opinion Segment Labels.csd   # or CMU_MOSI_Opinion_Labels.csd        (option labels=)
          glove_vectors.csd            # or CMU_MOSI_TimestampedWordVectors.csd (option text=)
          COVAREP.csd                  # or CMU_MOSI_COVAREP.csd                (option audio=)
          FACET_4.2.csd                # or FACET_4.1, CMU_MOSI_Visual_Facet_42/41.csd (option vision=)
            <root name>/data/<video>[k]/{features [T,D], intervals [T,2]}, <root name>/metadata/
          standard_folds.json     # {"train": [video ids], "valid": [...], "test": [...]}: mmsdk's
                                  # cmu_mosi.standard_folds lists, saved as JSON (option folds=)

    The pickle wins when both are there (``format="csd"`` reads the .csd files). h5py reads the .csd
    (``pip install h5py``). One row per segment: ``reg_target`` in [-3, 3], ``binary_np`` (0 negative / 1
    positive; <NA> for sentiment 0, dropped as in MulT's exclude_zero evaluation), ``binary_nn`` (0 negative /
    1 non-negative), ``split`` (valid → dev), ``row`` (index into the split's arrays or sorted segments),
    ``segment_id``, ``video_id``. No demographics: gender U (unless ``demographics`` names a CSV of
    ``video_id``, ``gender``), emotion ``other``; speaker = the YouTube video. Options: ``modalities`` (default text, audio, vision), ``nonfinite`` (zero | skip | error); segments with
    no fold or a missing modality are left out and listed in ``left_out``; ``features(root, table)`` gives the
    time-averaged features, or, with ``sequences: true``, each modality is a sequence input of its aligned frames
    (``text``, ``audio``, ``vision``: what GEAR's per-modality LSTMs read).
    """

    name = "mosi"
    languages = ("en",)
    files = ("mosi_data.pkl", "mosi_data_noalign.pkl")
    csd_files = {
        "labels": ("Opinion Segment Labels", "CMU_MOSI_Opinion_Labels"),
        "text": ("glove_vectors", "CMU_MOSI_TimestampedWordVectors"),
        "audio": ("COVAREP", "CMU_MOSI_COVAREP"),
        "vision": ("FACET_4.2", "FACET_4.1", "CMU_MOSI_Visual_Facet_42", "CMU_MOSI_Visual_Facet_41"),
    }


@CORPORA.register("mosei")
class MoseiAdapter(_SentimentAdapter):
    """CMU-MOSEI sentiment from pre-extracted features, MulT pickle or SDK .csd::

        root/
          mosei_senti_data.pkl    # or mosei_senti_data_noalign.pkl (MulT)
            {train, valid, test} → {text, audio, vision, labels (N,1,1), id}
        or root/                  # CMU-Multimodal-SDK computational sequences aligned to the labels
          All Labels.csd          # or CMU_MOSEI_Labels.csd: [1, 7], column 0 = sentiment (option labels=)
          glove_vectors.csd       # or CMU_MOSEI_TimestampedWordVectors.csd    (option text=)
          COVAREP.csd             # or CMU_MOSEI_COVAREP.csd                   (option audio=)
          FACET 4.2.csd           # or CMU_MOSEI_VisualFacet42.csd             (option vision=)
          standard_folds.json     # mmsdk's cmu_mosei.standard_folds lists as JSON (option folds=)

    The pickle wins when both are there (``format="csd"`` reads the .csd files); h5py reads the .csd
    (``pip install h5py``). Same table, options and rules as ``mosi``: ``reg_target``, ``binary_np``
    (sentiment 0 → <NA>), ``binary_nn``, ``split``, ``row``, ``segment_id``, ``video_id``; gender U, emotion
    ``other``; speaker = the YouTube video. The six emotion columns of the labels are not read.
    """

    name = "mosei"
    languages = ("en",)
    files = ("mosei_senti_data.pkl", "mosei_senti_data_noalign.pkl")
    csd_files = {
        "labels": ("All Labels", "CMU_MOSEI_Labels"),
        "text": ("glove_vectors", "CMU_MOSEI_TimestampedWordVectors"),
        "audio": ("COVAREP", "CMU_MOSEI_COVAREP"),
        "vision": ("FACET 4.2", "CMU_MOSEI_VisualFacet42"),
    }
