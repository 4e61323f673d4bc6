"""EmoDB (Berlin Database of Emotional Speech): labels decoded from the native file names."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fairray.data.corpora._base import AUDIO_SUFFIXES, CORPORA, CorpusAdapter, validate_table
from fairray.errors import DataError

# Code tables of the EmoDB documentation (Burkhardt et al., Interspeech 2005; emodb.bilderbar.info,
# "Documentation" page, and erklaerung.txt of the distribution).
#: Emotion letter (German initial) → harmonised emotion.
EMOTION_CODES = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
                 "N": "neutral"}
#: Speaker number → (gender, age in years at recording).
SPEAKERS = {"03": ("M", 31), "08": ("F", 34), "09": ("F", 21), "10": ("M", 32), "11": ("M", 26),
            "12": ("M", 30), "13": ("F", 32), "14": ("F", 35), "15": ("M", 25), "16": ("F", 31)}
#: Text code → sentence (a = short, b = long sentences).
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}

_NAME = re.compile(r"^(\d{2})([ab]\d{2})([A-Z])([a-z])$")


def parse_name(path: Path) -> dict[str, object]:
    """Decode ``<SS><TTT><E><V>`` (speaker, text, emotion letter, version); :class:`DataError` if malformed."""
    match = _NAME.match(path.stem)
    if match is None:
        raise DataError(f"{path}: file name does not follow the EmoDB coding <speaker 2 digits><text code a01..b10>"
                        "<emotion letter><version letter>, e.g. 03a01Fa")
    speaker, text_id, emotion, version = match.groups()
    if speaker not in SPEAKERS:
        raise DataError(f"{path}: speaker {speaker!r} is not in the EmoDB speaker table {sorted(SPEAKERS)}")
    if text_id not in TEXTS:
        raise DataError(f"{path}: text code {text_id!r} is not one of {sorted(TEXTS)}")
    if emotion not in EMOTION_CODES:
        raise DataError(f"{path}: emotion letter {emotion!r} is not one of {sorted(EMOTION_CODES)}")
    gender, age = SPEAKERS[speaker]
    return {"speaker": f"emodb_{speaker}", "gender": gender, "age": age, "emotion": EMOTION_CODES[emotion],
            "text_id": text_id, "text": TEXTS[text_id], "version": version}


@CORPORA.register("emodb")
class EmoDBAdapter(CorpusAdapter):
    """EmoDB as distributed by TU Berlin; ``root`` holds the ``wav`` folder::

        root/
          wav/
            03a01Fa.wav   # speaker 03, text a01, emotion F (Freude), version a
            ...
          (silb/, lablaut/, erkennung.txt ... are not read)

    ``.wav`` or ``.flac``. Emotion letters W anger, L boredom, E disgust, A fear, F happiness, T sadness,
    N neutral; gender and age from the EmoDB speaker table; text from the ten text codes.
    """

    name = "emodb"
    languages = ("de",)
    verified_on_real_data = True

    def load(self, root: str | Path) -> pd.DataFrame:
        root = Path(root)
        wav_dir = root / "wav"
        if not wav_dir.is_dir():
            raise DataError(f"{wav_dir}: folder not found; expected the EmoDB layout root/wav/03a01Fa.wav")
        paths = sorted(p for p in wav_dir.iterdir()
                       if not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES)
        if not paths:
            raise DataError(f"{wav_dir}: no .wav/.flac files")
        rows = [{"uid": f"emodb/{p.stem}", "corpus": "emodb", "path": p.relative_to(root).as_posix(),
                 "language": "de", **parse_name(p)} for p in paths]
        table = pd.DataFrame(rows)
        columns = ["uid", "corpus", "path", "speaker", "gender", "age", "language", "emotion", "text_id", "text",
                   "version"]
        return validate_table(table[columns], source=str(wav_dir), root=root, check_files=True)
