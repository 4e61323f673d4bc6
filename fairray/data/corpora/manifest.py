"""Any corpus described by a ``manifest.csv``: the format of the shared corpora, so a new corpus works in minutes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairray.data.corpora._base import CORPORA, CorpusAdapter, validate_table
from fairray.errors import DataError

#: Columns a manifest must have; ``corpus`` (default: the folder name) and ``uid`` (default: corpus/path) are optional.
MANIFEST_COLUMNS = ("path", "speaker", "gender", "language", "emotion")
#: Optional columns read as numbers; an empty cell is unknown (NaN).
NUMERIC_COLUMNS = ("age", "duration_s")


def read_manifest_table(folder: str | Path) -> pd.DataFrame:
    """Read and validate ``folder/manifest.csv``; errors name the file, the CSV line and the column."""
    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest}: not found; the manifest layout is root/manifest.csv + the audio it names")
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest}: not a readable CSV ({exc})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{manifest}: missing column(s) {missing}; expected at least {list(MANIFEST_COLUMNS)}")
    for column in table.columns:
        table[column] = table[column].str.strip()
    if "corpus" not in table.columns:
        table.insert(0, "corpus", folder.resolve().name)
    if "uid" not in table.columns:
        table.insert(0, "uid", table["corpus"] + "/" + table["path"])
    for column in NUMERIC_COLUMNS:
        if column in table.columns:
            values = pd.to_numeric(table[column].where(table[column] != ""), errors="coerce")
            bad = values.isna() & (table[column] != "")
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise DataError(f"{manifest}: row {row + 2}, column {column!r} is {table[column].iloc[row]!r}; "
                                "expected a number or an empty cell")
            table[column] = values.astype(float)
    return validate_table(table, source=str(manifest), root=folder, check_files=True)


@CORPORA.register("manifest")
class ManifestAdapter(CorpusAdapter):
    """A folder with a ``manifest.csv`` naming its audio (the format of the shared corpora)::

        root/                       # its name is the default corpus name
          manifest.csv              # path, speaker, gender, language, emotion [, corpus, age, text, duration_s ...]
          audio/...                 # any layout: ``path`` is relative to root

    Required columns: path, speaker (corpus-prefixed), gender (F/M/U), language (ISO 639-1), emotion (one of
    the harmonised names). Every other column is kept; age and duration_s are read as numbers.
    ``uid`` defaults to corpus/path.
    """

    has_votes = None
    name = "manifest"
    transcripts = None
    dialogues = None
    languages = ()
    verified_on_real_data = True

    def load(self, root: str | Path) -> pd.DataFrame:
        return read_manifest_table(root)
