"""IEMOCAP: utterances, labels and dimensional ratings from the native ``EmoEvaluation`` files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from fairray.data.corpora._base import AUDIO_SUFFIXES, CORPORA, CorpusAdapter, validate_table
from fairray.errors import DataError

#: Consensus label of an EmoEvaluation line → harmonised emotion. ``xxx`` (no majority among the
#: evaluators) and ``oth`` both become ``other``; ``emotion_raw`` keeps the code so either can be filtered.
EMOTION_CODES = {"ang": "anger", "hap": "happiness", "exc": "excitement", "sad": "sadness", "neu": "neutral",
                 "fru": "frustration", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other",
                 "xxx": "other"}

_NUM = r"[-+]?\d+(?:\.\d*)?"
#: ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``
_EVAL_LINE = re.compile(rf"^\[\s*({_NUM})\s*-\s*({_NUM})\s*\]\s+(\S+)\s+(\S+)\s+"
                        rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*$")
#: ``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.``
_TRANSCRIPT_LINE = re.compile(rf"^(\S+)\s+\[\s*{_NUM}\s*-\s*{_NUM}\s*\]:\s?(.*)$")
#: Utterance id: session, the dialog's recording-actor letter, dialog name, then the speaking turn
#: (F or M = gender of the actor speaking, followed by the turn number).
_UTTERANCE = re.compile(r"^Ses(\d{2})[FM]_.+_([FM])[0-9A-Za-z]*$")
_SESSION_DIR = re.compile(r"^Session(\d+)$")


def parse_evaluation(path: Path, session: int) -> list[dict[str, object]]:
    """The utterance lines of one ``EmoEvaluation/<dialog>.txt``; evaluator lines (``C-E2:`` ...) are skipped."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.startswith("["):
                continue  # header (%), blank lines, per-evaluator lines
            match = _EVAL_LINE.match(line.rstrip("\n"))
            if match is None:
                raise DataError(f"{path}: line {number} is not '[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]': "
                                f"{line.strip()!r}")
            start, end, utterance, code, valence, arousal, dominance = match.groups()
            ident = _UTTERANCE.match(utterance)
            dialog = utterance.rsplit("_", 1)[0]
            if ident is None or dialog != path.stem:
                raise DataError(f"{path}: line {number}: utterance id {utterance!r} is not "
                                f"{path.stem}_<F|M><turn>")
            if int(ident.group(1)) != session:
                raise DataError(f"{path}: line {number}: utterance {utterance!r} is not from Session{session}")
            if code not in EMOTION_CODES:
                raise DataError(f"{path}: line {number}: label {code!r} is not one of {sorted(EMOTION_CODES)}")
            letter = ident.group(2)
            rows.append({"uid": f"iemocap/{utterance}", "utterance": utterance,
                         "speaker": f"iemocap_{session:02d}{letter}", "gender": letter,
                         "emotion": EMOTION_CODES[code], "emotion_raw": code,
                         "valence": float(valence), "arousal": float(arousal), "dominance": float(dominance),
                         "start_s": float(start), "end_s": float(end), "session": session, "dialogue_id": dialog,
                         "improvised": "_impro" in dialog})
    return rows


def parse_transcription(path: Path) -> dict[str, str]:
    """``{utterance id: text}`` of one ``transcriptions/<dialog>.txt``; lines without an id and times are skipped."""
    texts = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = _TRANSCRIPT_LINE.match(line.strip())
            if match is not None:
                texts[match.group(1)] = match.group(2).strip()
    return texts


@CORPORA.register("iemocap")
class IemocapAdapter(CorpusAdapter):
    """IEMOCAP as released by USC SAIL (``IEMOCAP_full_release``); ``root`` holds the sessions::

        root/
          Session1/
            dialog/EmoEvaluation/Ses01F_impro01.txt    # [6.2901 - 8.2357]  Ses01F_impro01_F000  neu  [V, A, D]
            dialog/transcriptions/Ses01F_impro01.txt   # Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
            sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
          ...
          Session5/

    ``.wav`` or ``.flac``. One row per utterance of the EmoEvaluation files (subfolders such as
    Categorical/ are not read). Speaker = session + the letter of the speaking turn (``F000`` → F), e.g.
    iemocap_01F; gender = that letter. Labels ang, hap, exc, sad, neu, fru, sur, fea, dis map to the
    harmonised names; oth and xxx (no majority) become ``other``, ``emotion_raw`` keeps the code.
    ``text`` from the transcriptions when present (else empty).
    """

    name = "iemocap"
    transcripts = True
    dialogues = True
    languages = ("en",)

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        sessions = sorted((int(m.group(1)), p) for p in root.glob("Session*")
                          if p.is_dir() and (m := _SESSION_DIR.match(p.name)))
        if not sessions:
            raise DataError(f"{root}: no Session1..Session5 folders; expected the IEMOCAP_full_release layout")
        rows: list[dict[str, object]] = []
        for session, session_dir in sessions:
            eval_dir = session_dir / "dialog" / "EmoEvaluation"
            eval_files = sorted(p for p in eval_dir.glob("*.txt") if not p.name.startswith("."))
            if not eval_files:
                raise DataError(f"{eval_dir}: no EmoEvaluation/*.txt files")
            for eval_file in eval_files:
                found = parse_evaluation(eval_file, session)
                transcript = session_dir / "dialog" / "transcriptions" / eval_file.name
                texts = parse_transcription(transcript) if transcript.is_file() else {}
                wav_dir = session_dir / "sentences" / "wav" / eval_file.stem
                for row in found:
                    utterance = row.pop("utterance")
                    path = next((wav_dir / f"{utterance}{s}" for s in AUDIO_SUFFIXES
                                 if (wav_dir / f"{utterance}{s}").is_file()), wav_dir / f"{utterance}.wav")
                    row["path"] = path.relative_to(root).as_posix()
                    row["text"] = texts.get(utterance, np.nan)
                rows.extend(found)
        if not rows:
            raise DataError(f"{root}: the EmoEvaluation files hold no utterance lines")
        table = pd.DataFrame(rows)
        table.insert(1, "corpus", "iemocap")
        table["language"] = "en"
        table["utt_pos"] = table.groupby("dialogue_id")["start_s"].rank(method="first").astype(int) - 1
        columns = ["uid", "corpus", "path", "speaker", "gender", "language", "emotion", "emotion_raw", "valence",
                   "arousal", "dominance", "start_s", "end_s", "session", "dialogue_id", "utt_pos", "improvised",
                   "text"]
        return validate_table(table[columns], source=str(root), root=root, check_files=True)
