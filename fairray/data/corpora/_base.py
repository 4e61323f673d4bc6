"""The corpus-adapter extension point: a corpus in its native layout → one table of utterances.

Lifecycle::

    adapter = CORPORA.get("ravdess")()      # registered by name
    table = adapter.load(root)              # reads the native files under `root`, no audio decoding
    table = validate_table(table, source)   # shared checks; adapters call it at the end of load()

Every adapter documents its expected directory layout in its class docstring (shown by
`fairray data list`). The table has one row per utterance with at least :data:`REQUIRED_COLUMNS`;
``path`` is relative to ``root``. Emotions use the harmonised lower-case names of
:data:`EMOTIONS`; gender is ``F``, ``M`` or ``U`` (unknown: excluded from fairness metrics).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from fairray._registry import Registry
from fairray._typed import Where, build
from fairray.errors import ConfigError, DataError

REQUIRED_COLUMNS = ("uid", "corpus", "path", "speaker", "gender", "language", "emotion")
#: Harmonised emotion names across corpora (a corpus uses a subset).
EMOTIONS = ("anger", "boredom", "calm", "contempt", "disgust", "excitement", "fear", "frustration", "happiness",
            "neutral", "other", "sadness", "surprise")
GENDERS = ("F", "M", "U")
#: Audio file endings adapters accept for a native file name (the shared corpora are FLAC).
AUDIO_SUFFIXES = (".wav", ".flac")


class CorpusAdapter(ABC):
    """Base class: subclasses set ``name``, ``languages`` and implement :meth:`load`."""

    name: ClassVar[str]
    languages: ClassVar[tuple[str, ...]]
    #: Which shared-corpora folder (../shared/corpora/<name>) the adapter was verified on, if any.
    verified_on_real_data: ClassVar[bool] = False
    #: Whether the table carries rater-vote soft labels (``soft_<class>`` columns, what ``targets: multi``
    #: trains on): True, False, or None when it depends on the files (a manifest may carry them).
    has_votes: ClassVar[bool | None] = False
    #: Whether the ``text`` column holds transcripts of what was said, which a ``tokens`` input reads: True
    #: (dialogue corpora: MELD, MELD-ST, IEMOCAP), False (acted corpora, whose text is one of a few scripted
    #: sentences spoken in every emotion, or none), None when it depends on the files (a manifest).
    transcripts: ClassVar[bool | None] = False
    #: Whether utterances carry dialogue ids and turn positions (``dialogue_id``, ``utt_pos``: the rows'
    #: dialogue context): True, False, or None when it depends on the files (a manifest).
    dialogues: ClassVar[bool | None] = False

    @abstractmethod
    def load(self, root: str | Path) -> pd.DataFrame:
        """Read the corpus under ``root`` into a validated utterance table."""

    @classmethod
    def layout(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def options_type(cls) -> type:
        """The adapter's options as a typed frozen dataclass, made from its ``__init__`` signature (one source
        of truth): what ``dataset.corpora[i].options`` is validated against when a spec is loaded."""
        return _options_type(cls)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: Where | None = None) -> CorpusAdapter:
        """An adapter from YAML options, typed and checked like method parameters; errors name ``where``."""
        where = where or Where(f"corpus {cls.name}", "options")
        typed = build(cls.options_type(), dict(options), where)
        try:
            return cls(**{f.name: getattr(typed, f.name) for f in dataclasses.fields(typed)})
        except ConfigError as exc:
            raise where.error(str(exc)) from None


def _yaml_type(t: Any) -> Any:
    """A signature's annotation as a type the typed builder reads: paths are strings, sequences tuples."""
    if t is Path:
        return str
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        members = tuple(dict.fromkeys(_yaml_type(a) for a in args))
        return functools.reduce(lambda a, b: a | b, members)
    if origin in (Sequence, tuple, list) and args:
        return tuple[_yaml_type(args[0]), ...]
    return t


@functools.cache
def _options_type(cls: type) -> type:
    hints = typing.get_type_hints(cls.__init__)
    fields = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default
        if isinstance(default, list):
            default = tuple(default)
        spec = (name, _yaml_type(hints.get(name, Any)))
        fields.append(spec if default is inspect.Parameter.empty else (*spec, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Options", fields, frozen=True)


CORPORA: Registry[type[CorpusAdapter]] = Registry("corpus")


def check_allowed(frame: pd.DataFrame, column: str, allowed, source: str | Path) -> None:
    """DataError naming ``source``, the first offending row (1-based, as in a CSV with header), the column and
    its value when ``frame[column]`` holds a value outside ``allowed``."""
    allowed = list(allowed)
    bad = ~frame[column].isin(allowed)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{source}: row {row + 2}, column {column!r} is {frame[column].iloc[row]!r}; "
                        f"expected one of {allowed}")


def validate_table(table: pd.DataFrame, source: str, *, root: str | Path | None = None,
                   check_files: bool = False) -> pd.DataFrame:
    """Shared checks; errors name the source, the row (1-based, as in a CSV with header) and the column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; got {list(table.columns)}")
    for column in REQUIRED_COLUMNS:
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise DataError(f"{source}: row {row + 2}, column {column!r} is empty")
    check_allowed(table, "gender", GENDERS, source)
    check_allowed(table, "emotion", EMOTIONS, source)
    dup = table["uid"].duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise DataError(f"{source}: row {row + 2}, column 'uid' repeats {table['uid'].iloc[row]!r}")
    if check_files and root is not None:
        for i, rel in enumerate(table["path"]):
            if not (Path(root) / rel).is_file():
                raise DataError(f"{source}: row {i + 2}, column 'path': {Path(root) / rel} does not exist")
    return table.reset_index(drop=True)
