"""nEMO (Polish emotional speech): the official amu-cai/nEMO layout, ``samples/`` plus ``data.tsv``."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from fairray.data.corpora._base import AUDIO_SUFFIXES, CORPORA, CorpusAdapter, validate_table
from fairray.errors import DataError

#: Columns of the official data.tsv (README of amu-cai/nEMO, "Data Fields").
TSV_COLUMNS = ("file_id", "emotion", "raw_text", "normalized_text", "speaker_id", "gender", "age")
#: data.tsv emotion → harmonised emotion (nEMO writes the adjective ``surprised``).
EMOTION_CODES = {"anger": "anger", "fear": "fear", "happiness": "happiness", "neutral": "neutral",
                 "sadness": "sadness", "surprised": "surprise"}
GENDER_CODES = {"female": "F", "male": "M"}

_FILE_ID = re.compile(r"^([A-Z]{2}\d)_([a-z]+)_(\d+)$")


def _line(i: int) -> str:
    return f"line {i + 2}"  # header is line 1


@CORPORA.register("nemo")
class NemoAdapter(CorpusAdapter):
    """nEMO as in the official repository amu-cai/nEMO::

        root/
          data.tsv      # file_id, emotion, raw_text, normalized_text, speaker_id, gender, age (tab-separated)
          samples/
            EB0_anger_1.wav   # <speaker>_<emotion>_<sentence id>
            ...

    ``.wav`` or ``.flac`` (``file_id`` names the ``.wav``; a ``.flac`` of the same stem is accepted).
    Every data.tsv row needs its file and every file its row. Emotion ``surprised`` becomes ``surprise``;
    gender and age come from data.tsv; ``text`` is ``raw_text``.
    """

    name = "nemo"
    languages = ("pl",)
    verified_on_real_data = True

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        tsv = root / "data.tsv"
        samples = root / "samples"
        if not tsv.is_file():
            raise DataError(f"{tsv}: not found; expected the nEMO layout root/data.tsv + root/samples/*.wav")
        if not samples.is_dir():
            raise DataError(f"{samples}: folder not found; expected the nEMO layout root/data.tsv + root/samples/")
        # The texts contain commas and typographic quotes but no tabs; no quoting is used in the file.
        meta = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
        missing = [c for c in TSV_COLUMNS if c not in meta.columns]
        if missing:
            raise DataError(f"{tsv}: missing column(s) {missing}; got {list(meta.columns)}")
        meta = meta.apply(lambda col: col.str.strip())

        audio = _audio_by_stem(samples)
        rows = []
        for i, rec in enumerate(meta.itertuples(index=False)):
            stem = Path(rec.file_id).stem
            match = _FILE_ID.match(stem)
            if match is None:
                raise DataError(f"{tsv}: {_line(i)}, column 'file_id' is {rec.file_id!r}; expected "
                                "<speaker>_<emotion>_<sentence id>.wav")
            speaker, file_emotion, sentence = match.groups()
            for column, value, valid in (("emotion", rec.emotion, EMOTION_CODES), ("gender", rec.gender, GENDER_CODES)):
                if value not in valid:
                    raise DataError(f"{tsv}: {_line(i)}, column {column!r} is {value!r}; "
                                    f"expected one of {sorted(valid)}")
            if file_emotion != rec.emotion or speaker != rec.speaker_id:
                raise DataError(f"{tsv}: {_line(i)}: file_id {rec.file_id!r} disagrees with speaker_id "
                                f"{rec.speaker_id!r} / emotion {rec.emotion!r}")
            if not rec.age.isdigit():
                raise DataError(f"{tsv}: {_line(i)}, column 'age' is {rec.age!r}; expected whole years")
            path = audio.pop(stem, None)
            if path is None:
                raise DataError(f"{tsv}: {_line(i)}: no audio file {samples / rec.file_id} (.wav or .flac)")
            rows.append({"uid": f"nemo/{stem}", "corpus": "nemo", "path": path.relative_to(root).as_posix(),
                         "speaker": f"nemo_{speaker}", "gender": GENDER_CODES[rec.gender], "age": int(rec.age),
                         "language": "pl", "emotion": EMOTION_CODES[rec.emotion], "sentence_id": int(sentence),
                         "text": rec.raw_text, "normalized_text": rec.normalized_text})
        if audio:
            stray = sorted(audio.values())[0]
            raise DataError(f"{stray}: no row in {tsv} ({len(audio)} file(s) in samples/ without metadata)")
        table = pd.DataFrame(rows)
        for column in ("gender", "age"):
            per_speaker = table.groupby("speaker")[column].nunique()
            if (per_speaker > 1).any():
                raise DataError(f"{tsv}: speaker {per_speaker[per_speaker > 1].index[0]!r} has more than one "
                                f"{column} across rows")
        return validate_table(table, source=str(tsv), root=root, check_files=True)


def _audio_by_stem(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the audio files in ``folder``; two files with one stem are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        if path.stem in found:
            raise DataError(f"{path}: same utterance as {found[path.stem].name}; keep one audio file per stem")
        found[path.stem] = path
    return found
