"""CMU-MOSI / CMU-MOSEI through the pickled, pre-extracted feature files of the MulT repository.

The CMU-Multimodal-SDK ``.csd`` files are HDF5 and need h5py; these adapters read the widely used pickles
instead (``mosi_data.pkl``, ``mosei_senti_data.pkl``, yaohungt/Multimodal-Transformer): a dict
``{train, valid, test}`` of dicts ``{text, audio, vision, labels (N, 1, 1), id}`` of numpy arrays. The table
has one row per segment; features stay in the pickle (``row`` indexes the split's arrays).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fairray.data.corpora._base import CORPORA, CorpusAdapter, validate_table
from fairray.errors import DataError

SPLITS = {"train": "train", "valid": "dev", "test": "test"}
#: Sentiment range of the MOSI/MOSEI annotations (-3 strongly negative .. +3 strongly positive).
SENTIMENT_RANGE = (-3.0, 3.0)
#: Classes a pickle may reference: numpy arrays, dtypes and scalars, nothing that runs code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocols 0-2 store bytes (MOSI's byte-string ids)
}


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


class _SentimentPickleAdapter(CorpusAdapter):
    files: ClassVar[tuple[str, ...]]

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        path = next((root / f for f in self.files if (root / f).is_file()), None)
        if path is None:
            raise DataError(f"{root}: none of {list(self.files)} found")
        data = read_pickle(path)
        missing = [s for s in SPLITS if s not in data]
        if missing:
            raise DataError(f"{path}: missing split(s) {missing}; got {sorted(map(str, data))}")
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
            outside = ~((target >= SENTIMENT_RANGE[0]) & (target <= SENTIMENT_RANGE[1]))
            if outside.any():
                i = int(outside.nonzero()[0][0])
                raise DataError(f"{source}: labels[{i}] = {float(target[i])} is outside {list(SENTIMENT_RANGE)}")
            for modality in ("text", "audio", "vision"):
                if modality in split and np.shape(split[modality])[0] != n:
                    raise DataError(f"{source}: {modality!r} has {np.shape(split[modality])[0]} rows, 'labels' {n}")
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
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "uid", self.name + "/" + table["split"] + "/" + table["row"].astype(str))
        table.insert(1, "corpus", self.name)
        table.insert(2, "path", path.name)
        table["gender"] = "U"
        table["language"] = "en"
        table["emotion"] = "other"
        positive = table["reg_target"] > 0
        # MulT's eval_mosei_senti(exclude_zero=True): negative vs positive, neutral (0) segments dropped (<NA>).
        table["binary_np"] = positive.astype("Int8").mask(table["reg_target"] == 0)
        # ... and the other common convention: negative (< 0) vs non-negative (>= 0).
        table["binary_nn"] = (table["reg_target"] >= 0).astype("Int8")
        return validate_table(table, source=str(path), root=root, check_files=True)


@CORPORA.register("mosi")
class MosiAdapter(_SentimentPickleAdapter):
    """CMU-MOSI sentiment (2199 segments, 93 videos), pre-extracted features of the MulT repository::

        root/
          mosi_data.pkl           # or mosi_data_noalign.pkl
            {train, valid, test} → {text (N,T,300), audio (N,T,Da), vision (N,T,Dv), labels (N,1,1), id}

    One row per segment: ``reg_target`` in [-3, 3], ``binary_np`` (0 negative / 1 positive; <NA> for
    sentiment 0, dropped as in MulT's exclude_zero evaluation), ``binary_nn`` (0 negative / 1 non-negative),
    ``split`` (valid → dev), ``row`` (index into that split's arrays). No demographics: gender U,
    emotion ``other``; speaker = the YouTube video (first field of ``id``).
    """

    name = "mosi"
    languages = ("en",)
    files = ("mosi_data.pkl", "mosi_data_noalign.pkl")


@CORPORA.register("mosei")
class MoseiAdapter(_SentimentPickleAdapter):
    """CMU-MOSEI sentiment, pre-extracted features of the MulT repository::

        root/
          mosei_senti_data.pkl    # or mosei_senti_data_noalign.pkl
            {train, valid, test} → {text, audio, vision, labels (N,1,1), id}

    Same table as ``mosi``: ``reg_target``, ``binary_np`` (sentiment 0 → <NA>), ``binary_nn``, ``split``,
    ``row``; gender U, emotion ``other``; speaker = the YouTube video (first field of ``id``).
    """

    name = "mosei"
    languages = ("en",)
    files = ("mosei_senti_data.pkl", "mosei_senti_data_noalign.pkl")
