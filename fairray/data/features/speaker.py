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

from fairray.data.features._base import EXTRACTORS, Extractor, hf_offline, require, resolve_device, resolve_model_dir
from fairray.errors import ConfigError, DataError

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
#: The ECAPA-TDNN layer whose output is the embedding (``fc``: a 1x1 speechbrain Conv1d, weight [lin_neurons, 2C, 1]).
_ECAPA_EMBEDDING_WEIGHT = "fc.conv.weight"


@EXTRACTORS.register("ecapa")
class ECAPA(Extractor):
    """ECAPA-TDNN speaker embedding (Desplanques et al. 2020; SpeechBrain's VoxCeleb model): 192-d.

    Needs SpeechBrain and the checkpoint folder of ``speechbrain/spkrec-ecapa-voxceleb`` on disk
    (``params.model_path`` or $FAIRRAY_ECAPA_PATH). Loading is local and read-only:
    ``EncoderClassifier.from_hparams(source=folder, savedir=None)``, with ``pretrained_path`` overridden to
    the folder: the published ``hyperparams.yaml`` says ``pretrained_path: speechbrain/spkrec-ecapa-voxceleb``
    and its Pretrainer would fetch the checkpoint files from that Hub repository. Nothing is downloaded,
    linked or written into the folder, and a checkpoint that lacks weights of the model the yaml builds is
    refused (SpeechBrain itself would only log a warning and keep those layers random).

    A row is ``encode_batch`` of the clip alone (``normalize=False``), as the model card computes it. Clips
    are batched only with clips of the same number of Fbank frames (zero padding of less than one hop, all
    relative lengths 1): SpeechBrain's padding to the longest clip of a batch masks the pooling but not the
    convolutions, whose edge frames then see the padding (rows changed by up to 2e-2 on the test model).
    ``dim`` is the width of the checkpoint's embedding layer (``lin_neurons``), read without loading it.

    Verified offline (tests/data/features/test_ecapa.py): a tiny randomly initialised ECAPA-TDNN written in
    the published folder layout (``hyperparams.yaml`` of the same structure, ``pretrained_path`` still the
    Hub id; the four files of its Pretrainer; a 200-tensor style state_dict) loads from a read-only folder
    without network and embeds real corpus clips; batched rows equal one-clip rows and the model card's own
    ``encode_batch``. Not verified: the real VoxCeleb weights (no network here), so nothing about the quality
    of the embeddings.
    """

    name = "ecapa"
    version = 2
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
        if self._model is not None:
            return self._model[2]
        return self._checkpoint_dim(self._folder())

    def fingerprint(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        from fairray.data.features._base import folder_digest

        try:
            speechbrain = version("speechbrain")
        except PackageNotFoundError:
            speechbrain = "absent"
        return {"weights": folder_digest(self._folder()), "speechbrain": speechbrain}

    def _folder(self):
        return resolve_model_dir(self.params.model_path, ECAPA_ENV_VAR, "ecapa", _ECAPA_EXPECTED,
                                 ("hyperparams.yaml", "embedding_model.ckpt"))

    @staticmethod
    def _read_checkpoint(path) -> dict:
        """The state_dict in ``path``, memory-mapped where the file allows it (a cheap read of a large file)."""
        import torch

        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) torch.save file cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable file is one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"ecapa: cannot read {path} ({first}); the folder must hold {_ECAPA_EXPECTED}") from None
        weight = state.get(_ECAPA_EMBEDDING_WEIGHT) if isinstance(state, dict) else None
        if not isinstance(weight, torch.Tensor) or weight.ndim != 3:
            raise DataError(f"ecapa: {path} is not an ECAPA-TDNN state_dict (no {_ECAPA_EMBEDDING_WEIGHT!r}); the "
                            f"folder must hold {_ECAPA_EXPECTED}")
        return state

    def _checkpoint_dim(self, folder) -> int:
        """``lin_neurons``: the output width of the embedding layer in ``embedding_model.ckpt``."""
        return int(self._read_checkpoint(folder / "embedding_model.ckpt")[_ECAPA_EMBEDDING_WEIGHT].shape[0])

    def _load(self) -> Any:
        folder = self._folder()
        ckpt = folder / "embedding_model.ckpt"
        state = self._read_checkpoint(ckpt)
        hf_offline()
        require("speechbrain", "ecapa")
        from speechbrain.inference.speaker import EncoderClassifier
        from speechbrain.utils.checkpoints import KEYS_MAPPING, map_old_state_dict_weights
        from speechbrain.utils.fetching import FetchConfig, LocalStrategy

        device = resolve_device(self.params.device)
        try:
            # savedir=None: files are read where they are (nothing linked or copied into a folder); the override
            # points the Pretrainer's paths at the folder instead of the Hub id the published yaml names.
            model = EncoderClassifier.from_hparams(
                source=str(folder), savedir=None, overrides={"pretrained_path": str(folder)},
                overrides_must_match=False, local_strategy=LocalStrategy.NO_LINK,
                fetch_config=FetchConfig(allow_network=False), run_opts={"device": device})
        except Exception as exc:  # yaml, fetch and state_dict errors alike become one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"ecapa: cannot load {folder} ({type(exc).__name__}: {first}); it must hold "
                            f"{_ECAPA_EXPECTED}") from exc
        # SpeechBrain transfers parameters with strict=False: a checkpoint of another architecture would leave
        # layers at their random initialisation with a logged warning only. (BatchNorm's num_batches_tracked
        # is not in the published checkpoint: its 200 tensors are the parameters and running statistics.)
        names = set(map_old_state_dict_weights(dict.fromkeys(state), KEYS_MAPPING))
        missing = sorted(k for k in model.mods.embedding_model.state_dict()
                         if k not in names and not k.endswith("num_batches_tracked"))
        if missing:
            raise DataError(f"ecapa: {ckpt} lacks {len(missing)} weight(s) of the embedding_model that "
                            f"hyperparams.yaml builds (e.g. {missing[:3]}); the folder must hold {_ECAPA_EXPECTED}")
        dim = int(state[_ECAPA_EMBEDDING_WEIGHT].shape[0])
        return model, device, dim

    def _bucket(self, n_samples: int) -> int:
        """Clips with equal buckets give the same Fbank frames zero-padded to each other's length.

        With a centred, zero-padded STFT every frame sees the same samples (real or zero) whether a clip
        is padded by less than one hop or not; otherwise only equal lengths are batched together.
        """
        stft = getattr(self._model[0].mods.compute_features, "compute_STFT", None)
        if stft is not None and stft.center and stft.pad_mode == "constant":
            return n_samples // stft.hop_length
        return n_samples

    def _extract(self, items: list) -> np.ndarray:
        import torch

        model, device, dim = self._model
        buckets: dict[int, list[int]] = {}
        for i in sorted(range(len(items)), key=lambda i: len(items[i])):
            buckets.setdefault(self._bucket(len(items[i])), []).append(i)
        out = np.zeros((len(items), dim), dtype=np.float32)
        for indices in buckets.values():
            for start in range(0, len(indices), self.params.batch_size):
                batch = indices[start:start + self.params.batch_size]
                wavs = torch.zeros(len(batch), max(len(items[i]) for i in batch))
                for row, i in enumerate(batch):
                    wavs[row, :len(items[i])] = torch.from_numpy(np.asarray(items[i], dtype=np.float32))
                with torch.no_grad():
                    out[batch] = model.encode_batch(wavs.to(device)).reshape(len(batch), -1).cpu().numpy()
        return out
