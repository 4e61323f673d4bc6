"""Speaker embeddings: resemblyzer's GE2E encoder (runs offline) and ECAPA-TDNN (needs a local checkpoint).

``resemblyzer`` ships its weights inside the wheel. Its first ``preprocess_wav``/``embed_utterance``
in a process compiles librosa's numba kernels (seconds on a warm numba cache, ~30 s on a cold one);
later clips take ~10 ms. Install: ``pip install resemblyzer==0.1.4``, then
``pip uninstall -y webrtcvad && pip install webrtcvad-wheels`` (the original ``webrtcvad`` imports
``pkg_resources``, which current setuptools lacks; both packages own ``webrtcvad.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fairray.data.features._base import EXTRACTORS, Extractor, require, resolve_device, resolve_model_dir
from fairray.errors import ConfigError

_RESEMBLYZER_INSTALL = ("pip install resemblyzer==0.1.4 && pip uninstall -y webrtcvad && "
                        "pip install webrtcvad-wheels")
#: Below this many samples (0.1 s) of voiced audio left by resemblyzer's VAD trimming, the clip is
#: embedded from its whole volume-normalised waveform instead (e.g. whispered or noisy clips).
MIN_VOICED_SAMPLES = 1600


@EXTRACTORS.register("resemblyzer")
class Resemblyzer(Extractor):
    """GE2E speaker embedding (Wan et al. 2018; resemblyzer's VoiceEncoder): 256-d, L2-normalised.

    Per clip: ``preprocess_wav`` (volume normalisation to −30 dBFS, long silences removed by
    webrtcvad), then ``embed_utterance`` (mean of 1.6 s partial embeddings, re-normalised).
    """

    name = "resemblyzer"
    version = 1
    modality = "audio"
    runtime_params = frozenset({"device"})

    @dataclass(frozen=True)
    class Params:
        device: str = "cpu"

    @property
    def dim(self) -> int:
        return 256

    def fingerprint(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"resemblyzer": version("resemblyzer")}

    def _load(self) -> Any:
        resemblyzer = require("resemblyzer", "resemblyzer speaker embeddings", _RESEMBLYZER_INSTALL)
        from resemblyzer import audio

        return resemblyzer.VoiceEncoder(device=resolve_device(self.params.device), verbose=False), audio

    def _extract(self, items: list) -> np.ndarray:
        encoder, audio = self._model
        rows = []
        for x in items:
            wav = audio.preprocess_wav(x)  # 16 kHz in, no resampling
            if len(wav) < MIN_VOICED_SAMPLES:
                wav = audio.normalize_volume(x, audio.audio_norm_target_dBFS, increase_only=True)
            rows.append(encoder.embed_utterance(wav))
        return np.stack(rows)


ECAPA_ENV_VAR = "FAIRRAY_ECAPA_PATH"
_ECAPA_EXPECTED = ("the SpeechBrain ECAPA-TDNN checkpoint of speechbrain/spkrec-ecapa-voxceleb (hyperparams.yaml, "
                   "embedding_model.ckpt, mean_var_norm_emb.ckpt, classifier.ckpt, label_encoder.txt) copied from a "
                   "machine with network access")


@EXTRACTORS.register("ecapa")
class ECAPA(Extractor):
    """ECAPA-TDNN speaker embedding (Desplanques et al. 2020; SpeechBrain's VoxCeleb model): 192-d.

    Needs SpeechBrain and the checkpoint folder on disk (``params.model_path`` or $FAIRRAY_ECAPA_PATH).
    Neither is available offline on the development machine, so this path has not been run there:
    using it without them fails with one line naming the folder to provide.
    """

    name = "ecapa"
    version = 1
    modality = "audio"
    runtime_params = frozenset({"batch_size", "device"})

    @dataclass(frozen=True)
    class Params:
        #: Local checkpoint folder (``""`` reads $FAIRRAY_ECAPA_PATH).
        model_path: str = ""
        batch_size: int = 16
        device: str = "auto"

    def _check_params(self) -> None:
        if self.params.batch_size < 1:
            raise ConfigError(f"ecapa: batch_size must be >= 1, got {self.params.batch_size}")

    @property
    def dim(self) -> int:
        return 192

    def fingerprint(self) -> dict[str, str]:
        from fairray.data.features._base import folder_digest

        return {"weights": folder_digest(self._folder())}

    def _folder(self):
        return resolve_model_dir(self.params.model_path, ECAPA_ENV_VAR, "ecapa", _ECAPA_EXPECTED,
                                 ("hyperparams.yaml", "embedding_model.ckpt"))

    def _load(self) -> Any:
        folder = self._folder()
        require("speechbrain", "ecapa", "pip install speechbrain")
        from speechbrain.inference.speaker import EncoderClassifier

        device = resolve_device(self.params.device)
        return EncoderClassifier.from_hparams(source=str(folder), savedir=str(folder),
                                              run_opts={"device": device}), device

    def _extract(self, items: list) -> np.ndarray:
        import torch

        model, device = self._model
        out = []
        for start in range(0, len(items), self.params.batch_size):
            batch = items[start:start + self.params.batch_size]
            longest = max(len(x) for x in batch)
            wavs = torch.zeros(len(batch), longest)
            for i, x in enumerate(batch):
                wavs[i, :len(x)] = torch.from_numpy(x)
            lengths = torch.tensor([len(x) / longest for x in batch])
            with torch.no_grad():
                out.append(model.encode_batch(wavs.to(device), lengths.to(device)).squeeze(1).cpu().numpy())
        return np.concatenate(out)
