"""MELD (Poria et al. 2019) and MELD-ST (Chen et al. 2024): Friends dialogue, one emotion per utterance.

Neither corpus ships speaker gender. Both adapters map the character name through a speaker → gender
table (METHODS §4.4): the six main characters are built in, a CSV ``Speaker,gender`` overrides or extends
them, every other speaker gets ``U`` (excluded from fairness metrics) with ``gender_src="unknown"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from fairray.data.corpora._base import CORPORA, GENDERS, CorpusAdapter, validate_table
from fairray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: MELD label → harmonised emotion name.
EMOTION_MAP = {"neutral": "neutral", "joy": "happiness", "surprise": "surprise", "anger": "anger",
               "sadness": "sadness", "disgust": "disgust", "fear": "fear"}
#: The six main characters (METHODS §4.4); a gender-map CSV overrides or extends this.
MAIN_CAST_GENDER = {"Rachel": "F", "Monica": "F", "Phoebe": "F", "Ross": "M", "Chandler": "M", "Joey": "M"}

MELD_SPLITS = ("train", "dev", "test")
MELD_COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                "Season", "Episode", "StartTime", "EndTime")
#: Folder names of MELD.Raw's video/audio archives, per split.
MELD_RAW_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
#: Media suffixes accepted, in order of preference (decoded audio before the mp4 it came from).
MELD_MEDIA_SUFFIXES = (".wav", ".flac", ".mp4")

MELD_ST_PAIRS = {"ENG_DEU": ("de", "DEU", "German"), "ENG_JPN": ("ja", "JPN", "Japanese")}
#: MELD-ST csv split name → fairray split, and the audio folder name of that split.
MELD_ST_SPLITS = {"train": ("train", "train"), "valid": ("dev", "dev"), "test": ("test", "test")}
MELD_ST_COLUMNS = ("id", "dia_id", "utt_id", "emotion", "sentiment", "English", "season", "episode", "speaker")
#: The key under which the English side of both pairs is the same utterance (METHODS §4.4).
MELD_ST_EN_KEY = ("season", "episode", "dia_id", "utt_id")


def read_gender_map(path: str | Path | None) -> dict[str, str]:
    """The main cast, overridden/extended by a ``Speaker,gender`` CSV (other columns ignored)."""
    mapping = dict(MAIN_CAST_GENDER)
    if path is None:
        return mapping
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: speaker → gender map not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("Speaker", "gender") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected Speaker,gender")
    bad = ~table["gender"].str.strip().isin(GENDERS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {row + 2}, column 'gender' is {table['gender'].iloc[row]!r}; "
                        f"expected one of {GENDERS}")
    mapping.update(zip(table["Speaker"].str.strip(), table["gender"].str.strip(), strict=True))
    return mapping


def _map_gender(names: pd.Series, mapping: Mapping[str, str]) -> tuple[pd.Series, pd.Series]:
    gender = names.map(mapping)
    known = gender.notna()
    return gender.fillna("U"), pd.Series(np.where(known, "speaker_map", "unknown"), index=names.index)


def _read_csv(path: Path, dtype: dict[str, type]) -> pd.DataFrame:
    """Read a label CSV keeping strings such as "NA" or "None" (real utterances) as text."""
    try:
        return pd.read_csv(path, dtype=dtype, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected a header row") from None


def _check_columns(frame: pd.DataFrame, required: Iterable[str], path: Path) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; got {list(frame.columns)}")


def _map_emotion(values: pd.Series, path: Path, column: str) -> pd.Series:
    low = values.astype(str).str.strip().str.lower()
    bad = ~low.isin(list(EMOTION_MAP))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {row + 2}, column {column!r} is {values.iloc[row]!r}; "
                        f"expected one of {sorted(EMOTION_MAP)}")
    return low.map(EMOTION_MAP)


def _report_missing(adapter: str, missing: list[str], total: int, root: Path) -> tuple[str, ...]:
    if missing:
        log.warning("%s: %d of %d utterances have no audio under %s and are left out (see missing_audio)",
                    adapter, len(missing), total, root)
    return tuple(missing)


@CORPORA.register("meld")
class Meld(CorpusAdapter):
    """MELD, release CSV layout (audio optional)::

        <root>/
          train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
          train/dia{D}_utt{U}.wav|.flac|.mp4       # or MELD.Raw's train_splits/ (dia{D}_utt{U}.mp4)
          dev/...                                  # or dev_splits_complete/
          test/...                                 # or output_repeated_splits_test/

    The audio folder of a split may also sit inside ``<split>/`` (``train/train_splits/``). Without audio
    pass ``metadata_only=True``: ``path`` is then the MELD.Raw name (``train_splits/dia0_utt0.mp4``).
    Otherwise utterances without a media file are left out and named in ``missing_audio`` (also logged).
    ``gender_map``: CSV ``Speaker,gender`` overriding/extending the built-in main cast.
    """

    name = "meld"
    transcripts = True
    dialogues = True
    languages = ("en",)
    verified_on_real_data = True

    def __init__(self, metadata_only: bool = False, gender_map: str | Path | None = None,
                 splits: tuple[str, ...] = MELD_SPLITS) -> None:
        unknown = [s for s in splits if s not in MELD_SPLITS]
        if unknown or not splits:
            raise ConfigError(f"meld: splits must be a non-empty subset of {MELD_SPLITS}, got {list(splits)}")
        self.metadata_only = metadata_only
        self.gender_map = gender_map
        self.splits = tuple(splits)
        self.missing_audio: tuple[str, ...] = ()

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        genders = read_gender_map(self.gender_map)
        frames = [self._split(root, split, genders) for split in self.splits]
        table = pd.concat(frames, ignore_index=True)
        self.missing_audio = ()
        if not self.metadata_only:
            have = table["path"].notna()
            if not have.any():
                raise DataError(f"{root}: no MELD audio/video found for splits {list(self.splits)}; pass "
                                f"metadata_only=True to load the CSVs alone")
            self.missing_audio = _report_missing(self.name, list(table.loc[~have, "uid"]), len(table), root)
            table = table[have]
        return validate_table(table, f"meld:{root}", root=root, check_files=not self.metadata_only)

    def _split(self, root: Path, split: str, genders: Mapping[str, str]) -> pd.DataFrame:
        path = root / f"{split}_sent_emo.csv"
        if not path.is_file():
            raise DataError(f"{path}: MELD label file not found")
        raw = _read_csv(path, {"Speaker": str, "Utterance": str})
        _check_columns(raw, MELD_COLUMNS, path)
        speaker = raw["Speaker"].str.strip()
        gender, source = _map_gender(speaker, genders)
        stem = "dia" + raw["Dialogue_ID"].astype(str) + "_utt" + raw["Utterance_ID"].astype(str)
        if self.metadata_only:
            paths = MELD_RAW_DIRS[split] + "/" + stem + ".mp4"
        else:
            media = self._media(root, split)
            paths = stem.map(media)
        return pd.DataFrame({
            "uid": f"{self.name}/{split}/" + stem,
            "corpus": self.name,
            "path": paths,
            "speaker": "meld_" + speaker,
            "speaker_name": speaker,
            "gender": gender,
            "gender_src": source,
            "language": "en",
            "emotion": _map_emotion(raw["Emotion"], path, "Emotion"),
            "sentiment": raw["Sentiment"].str.strip().str.lower(),
            "text": raw["Utterance"],
            "dialogue_id": f"{split}_" + raw["Dialogue_ID"].astype(str),
            "utt_pos": raw["Utterance_ID"].astype(np.int64),
            "split": split,
            "season": raw["Season"].astype(np.int64),
            "episode": raw["Episode"].astype(np.int64),
            "start_time": raw["StartTime"],
            "end_time": raw["EndTime"],
            "sr_no": raw["Sr No."].astype(np.int64),
        })

    @staticmethod
    def _media(root: Path, split: str) -> dict[str, str]:
        """``dia{D}_utt{U}`` → path relative to root, from the first candidate folder that exists."""
        raw_dir = MELD_RAW_DIRS[split]
        for rel in (split, raw_dir, f"{split}/{raw_dir}"):
            folder = root / rel
            if not folder.is_dir():
                continue
            found: dict[str, str] = {}
            for suffix in reversed(MELD_MEDIA_SUFFIXES):  # the preferred suffix is written last and wins
                for f in sorted(folder.glob(f"dia*_utt*{suffix}")):
                    found[f.stem] = f"{rel}/{f.name}"
            if found:
                return found
        return {}


@CORPORA.register("meld_st")
class MeldST(CorpusAdapter):
    """MELD-ST (speech translation of MELD), one row per (utterance, language)::

        <root>/
          ENG_DEU/train.csv valid.csv test.csv     # or deu_train.csv ...; id, dia_id, utt_id, emotion,
                                                   # sentiment, English, German, season, episode, speaker
          ENG_DEU/ENG/{train,dev,test}/{split}_{id}.wav   # audio, when present (DEU/ likewise)
          ENG_JPN/...                              # same, with Japanese / JPN/

    English rows of both pairs are the same utterances and are deduplicated by (season, episode, dia_id,
    utt_id), keeping the first pair's row (``dedup_english=False`` keeps both). Speaker key =
    (language, character); ``text`` is the same-language transcript. Audio file names follow the
    distributed layout as far as it is known (id-based); ``metadata_only=True`` loads without audio.
    After :meth:`load`, ``missing_audio`` lists left-out rows and ``split_conflicts`` the deduplicated
    English utterances whose two pairs put them in different splits (the first pair's split is kept).
    """

    name = "meld_st"
    transcripts = True
    dialogues = True
    languages = ("en", "de", "ja")

    def __init__(self, metadata_only: bool = False, gender_map: str | Path | None = None,
                 pairs: tuple[str, ...] = tuple(MELD_ST_PAIRS), dedup_english: bool = True) -> None:
        unknown = [p for p in pairs if p not in MELD_ST_PAIRS]
        if unknown or not pairs:
            raise ConfigError(f"meld_st: pairs must be a non-empty subset of {list(MELD_ST_PAIRS)}, got {list(pairs)}")
        self.metadata_only = metadata_only
        self.gender_map = gender_map
        self.pairs = tuple(pairs)
        self.dedup_english = dedup_english
        self.missing_audio: tuple[str, ...] = ()
        self.split_conflicts: tuple[str, ...] = ()

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        genders = read_gender_map(self.gender_map)
        present = [p for p in self.pairs if (root / p).is_dir()]
        if not present:
            raise DataError(f"{root}: none of the MELD-ST pair folders {list(self.pairs)} exists")
        english, target = [], []
        for pair in present:
            for csv_split, (split, audio_split) in MELD_ST_SPLITS.items():
                raw, path = self._read(root, pair, csv_split)
                english.append(self._rows(raw, path, pair, "en", "ENG", "English", split, audio_split, genders))
                lang, code, column = MELD_ST_PAIRS[pair]
                target.append(self._rows(raw, path, pair, lang, code, column, split, audio_split, genders))
        en = pd.concat(english, ignore_index=True)
        self.split_conflicts = ()
        if self.dedup_english:
            key = en["uid"]
            splits = en.groupby(key, sort=False)["split"].nunique()
            self.split_conflicts = tuple(splits.index[splits > 1])
            if self.split_conflicts:
                log.warning("meld_st: %d English utterances lie in different splits of the two pairs; the first "
                            "pair's split is kept (see split_conflicts)", len(self.split_conflicts))
            en = en[~key.duplicated()]
        else:
            en = en.assign(uid=en["uid_pair"])
        table = pd.concat([en, *target], ignore_index=True).drop(columns="uid_pair")
        self.missing_audio = ()
        if not self.metadata_only:
            have = pd.Series([(root / p).is_file() for p in table["path"]], index=table.index)
            if not have.any():
                raise DataError(f"{root}: no MELD-ST audio found; pass metadata_only=True to load the CSVs alone")
            self.missing_audio = _report_missing(self.name, list(table.loc[~have, "uid"]), len(table), root)
            table = table[have]
        return validate_table(table, f"meld_st:{root}", root=root, check_files=not self.metadata_only)

    @staticmethod
    def _read(root: Path, pair: str, csv_split: str) -> tuple[pd.DataFrame, Path]:
        code = MELD_ST_PAIRS[pair][1].lower()
        candidates = (root / pair / f"{csv_split}.csv", root / pair / f"{code}_{csv_split}.csv")
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise DataError(f"{root / pair}: no {csv_split} split; looked for {[c.name for c in candidates]}")
        raw = _read_csv(path, {"speaker": str})
        _check_columns(raw, (*MELD_ST_COLUMNS, MELD_ST_PAIRS[pair][2]), path)
        return raw, path

    def _rows(self, raw: pd.DataFrame, path: Path, pair: str, lang: str, code: str, text_column: str,
              split: str, audio_split: str, genders: Mapping[str, str]) -> pd.DataFrame:
        character = raw["speaker"].str.strip()
        gender, source = _map_gender(character, genders)
        ident = raw[list(MELD_ST_EN_KEY)].astype(str)
        dialogue = "s" + ident["season"] + "e" + ident["episode"] + "_dia" + ident["dia_id"]
        key = dialogue + "_utt" + ident["utt_id"]
        file_id = f"{audio_split}_" + raw["id"].astype(str)
        return pd.DataFrame({
            # English: one uid per utterance across pairs (dedup key); dubbed: one per pair row.
            "uid": f"{self.name}/{lang}/" + (key if lang == "en" else file_id),
            "uid_pair": f"{self.name}/{lang}/{pair}/" + file_id,
            "corpus": self.name,
            "path": f"{pair}/{code}/{audio_split}/" + file_id + ".wav",
            "speaker": f"{self.name}_{lang}_" + character,
            "speaker_name": character,
            "gender": gender,
            "gender_src": source,
            "language": lang,
            "emotion": _map_emotion(raw["emotion"], path, "emotion"),
            "sentiment": raw["sentiment"].str.strip().str.lower(),
            "text": raw[text_column],
            "text_lang": lang,
            "dialogue_id": dialogue,
            "utt_pos": pd.to_numeric(raw["utt_id"]).astype(np.int64),
            "split": split,
            "season": pd.to_numeric(raw["season"]).astype(np.int64),
            "episode": pd.to_numeric(raw["episode"]).astype(np.int64),
            "pair": pair,
            "pair_id": raw["id"].astype(str),
        })
