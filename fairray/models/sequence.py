"""Models over variable-length inputs: pooled frame sequences (``seq_pool``), an LSTM over frames (``lstm``)
and raw waveforms (``wav_cnn``).

All read *valid* positions only (the batch's mask), so padding never changes a clip's logits: a clip gives
the same output alone or in a batch of longer clips (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fairray.inputs import InputSpec, Padded
from fairray.models._base import MODELS, select_input
from fairray.models.mlp import PooledEncoder, mlp_layers


def masked_mean_std(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the valid frames ``values [B, T, D]``, ``mask [B, T]`` -> ``[B, D]``.
    A row without valid frames gives zeros."""
    w = mask.to(values.dtype).unsqueeze(-1)
    n = w.sum(dim=1).clamp(min=1.0)
    mean = (values * w).sum(dim=1) / n
    var = (((values - mean.unsqueeze(1)) ** 2) * w).sum(dim=1) / n
    return mean, var.clamp(min=1e-8).sqrt()


class PooledHead(PooledEncoder):
    """Masked mean (``mean``) or mean + std (``stats``, x-vector statistics pooling) over the frames of a
    sequence input, then an MLP head. A fusion encoder: ``embed`` is the head's last hidden layer."""

    def __init__(self, key: str, pooling: str, head: nn.Sequential) -> None:
        super().__init__()
        self.key, self.pooling, self.head = key, pooling, head
        self.embed_dim = head[-1].in_features

    def pool(self, inputs) -> torch.Tensor:
        seq: Padded = inputs[self.key]
        mean, std = masked_mean_std(seq.values, seq.mask)
        return mean if self.pooling == "mean" else torch.cat([mean, std], dim=-1)


@MODELS.register("seq_pool")
class SequencePool:
    accepts = ("sequence",)
    summary = "masked mean or mean+std pooling of frame features (LLDs, SSL hidden states) + MLP head"

    @dataclass(frozen=True)
    class Params:
        pooling: Literal["mean", "stats"] = "stats"
        hidden: int = field(default=128, metadata={"ge": 1})
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.2, metadata={"ge": 0, "lt": 1})
        #: The sequence input to read; null = the dataset's only sequence input.
        input: str | None = None

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> PooledHead:
        spec = select_input("seq_pool", params, inputs, cls.accepts)
        width = spec.dim * (2 if params.pooling == "stats" else 1)
        head = nn.Sequential(*mlp_layers(width, params.hidden, params.depth, params.dropout, n_out))
        return PooledHead(spec.name, params.pooling, head)


class LSTMHead(PooledEncoder):
    """An LSTM over the valid frames of a sequence input (packed: padding frames never enter it), its last
    layer's final hidden state (both directions side by side when bidirectional), then ``dropout -> Linear ->
    ReLU`` (the embedding, width ``out``) and the classifier. A row without valid frames (length 0) gets a
    zero final state. A fusion encoder: ``embed`` is the ReLU layer's output.

    GEAR's released code (``AuViSubNet`` of IFL_LS / Self-MM) packs the padded frames with their lengths and
    reads ``h_n`` the same way; its two linear layers after the LSTM (no non-linearity between them) are one
    linear layer here."""

    def __init__(self, key: str, rnn: nn.LSTM, head: nn.Sequential) -> None:
        super().__init__()
        self.key, self.rnn, self.head = key, rnn, head
        self.embed_dim = head[-1].in_features

    def pool(self, inputs) -> torch.Tensor:
        seq: Padded = inputs[self.key]
        lengths = seq.mask.sum(dim=1)
        span = torch.arange(seq.mask.shape[1], device=seq.mask.device)[None, :] < lengths[:, None]
        if not torch.equal(span, seq.mask):
            raise ValueError(f"lstm: input {self.key!r} has padding before valid frames; its mask must mark a "
                             "prefix of each row (as every fairray store pads: at the end)")
        lengths_cpu = lengths.cpu()
        packed = nn.utils.rnn.pack_padded_sequence(seq.values, lengths_cpu.clamp(min=1), batch_first=True,
                                                   enforce_sorted=False)
        _, (h_n, _) = self.rnn(packed)
        directions = 2 if self.rnn.bidirectional else 1
        last = h_n[-directions:]  # the last layer's final state per direction: [directions, B, hidden]
        h = torch.cat(list(last), dim=-1)
        return h * (lengths > 0).to(h.dtype)[:, None]  # an empty row: no frame entered the LSTM


@MODELS.register("lstm")
class SequenceLSTM:
    accepts = ("sequence",)
    summary = "LSTM over the valid frames of a sequence (GEAR's per-modality encoder over COVAREP/FACET/GloVe) + head"

    @dataclass(frozen=True)
    class Params:
        #: Hidden size of the LSTM (GEAR's released MOSI/MOSEI config: audio 16, vision 32).
        hidden: int = field(default=16, metadata={"ge": 1})
        #: LSTM layers (METHODS 3.11: one).
        layers: int = field(default=1, metadata={"ge": 1})
        bidirectional: bool = False
        #: Width of the embedding after the LSTM (the released post_<modality>_dim: audio 16, vision / text 32).
        out: int = field(default=16, metadata={"ge": 1})
        #: Dropout on the LSTM's final state (and between LSTM layers when there are several).
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: The sequence input to read; null = the dataset's only sequence input.
        input: str | None = None

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> LSTMHead:
        spec = select_input("lstm", params, inputs, cls.accepts)
        if spec.dim is None:
            raise ValueError(f"lstm: the frame width of input {spec.name!r} is not known (build it from the prepared "
                             "dataset's input specs)")
        rnn = nn.LSTM(spec.dim, params.hidden, num_layers=params.layers, batch_first=True,
                      bidirectional=params.bidirectional, dropout=params.dropout if params.layers > 1 else 0.0)
        width = params.hidden * (2 if params.bidirectional else 1)
        head = nn.Sequential(nn.Dropout(params.dropout), nn.Linear(width, params.out), nn.ReLU(),
                             nn.Linear(params.out, n_out))
        return LSTMHead(spec.name, rnn, head)


#: (kernel, stride) of the convolutional front end, the first layers of wav2vec 2.0's feature encoder
#: (400 samples = 25 ms receptive field, 20 ms hop after all five at 16 kHz: 10-5, 3-2, 3-2, 3-2, 3-2).
FRONTEND = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2))


class ChannelNorm(nn.LayerNorm):
    """Layer norm over the channels of every frame of ``[B, C, T]`` (wav2vec 2.0's ``layer_norm`` extractor
    mode): per frame, so padded frames cannot change valid ones (group norm over time would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class WaveformCNN(PooledEncoder):
    """A small convolutional encoder over raw samples (wav2vec 2.0-style front end, layer norm per frame),
    masked mean pooling over the frames that see only valid samples, then an MLP head. A fusion encoder:
    ``embed`` is the head's last hidden layer."""

    def __init__(self, key: str, channels: int, n_layers: int, head: nn.Sequential) -> None:
        super().__init__()
        self.key, self.schedule = key, FRONTEND[:n_layers]
        layers: list[nn.Module] = []
        width = 1
        for k, s in self.schedule:
            layers += [nn.Conv1d(width, channels, k, stride=s, bias=False), ChannelNorm(channels), nn.GELU()]
            width = channels
        self.frontend = nn.Sequential(*layers)
        self.head = head
        self.embed_dim = head[-1].in_features

    def frame_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Which output frames see only valid samples: the conv length formula applied to each row's length."""
        lengths = mask.sum(dim=1)
        for k, s in self.schedule:
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        frames = self.frame_count(mask.shape[1])
        return torch.arange(frames, device=mask.device)[None, :] < lengths.clamp(min=1)[:, None]

    def frame_count(self, samples: int) -> int:
        for k, s in self.schedule:
            samples = (samples - k) // s + 1
        return samples

    def pool(self, inputs) -> torch.Tensor:
        wav: Padded = inputs[self.key]
        x = wav.values * wav.mask.to(wav.values.dtype)  # padding is silence
        h = self.frontend(x.unsqueeze(1)).transpose(1, 2)  # [B, frames, channels]
        mean, _ = masked_mean_std(h, self.frame_mask(wav.mask))
        return mean

    def lr_scales(self) -> dict[str, float]:
        return {"frontend": self.frontend_lr_scale}

    frontend_lr_scale = 1.0


@MODELS.register("wav_cnn")
class WaveformModel:
    accepts = ("waveform",)
    summary = "small convolutional encoder over 16 kHz samples (wav2vec 2.0 front end) + masked pooling + head"

    @dataclass(frozen=True)
    class Params:
        channels: int = field(default=64, metadata={"ge": 1})
        #: Convolution layers of the front end (1..5; 5 = 20 ms frames).
        layers: int = field(default=5, metadata={"ge": 1, "le": len(FRONTEND)})
        hidden: int = field(default=64, metadata={"ge": 1})
        depth: int = field(default=1, metadata={"ge": 0})
        dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
        #: Learning rate of the front end as a multiple of train.lr (its own parameter group).
        frontend_lr_scale: float = field(default=1.0, metadata={"gt": 0})
        #: The waveform input to read; null = the dataset's only waveform input.
        input: str | None = None

    @classmethod
    def build(cls, params: Params, inputs: Mapping[str, InputSpec], n_out: int) -> WaveformCNN:
        spec = select_input("wav_cnn", params, inputs, cls.accepts)
        head = nn.Sequential(*mlp_layers(params.channels, params.hidden, params.depth, params.dropout, n_out))
        model = WaveformCNN(spec.name, params.channels, params.layers, head)
        model.frontend_lr_scale = params.frontend_lr_scale
        return model
