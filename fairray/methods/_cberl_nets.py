"""CBERL's building blocks (METHODS §3.12), each a small module or a pure function the method composes.

* :func:`product_of_experts` and :class:`DJVAE` — per-modality Gaussian encoders fused by a product of
  experts with a N(0, I) prior expert, per-modality decoders, ``L_vae``;
* :func:`dialogue_order` / :class:`DialogueLSTM` — a Bi-LSTM over each dialogue's utterances in turn order;
* :func:`window_edges` (sparse; :func:`window_adjacency` is its dense reference), :class:`GCN`,
  :func:`scaled_cosine_error` — the MGNN utterance graph with its ``w_past`` / ``w_fut`` windows, two GCN
  layers, and the masked-reconstruction error;
* :class:`ClassGenerator`, :class:`ClassCritic` — the class-conditional generator and discriminator of the
  bidirectional GAN, and :func:`frozen` (a module applied with detached weights: the generator's adversarial
  term must not train the discriminator).

A batch without dialogue context is a batch of one-utterance dialogues: the Bi-LSTM reads one step and the
graph has only self-loops (what the method does on data that has no dialogues).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

#: Floor of a Gaussian expert's variance (log-variance clamp), so a product of experts stays finite.
LOGVAR_MIN, LOGVAR_MAX = -8.0, 8.0


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, d_out))


# -- DJVAE ---------------------------------------------------------------------------------------------


def product_of_experts(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint Gaussian of ``M`` experts ``[M, B, Z]`` and a N(0, I) prior expert: precisions add,
    ``T = 1 + Σ_m 1/σ²_m``, ``μ = (Σ_m μ_m/σ²_m) / T``, ``σ² = 1/T``. Returns ``(μ, log σ²)``.

    >>> mu, logvar = product_of_experts(torch.ones(1, 1, 1), torch.zeros(1, 1, 1))   # one expert N(1, 1)
    >>> float(mu), float(logvar.exp())                                               # prior N(0, 1) halves both
    (0.5, 0.5)
    """
    precision = torch.exp(-logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
    total = 1.0 + precision.sum(dim=0)
    return (mu * precision).sum(dim=0) / total, -torch.log(total)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(μ, σ²) ‖ N(0, I))``, averaged over the latent dimensions ``[B]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=1)


class DJVAE(nn.Module):
    """Deep joint VAE fusion: ``(μ_m, log σ²_m) = E_m(x_m)``, the joint posterior by :func:`product_of_experts`,
    ``x̂_m = D_m(z)``; ``L_vae = Σ_m mean (x̂_m − sg(x_m))² + β_KL · KL``. The fused feature is ``z``
    (sampled in training) and ``μ_joint`` at evaluation."""

    def __init__(self, dims: dict[str, int], latent: int, hidden: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: mlp(d, hidden, 2 * latent) for m, d in dims.items()})
        self.decoders = nn.ModuleDict({m: mlp(latent, hidden, d) for m, d in dims.items()})

    def forward(self, x: dict[str, torch.Tensor], beta_kl: float, gen: torch.Generator | None = None,
                rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z [B, Z], L_vae per sample [B])``; ``z`` is sampled with ``gen`` (training), ``μ_joint`` without.
        ``rows``: ``L_vae`` of the first ``rows`` samples only (the same values; the decoders skip the rest)."""
        stats = [self.encoders[m](x[m]).chunk(2, dim=1) for m in self.encoders]
        mu, logvar = product_of_experts(torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats]))
        if gen is None:
            z = mu
        else:
            noise = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
            z = mu + noise * (0.5 * logvar).exp()
        k = len(z) if rows is None else rows
        recon = sum((self.decoders[m](z[:k]) - x[m][:k].detach()).pow(2).mean(dim=1) for m in self.decoders)
        return z, recon + beta_kl * kl_standard_normal(mu[:k], logvar[:k])


class Concat(nn.Module):
    """DJVAE switched off: the modalities' features side by side, projected to the latent width."""

    def __init__(self, dims: dict[str, int], latent: int) -> None:
        super().__init__()
        self.order = list(dims)
        self.proj = nn.Linear(sum(dims.values()), latent)

    def forward(self, x: dict[str, torch.Tensor], beta_kl: float, gen: torch.Generator | None = None,
                rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.proj(torch.cat([x[m] for m in self.order], dim=1))
        return z, z.new_zeros(len(z) if rows is None else rows)


# -- dialogue order --------------------------------------------------------------------------------------


def dialogue_order(dialogue: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows grouped by dialogue in turn order: ``(order, starts, lengths)``; ``order`` sorts the rows by
    (dialogue, position), dialogue ``k`` is ``order[starts[k]:starts[k]+lengths[k]]``. A dialogue code of -1
    (unknown) makes each such row a dialogue of its own."""
    n = len(dialogue)
    own = torch.arange(n, device=dialogue.device)
    key_d = torch.where(dialogue >= 0, dialogue, dialogue.max().clamp(min=0) + 1 + own) if n else dialogue
    key = key_d * (int(position.max().clamp(min=0)) + 2 if n else 1) + position.clamp(min=-1) + 1
    order = torch.argsort(key, stable=True)
    _, lengths = torch.unique_consecutive(key_d[order], return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    return order, starts, lengths


class DialogueLSTM(nn.Module):
    """A bidirectional LSTM over each dialogue's utterances in turn order; ``h_i`` = both directions' states."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, z: torch.Tensor, dialogue: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        order, starts, lengths = dialogue_order(dialogue, position)
        n_dial, longest = len(lengths), int(lengths.max()) if len(lengths) else 0
        slot = torch.arange(len(z), device=z.device) - torch.repeat_interleave(starts, lengths)
        which = torch.repeat_interleave(torch.arange(n_dial, device=z.device), lengths)
        padded = z.new_zeros(n_dial, longest, z.shape[1])
        padded[which, slot] = z[order]
        packed = nn.utils.rnn.pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=longest)
        h = z.new_empty(len(z), self.out_dim)
        h[order] = out[which, slot]
        return h


# -- MGNN ------------------------------------------------------------------------------------------------


def window_adjacency(dialogue: torch.Tensor, position: torch.Tensor, w_past: int, w_fut: int) -> torch.Tensor:
    """``A [B, B]`` with ``A[i, j] = 1`` when ``j`` is ``i`` itself or, in the same (known) dialogue, one of the
    ``w_past`` utterances before or the ``w_fut`` after it: the messages node ``i`` receives. The dense
    reference of :func:`window_edges` (what the method computes, O(B²) memory)."""
    same = (dialogue[:, None] == dialogue[None, :]) & (dialogue[:, None] >= 0)
    lag = position[:, None] - position[None, :]  # > 0: j is in i's past
    a = same & (((lag > 0) & (lag <= w_past)) | ((lag < 0) & (-lag <= w_fut)))
    return (a | torch.eye(len(dialogue), dtype=torch.bool, device=dialogue.device)).float()


@dataclass(frozen=True)
class WindowGraph:
    """The nonzeros of :func:`window_adjacency` as an edge list: node ``dst[e]`` receives from ``src[e]``
    (``A[dst, src] = 1``); ``n`` nodes. A batch's graph is block-diagonal by dialogue (every dialogue clone is
    a dialogue of its own), so it has at most ``Σ_d L_d²`` edges instead of ``B²`` dense entries."""

    dst: torch.Tensor
    src: torch.Tensor
    n: int

    def without_messages_from(self, nodes: torch.Tensor) -> WindowGraph:
        """``nodes`` send no messages but keep their self-loop (the masked pass: ``A[:, M] = 0, A[M, M] = 1``)."""
        silent = torch.zeros(self.n, dtype=torch.bool, device=self.src.device)
        silent[nodes] = True
        keep = ~silent[self.src] | (self.src == self.dst)
        return WindowGraph(self.dst[keep], self.src[keep], self.n)

    def dense(self) -> torch.Tensor:
        a = torch.zeros(self.n, self.n, device=self.src.device)
        a[self.dst, self.src] = 1.0
        return a


def window_edges(dialogue: torch.Tensor, position: torch.Tensor, w_past: int, w_fut: int) -> WindowGraph:
    """:func:`window_adjacency` without the dense matrix: every ordered pair of rows within each dialogue
    (one vectorised gather over :func:`dialogue_order`'s groups), kept when it is a self-loop or within the
    windows. Rows of unknown dialogue (-1) are dialogues of one row: only their self-loop."""
    n = len(dialogue)
    device = dialogue.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return WindowGraph(empty, empty, 0)
    order, starts, lengths = dialogue_order(dialogue, position)
    pairs = lengths * lengths
    first = torch.cumsum(pairs, 0) - pairs
    group = torch.repeat_interleave(torch.arange(len(lengths), device=device), pairs)
    k = torch.arange(int(pairs.sum()), device=device) - first[group]
    size = lengths[group]
    dst = order[starts[group] + torch.div(k, size, rounding_mode="floor")]
    src = order[starts[group] + k % size]
    lag = position[dst] - position[src]  # > 0: src is in dst's past
    keep = (dst == src) | ((dialogue[dst] >= 0) & (((lag > 0) & (lag <= w_past)) | ((lag < 0) & (-lag <= w_fut))))
    return WindowGraph(dst[keep], src[keep], n)


def normalise(a: torch.Tensor) -> torch.Tensor:
    """Symmetric GCN normalisation ``D^-1/2 A D^-1/2`` (row degrees; self-loops are in ``A``)."""
    d = a.sum(dim=1).clamp(min=1.0).rsqrt()
    return d[:, None] * a * d[None, :]


def propagator(a: torch.Tensor | WindowGraph) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> Â x`` with ``Â = D^-1/2 A D^-1/2`` (:func:`normalise`): a dense matrix product for a dense ``A``,
    a sparse one (COO, the edges' weights) for a :class:`WindowGraph`: the same sums, O(edges)."""
    if isinstance(a, torch.Tensor):
        a_hat = normalise(a)
        return lambda x: a_hat @ x
    device = a.dst.device
    degree = torch.zeros(a.n, device=device).index_add_(0, a.dst, torch.ones(len(a.dst), device=device))
    r = degree.clamp(min=1.0).rsqrt()
    with warnings.catch_warnings():  # torch warns once that invariant checks are off; the indices are in range
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        a_hat = torch.sparse_coo_tensor(torch.stack([a.dst, a.src]), r[a.dst] * r[a.src], (a.n, a.n)).coalesce()
    return lambda x: torch.sparse.mm(a_hat.to(x.dtype), x)


class GCN(nn.Module):
    """Two graph-convolution layers ``H' = Â ReLU(Â H W_1) W_2`` (Kipf & Welling) on a given adjacency (dense
    ``A`` or a :class:`WindowGraph`)."""

    def __init__(self, d_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.out_dim = hidden

    def forward(self, h: torch.Tensor, a: torch.Tensor | WindowGraph, gen: torch.Generator | None = None
                ) -> torch.Tensor:
        """Dropout between the layers only with ``gen`` (training; drawn from it, so a loss is reproducible)."""
        a_hat = propagator(a)
        x = F.relu(a_hat(self.w1(h)))
        if gen is not None and self.dropout > 0:
            keep = torch.rand(x.shape, generator=gen, device=x.device) >= self.dropout
            x = x * keep.to(x.dtype) / (1.0 - self.dropout)
        return a_hat(self.w2(x))


def scaled_cosine_error(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """GraphMAE's scaled cosine error per row ``(1 − cos(pred, target))^alpha``."""
    return (1.0 - F.cosine_similarity(pred, target, dim=1)).clamp(min=0).pow(alpha)


# -- bidirectional GAN --------------------------------------------------------------------------------------


class ClassGenerator(nn.Module):
    """``G(x, c') = x + g([x; onehot(c')])``: maps a feature vector to class ``c'``. The residual form with a
    zero-initialised last layer starts as the identity map, which the identity loss asks of ``G(x, c)``."""

    def __init__(self, dim: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.net = mlp(dim + n_classes, hidden, dim)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.net(torch.cat([x, F.one_hot(c, self.n_classes).to(x.dtype)], dim=1))


class ClassCritic(nn.Module):
    """``D(x, c)``: a class-conditional LSGAN discriminator score ``[B]`` (1 = real, 0 = generated)."""

    def __init__(self, dim: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.net = mlp(dim + n_classes, hidden, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, F.one_hot(c, self.n_classes).to(x.dtype)], dim=1)).squeeze(1)


def frozen(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with its weights detached: gradients reach the arguments, not the module (the
    generator's adversarial and classification terms; one optimiser trains both players)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return functional_call(module, params, args)


def lsgan(score: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss per row: ``(D − 1)²`` for the real label, ``D²`` for the generated one."""
    return (score - 1.0).pow(2) if real else score.pow(2)


def samme_alpha(error: torch.Tensor, n_classes: int) -> torch.Tensor:
    """SAMME's head weight ``log((1 − err)/err) + log(|C| − 1)`` (err clamped away from 0 and 1)."""
    err = error.clamp(1e-6, 1 - 1e-6)
    return torch.log((1 - err) / err) + math.log(max(n_classes - 1, 1))
