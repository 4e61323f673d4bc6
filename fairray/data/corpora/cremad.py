"""CREMA-D (Cao et al. 2014) in its native layout, and the EMO-SUPERB five-fold label files.

Labels follow METHODS §1.2: ``votes_<c>`` are the voice-only rater counts, ``soft_<c> = v_c / V``,
``multi_<c> = 1[soft_c > 1/|C|]`` (strict) and ``majority`` is the class with more than half the votes
(missing when no class has). The EMO-SUPERB files carry their own 0.01-smoothed soft labels, which differ
from the voice-only votes for about 3 400 clips; :func:`load_emo_superb_fold` keeps them unchanged, as
ES/IDI reproduction requires.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fairray.data.corpora._base import AUDIO_SUFFIXES, CORPORA, CorpusAdapter, check_allowed, validate_table
from fairray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: The six acted emotions, in the (harmonised, alphabetical) order of every per-class column.
CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness")
EMOTION_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral",
                 "SAD": "sadness"}
LEVEL_CODES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
#: The 12 sentences (taken from the corpus' meta/clips.csv, ``sentence_id,text``).
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
#: IDI age groups (METHODS §1.3): inclusive year ranges.
AGE_GROUPS = (("Young", 20, 35), ("Middle", 36, 49), ("Elderly", 50, 75))
SEX_CODES = {"Female": "F", "Male": "M"}
#: Vote columns of tabulatedVotes.csv → class.
VOTE_CODES = {"A": "anger", "D": "disgust", "F": "fear", "H": "happiness", "N": "neutral", "S": "sadness"}
#: First digit of tabulatedVotes' unnamed row id: 1 = voice only, 2 = face only, 3 = audio-visual.
VOICE_ONLY_QUERY = "1"
AUDIO_DIR = "AudioWAV"
#: Audio suffixes accepted, in order of preference when a clip has more than one.
_CLIP_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")

#: EMO-SUPERB (CREMA-D "Primary") files: smoothing constant, class names, split names.
ES_EPSILON = 0.01
ES_CLASSES = {"angry": "anger", "sad": "sadness", "disgust": "disgust", "fear": "fear", "neutral": "neutral",
              "happy": "happiness"}
ES_SPLITS = {"Train": "train", "Development": "dev", "Test": "test"}
ES_COLUMNS = ("FileName", *ES_CLASSES, "SpkrID", "Gender", "Split_Set")
#: The files round soft labels to 3 decimals, which moves a rescaled share by at most ~5e-4; a share
#: just above one half is at least 1/(2V) ≥ 0.02 away (V ≤ ~20 raters), an exact half is stored as 0.48.
ES_MAJORITY_TOL = 1e-3


def age_group(age: pd.Series) -> pd.Series:
    """IDI age group of each age in years (missing outside 20–75)."""
    out = pd.Series(np.nan, index=age.index, dtype=object)
    for name, low, high in AGE_GROUPS:
        out[(age >= low) & (age <= high)] = name
    return out


def parse_clip_name(clip: str, source: str) -> dict[str, str]:
    """``1001_DFA_ANG_XX`` → actor, sentence, emotion, intensity (harmonised names)."""
    match = _CLIP_RE.match(clip)
    if not match:
        raise DataError(f"{source}: clip name {clip!r} is not <ActorID>_<Sentence>_<EMO>_<Level>")
    actor, sentence, emo, level = match.groups()
    for value, table, what in ((sentence, SENTENCES, "sentence"), (emo, EMOTION_CODES, "emotion"),
                               (level, LEVEL_CODES, "level")):
        if value not in table:
            raise DataError(f"{source}: clip {clip!r} has unknown {what} code {value!r}; known: {sorted(table)}")
    return {"actor": actor, "sentence_id": sentence, "emotion": EMOTION_CODES[emo], "intensity": LEVEL_CODES[level]}


def _first_file(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise DataError(f"{root}: no {what} found; looked for {list(candidates)}")


def _read_voice_votes(path: Path) -> pd.DataFrame:
    votes = pd.read_csv(path)
    id_column = votes.columns[0]
    missing = [c for c in (*VOTE_CODES, "fileName") if c not in votes.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected an unnamed row id, A..S vote counts, fileName")
    voice = votes[votes[id_column].astype(str).str[0] == VOICE_ONLY_QUERY]
    if voice.empty:
        raise DataError(f"{path}: no voice-only rows (row id starting with {VOICE_ONLY_QUERY})")
    dup = voice["fileName"].duplicated()
    if dup.any():
        raise DataError(f"{path}: clip {voice['fileName'][dup].iloc[0]!r} has two voice-only rows")
    voice = voice.set_index("fileName")[list(VOTE_CODES)].rename(columns=VOTE_CODES)
    counts = voice[list(CLASSES)].to_numpy()
    if (counts < 0).any() or (counts.sum(axis=1) == 0).any():
        bad = voice.index[(counts < 0).any(axis=1) | (counts.sum(axis=1) == 0)][0]
        raise DataError(f"{path}: clip {bad!r} has no (or negative) voice-only votes")
    return voice.astype(np.int64)


def label_columns(votes: np.ndarray) -> dict[str, np.ndarray | list]:
    """``votes_*``, ``soft_*``, ``multi_*`` and ``majority`` from integer counts [N, |C|] (METHODS §1.2)."""
    total = votes.sum(axis=1, keepdims=True)
    soft = votes / total
    multi = votes * len(CLASSES) > total  # t_c > 1/|C|, exactly, in integers
    strict = votes * 2 > total
    majority = [CLASSES[int(row.argmax())] if row.any() else None for row in strict]
    out: dict[str, np.ndarray | list] = {}
    for j, c in enumerate(CLASSES):
        out[f"votes_{c}"] = votes[:, j]
    for j, c in enumerate(CLASSES):
        out[f"soft_{c}"] = soft[:, j]
    for j, c in enumerate(CLASSES):
        out[f"multi_{c}"] = multi[:, j].astype(np.uint8)
    out["majority"] = majority
    return out


@CORPORA.register("cremad")
class CremaD(CorpusAdapter):
    """CREMA-D, native release layout (voice-only rater votes as labels)::

        <root>/
          AudioWAV/<ActorID>_<Sentence>_<EMO>_<Level>.wav   # or .flac; e.g. 1001_DFA_ANG_XX.wav
          VideoDemographics.csv                             # ActorID, Age, Sex, Race, Ethnicity
          processedResults/tabulatedVotes.csv               # or at the root (or both CSVs in meta/)

    ``metadata_only=True`` lists every clip of the vote table whether or not its audio is present
    (``path`` is still the native ``AudioWAV/<clip>.wav``). Otherwise clips without audio are left out
    and named in ``missing_audio`` after :meth:`load` (also logged); an audio file the vote table does not
    know is an error. ``uid`` is ``cremad/<clip>``, stable across audio formats.
    """

    has_votes = True
    name = "cremad"
    languages = ("en",)
    verified_on_real_data = True

    DEMOGRAPHICS = ("VideoDemographics.csv", "meta/VideoDemographics.csv")
    VOTES = ("processedResults/tabulatedVotes.csv", "tabulatedVotes.csv", "meta/tabulatedVotes.csv")
    #: Clips named by the metadata whose audio was not found by the last :meth:`load`.
    missing_audio: tuple[str, ...]

    def __init__(self, metadata_only: bool = False) -> None:
        self.metadata_only = metadata_only
        self.missing_audio = ()

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        votes_path = _first_file(root, self.VOTES, "vote table (tabulatedVotes.csv)")
        demo_path = _first_file(root, self.DEMOGRAPHICS, "demographics table (VideoDemographics.csv)")
        votes = _read_voice_votes(votes_path)
        clips = list(votes.index)
        paths = {clip: f"{AUDIO_DIR}/{clip}.wav" for clip in clips}
        self.missing_audio = ()
        if not self.metadata_only:
            found = self._find_audio(root)
            unknown = sorted(set(found) - set(votes.index))
            if unknown:
                raise DataError(f"{root / found[unknown[0]]}: audio of a clip that {votes_path} has no votes for")
            self.missing_audio = tuple(c for c in clips if c not in found)
            if self.missing_audio:
                log.warning("cremad: %d of %d clips have no audio under %s and are left out (see missing_audio)",
                            len(self.missing_audio), len(clips), root / AUDIO_DIR)
            clips = [c for c in clips if c in found]
            paths = found

        parsed = pd.DataFrame([parse_clip_name(c, str(votes_path)) for c in clips], columns=[
            "actor", "sentence_id", "emotion", "intensity"])
        demo = self._demographics(demo_path)
        missing = sorted(set(parsed["actor"]) - set(demo.index))
        if missing:
            raise DataError(f"{demo_path}: no row for ActorID {missing[0]} (named by clip files/votes)")
        actor = demo.loc[parsed["actor"]].reset_index(drop=True)
        table = pd.DataFrame({
            "uid": [f"{self.name}/{c}" for c in clips],
            "corpus": self.name,
            "path": [paths[c] for c in clips],
            "clip": clips,
            "speaker": "cremad_" + parsed["actor"],
            "gender": actor["gender"],
            "gender_src": "meta",
            "age": actor["age"],
            "age_group": actor["age_group"],
            "race": actor["race"],
            "ethnicity": actor["ethnicity"],
            "language": "en",
            "emotion": parsed["emotion"],
            "intensity": parsed["intensity"],
            "sentence_id": parsed["sentence_id"],
            "text": parsed["sentence_id"].map(SENTENCES),
        })
        counts = votes.loc[clips, list(CLASSES)].to_numpy(np.int64).reshape(len(clips), len(CLASSES))
        for column, values in label_columns(counts).items():
            table[column] = values
        table["n_votes"] = counts.sum(axis=1)
        return validate_table(table, f"cremad:{root}", root=root, check_files=not self.metadata_only)

    @staticmethod
    def _find_audio(root: Path) -> dict[str, str]:
        folder = root / AUDIO_DIR
        if not folder.is_dir():
            raise DataError(f"{folder}: no audio folder; pass metadata_only=True to load the metadata alone")
        found: dict[str, str] = {}
        for suffix in reversed(AUDIO_SUFFIXES):  # preferred suffix written last wins
            for f in sorted(folder.glob(f"*{suffix}")):
                found[f.stem] = f"{AUDIO_DIR}/{f.name}"
        for clip in found:
            parse_clip_name(clip, str(folder / Path(found[clip]).name))
        return found

    @staticmethod
    def _demographics(path: Path) -> pd.DataFrame:
        demo = pd.read_csv(path, dtype={"ActorID": str})
        missing = [c for c in ("ActorID", "Age", "Sex", "Race", "Ethnicity") if c not in demo.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        check_allowed(demo, "Sex", SEX_CODES, path)
        age = pd.to_numeric(demo["Age"], errors="coerce")
        return pd.DataFrame({
            "gender": demo["Sex"].map(SEX_CODES).to_numpy(),
            "age": age.to_numpy(dtype=float),
            "age_group": age_group(age).to_numpy(),
            "race": demo["Race"].to_numpy(),
            "ethnicity": demo["Ethnicity"].to_numpy(),
        }, index=demo["ActorID"].str.strip())


def load_emo_superb_fold(folder: str | Path, k: int, *, epsilon: float = ES_EPSILON) -> pd.DataFrame:
    """One EMO-SUPERB CREMA-D fold file (``labels_consensus_{k}.csv``) as a table.

    Returns one row per clip: ``file_name``, ``clip``, ``uid`` (``cremad/<clip>``, as the adapter),
    ``speaker``, ``gender``, ``fold``, ``split`` (train/dev/test), the file's smoothed ``soft_<c>``
    (unchanged), ``multi_<c> = 1[soft_c > 1/|C|]`` and ``majority`` where
    ``(soft_c − ε)/(1 − |C|ε) > 0.5`` (METHODS §1.2).

    >>> load_emo_superb_fold("crema-d/emo-superb", 1).groupby("split").size()["test"]  # doctest: +SKIP
    1463
    """
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"emo_superb fold: k must be a positive integer, got {k!r}")
    path = Path(folder) / f"labels_consensus_{k}.csv"
    if not path.is_file():
        raise DataError(f"{path}: EMO-SUPERB fold file not found")
    raw = pd.read_csv(path, dtype={"SpkrID": str})
    missing = [c for c in ES_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {list(ES_COLUMNS)}")
    check_allowed(raw, "Split_Set", ES_SPLITS, path)
    check_allowed(raw, "Gender", SEX_CODES, path)
    if raw["FileName"].duplicated().any():
        raise DataError(f"{path}: FileName {raw['FileName'][raw['FileName'].duplicated()].iloc[0]!r} repeats")
    clip = raw["FileName"].str.replace(r"\.(wav|flac)$", "", regex=True)
    soft = raw[list(ES_CLASSES)].rename(columns=ES_CLASSES)[list(CLASSES)].to_numpy(float)
    n_classes = len(CLASSES)
    share = (soft - epsilon) / (1 - n_classes * epsilon)
    strict = share > 0.5 + ES_MAJORITY_TOL
    table = pd.DataFrame({
        "file_name": raw["FileName"],
        "clip": clip,
        "uid": CremaD.name + "/" + clip,
        "speaker": "cremad_" + raw["SpkrID"].str.strip(),
        "gender": raw["Gender"].map(SEX_CODES),
        "fold": k,
        "split": raw["Split_Set"].map(ES_SPLITS),
    })
    for j, c in enumerate(CLASSES):
        table[f"soft_{c}"] = soft[:, j]
    for j, c in enumerate(CLASSES):
        table[f"multi_{c}"] = (soft[:, j] > 1 / n_classes).astype(np.uint8)
    table["majority"] = [CLASSES[int(row.argmax())] if row.any() else None for row in strict]
    return table
