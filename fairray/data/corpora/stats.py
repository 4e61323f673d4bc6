"""Corpus statistics (clips, speakers and hours per language × gender × emotion); backs ``fairray data stats``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fairray.errors import DataError

FORMATS = ("table", "json")


def corpus_stats(table: pd.DataFrame, root: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Counts of a validated utterance table.

    Returns ``counts`` (clips per language × gender × emotion: rows (language, gender), one column per
    emotion plus ``total``), ``speakers`` (distinct speakers per language × gender, plus ``total``) and,
    when durations are known, ``durations`` (per language: clips, hours, mean/min/max seconds). Durations
    come from a ``duration_s`` column, else from the audio headers (``soundfile.info``, no decoding) of the
    files under ``root``; with neither, ``durations`` is left out.

    >>> stats = corpus_stats(table)              # doctest: +SKIP
    >>> stats["counts"].loc[("en", "F"), "anger"]  # doctest: +SKIP
    96
    """
    missing = [c for c in ("language", "gender", "emotion", "speaker") if c not in table.columns]
    if missing:
        raise DataError(f"corpus table: missing column(s) {missing} needed for statistics")
    counts = pd.crosstab([table["language"], table["gender"]], table["emotion"])
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    speakers = table.groupby(["language", "gender"])["speaker"].nunique().unstack("gender", fill_value=0)
    speakers.columns.name = None
    speakers["total"] = table.groupby("language")["speaker"].nunique()
    stats = {"counts": counts, "speakers": speakers}
    seconds = _durations(table, root)
    if seconds is not None:
        by_language = seconds.groupby(table["language"])
        stats["durations"] = pd.DataFrame({
            "clips": by_language.size(),
            "hours": by_language.sum() / 3600.0,
            "mean_s": by_language.mean(),
            "min_s": by_language.min(),
            "max_s": by_language.max(),
        })
    return stats


def _durations(table: pd.DataFrame, root: str | Path | None) -> pd.Series | None:
    if "duration_s" in table.columns:
        seconds = pd.to_numeric(table["duration_s"], errors="coerce")
        if seconds.isna().any():
            row = int(seconds.isna().to_numpy().nonzero()[0][0])
            raise DataError(f"corpus table: row {row + 2}, column 'duration_s' is {table['duration_s'].iloc[row]!r}; "
                            "expected seconds")
        return seconds.astype(float)
    if root is None:
        return None
    import soundfile as sf

    values = []
    for rel in table["path"]:
        path = Path(root) / rel
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise DataError(f"{path}: cannot read the audio header ({exc})") from None
        values.append(info.frames / info.samplerate)
    return pd.Series(values, index=table.index, dtype=float)


def format_stats(stats: dict[str, pd.DataFrame], fmt: str = "table") -> str:
    """Render :func:`corpus_stats` as aligned text tables (``table``) or JSON records (``json``)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown stats format {fmt!r}; expected one of {list(FORMATS)}")
    if fmt == "json":
        records = {name: json.loads(frame.reset_index().to_json(orient="records", double_precision=6))
                   for name, frame in stats.items()}
        return json.dumps(records, indent=2, ensure_ascii=False)
    titles = {"counts": "clips per language × gender × emotion", "speakers": "speakers per language × gender",
              "durations": "durations per language"}
    blocks = []
    for name, frame in stats.items():
        body = frame.to_string(float_format=lambda v: f"{v:.3f}")
        blocks.append(f"{titles.get(name, name)}\n{body}")
    return "\n\n".join(blocks) + "\n"
