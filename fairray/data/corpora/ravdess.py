"""RAVDESS, speech audio-only: labels decoded from the native seven-field file names."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fairray.data.corpora._base import AUDIO_SUFFIXES, CORPORA, CorpusAdapter, validate_table
from fairray.errors import DataError

#: Field 3 of a RAVDESS file name → harmonised emotion (Livingstone & Russo 2018, Table 1 / Zenodo README).
EMOTION_CODES = {"01": "neutral", "02": "calm", "03": "happiness", "04": "sadness", "05": "anger", "06": "fear",
                 "07": "disgust", "08": "surprise"}
INTENSITY_CODES = {"01": "normal", "02": "strong"}
#: Field 5: the two lexically matched statements.
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
#: Field 1 (modality): only audio-only files carry sound without video.
AUDIO_ONLY = "03"
#: Field 2 (vocal channel): 01 speech, 02 song.
SPEECH, SONG = "01", "02"

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")


def parse_name(path: Path) -> dict[str, str] | None:
    """Decode one RAVDESS file name; ``None`` for a song file (skipped), :class:`DataError` if malformed."""
    match = _NAME.match(path.stem)
    if match is None:
        raise DataError(f"{path}: file name does not follow the RAVDESS coding "
                        "MM-VV-EE-II-SS-RR-AA (modality-channel-emotion-intensity-statement-repetition-actor)")
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality != AUDIO_ONLY:
        raise DataError(f"{path}: modality {modality!r} is not audio-only ({AUDIO_ONLY!r})")
    if channel == SONG:
        return None
    checks = (("vocal channel", channel, (SPEECH, SONG)), ("emotion", emotion, EMOTION_CODES),
              ("intensity", intensity, INTENSITY_CODES), ("statement", statement, STATEMENTS),
              ("repetition", repetition, ("01", "02")))
    for field, value, valid in checks:
        if value not in valid:
            raise DataError(f"{path}: {field} code {value!r} is not one of {sorted(valid)}")
    if not 1 <= int(actor) <= 24:
        raise DataError(f"{path}: actor {actor!r} is outside 01..24")
    return {"emotion": EMOTION_CODES[emotion], "intensity": INTENSITY_CODES[intensity], "statement_id": statement,
            "text": STATEMENTS[statement], "repetition": repetition, "actor": actor}


@CORPORA.register("ravdess")
class RavdessAdapter(CorpusAdapter):
    """RAVDESS speech, audio-only (Zenodo ``Audio_Speech_Actors_01-24``); ``root`` holds the actor folders::

        root/
          Actor_01/
            03-01-01-01-01-01-01.wav   # modality-channel-emotion-intensity-statement-repetition-actor
            ...
          ...
          Actor_24/

    ``.wav`` or ``.flac``. Emotion codes 01 neutral, 02 calm, 03 happiness, 04 sadness, 05 anger, 06 fear,
    07 disgust, 08 surprise; odd actor = M, even = F; no per-actor ages. Speech only: song files
    (vocal channel 02, ``Audio_Song_Actors_01-24``) found in the same folders are skipped.
    """

    name = "ravdess"
    languages = ("en",)
    verified_on_real_data = True

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        actor_dirs = sorted(p for p in root.glob("Actor_*") if p.is_dir())
        if not actor_dirs:
            raise DataError(f"{root}: no Actor_XX folders; expected the RAVDESS layout root/Actor_01/03-01-...wav")
        rows = []
        for actor_dir in actor_dirs:
            folder = _ACTOR_DIR.match(actor_dir.name)
            if folder is None:
                raise DataError(f"{actor_dir}: folder name is not Actor_XX with a two-digit actor number")
            for path in sorted(actor_dir.iterdir()):
                if path.name.startswith(".") or path.suffix.lower() not in AUDIO_SUFFIXES:
                    continue
                fields = parse_name(path)
                if fields is None:
                    continue
                actor = fields.pop("actor")
                if actor != folder.group(1):
                    raise DataError(f"{path}: actor {actor!r} in the file name differs from its folder "
                                    f"{actor_dir.name}")
                rows.append({"uid": f"ravdess/{path.stem}", "corpus": "ravdess",
                             "path": path.relative_to(root).as_posix(), "speaker": f"ravdess_{actor}",
                             "gender": "M" if int(actor) % 2 else "F", "language": "en", **fields})
        if not rows:
            raise DataError(f"{root}: no RAVDESS speech files (.wav/.flac) under Actor_XX/")
        return validate_table(pd.DataFrame(rows), source=str(root), root=root, check_files=True)
