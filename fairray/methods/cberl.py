"""CBERL — class-boundary-enhanced representation learning for imbalanced emotion recognition in
conversations (METHODS §3.12; Meng et al. 2023, no released code: everything below the component level is
[R], a fairray design decision).

The training module (:class:`CBERLNets`) chains, per batch of whole dialogues (sampler ``dialogues``)::

    e_m = trunk_m(inputs)                           the trial's model plugin: each fusion encoder is a
                                                    modality (frozen MiniLM features: ``mlp`` depth 0)
    z, L_vae = DJVAE({e_m})                         product of experts with a N(0, I) prior (``djvae``)
    h = BiLSTM(z in dialogue order)                 (``context_lstm``)
    g = GCN_2(h, A_window)                          unmasked pass: the classifier reads it
    g' = GCN_2(h with ρ·n nodes -> mask token,      masked pass (training only, ``masking_rate`` ρ > 0),
               their outgoing messages dropped)     shared weights; L_rec = SCE_2(dec(g'_M), sg(h_M))
    logits_k = head_k([h; g]), k = 1..M             AdaBoost (SAMME) heads, each with the focal loss

    L = mean_k L_focal(head_k | SAMME weights) + λ_rec L_rec + mean L_vae + L_gan

**Augmentation** (``augment_ratio`` r > 0; training batches only): a class-conditional generator
``G(x, c')`` moves a real utterance's features ``x = [sg(e_m)]_m`` to a minority class ``c'``, a reverse
generator ``F`` maps back, class-conditional LSGAN critics judge both directions, and an auxiliary
classifier ``K`` trained on real rows asks ``G(x, c')`` to be recognised as ``c'``; identity terms ask
``G(x, c) = x``. Each batch draws ``(r·n_max − n_c)⁺ · B / N`` synthetic rows of class ``c`` in
expectation (over an epoch: every class reaches ``r·n_max``). After ``gan_warmup_epochs`` each synthetic
utterance replaces its source in a clone of the source's dialogue (same positions, a new dialogue code),
and only that utterance of the clone enters the classification loss. The synthetic features are detached:
the classifier does not train the generator.

Departures from the paper, for the one loop: the GAN is trained jointly with the classifier by the
loop's one optimiser (the critics and ``K`` see detached fakes; the generators see the critics and ``K``
through :func:`~fairray.methods._cberl_nets.frozen` weights), and synthetic rows are generated afresh per
batch instead of once into a bank. AdaBoost is *online SAMME within each batch*: head ``k`` is trained
under the sample weights left by heads ``1..k-1`` on the batch (``w ← w·exp(α_k·1[wrong])``), and the
vote weights are an EMA of the per-batch ``α_k`` (committed in :meth:`CBERL.on_step`, kept in the
module's ``head_alpha`` buffer so checkpoints carry them); the prediction is the ``α``-weighted mean of
the heads' log-probabilities (a soft vote, differentiable for the dev loss). The class-balanced weights
of the focal loss use the augmented counts ``max(n_c, r·n_max)`` (METHODS §3.1 pitfall: recompute after
resampling).

Without dialogue context (a batch from data without dialogues) every utterance is its own dialogue: the
Bi-LSTM reads one step, the graph has only self-loops (``method/context`` logs 0), and a synthetic
utterance is a dialogue of its own. GAN augmentation with ``clone_dialogues`` on data without dialogue
ids is refused when the spec is loaded (:meth:`CBERL.check_dataset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairray.errors import ConfigError
from fairray.inputs import DialogueContext
from fairray.methods._base import METHODS, Batch, LossOutput, SamplerInput, TrainContext
from fairray.methods._cberl_nets import (
    DJVAE,
    GCN,
    ClassCritic,
    ClassGenerator,
    Concat,
    DialogueLSTM,
    frozen,
    lsgan,
    mlp,
    samme_alpha,
    scaled_cosine_error,
    window_adjacency,
    window_edges,
)
from fairray.methods.erm import BaseLoss, BaseLossMethod, BaseLossParams

#: Scaled cosine error exponent of the masked reconstruction (GraphMAE's alpha).
SCE_ALPHA = 2.0
#: Base seed of the per-step random stream of the loss (seed = RNG_SEED + optimiser step).
RNG_SEED = 0x0CBE
#: Floor of a head's vote weight, so a head worse than chance gets (almost) no vote instead of a negative one.
VOTE_FLOOR = 1e-3


@dataclass(frozen=True)
class CBERLParams(BaseLossParams):
    #: Base loss of every head: class-balanced focal loss (METHODS §3.1); ``gamma: 0`` is the ablation "w/o focal".
    loss: Literal["ce", "cb_ce", "focal"] = "focal"
    gamma: float = field(default=2.0, metadata={"ge": 0})
    # -- (1) bidirectional GAN augmentation
    #: Augmentation ratio r: minority classes are topped up to ``r · n_max`` (0 = no GAN: "w/o augmentation").
    augment_ratio: float = field(default=1.0, metadata={"ge": 0, "le": 1})
    #: Insert each synthetic utterance into a clone of its source dialogue (False: a dialogue of its own).
    clone_dialogues: bool = True
    #: Epochs the GAN trains before its samples enter the classification loss.
    gan_warmup_epochs: int = field(default=1, metadata={"ge": 0})
    lambda_cyc: float = field(default=10.0, metadata={"ge": 0})
    lambda_id: float = field(default=5.0, metadata={"ge": 0})
    lambda_cls: float = field(default=1.0, metadata={"ge": 0})
    gan_hidden: int = field(default=256, metadata={"ge": 1})
    # -- (2) DJVAE fusion
    #: Product-of-experts VAE fusion; False = concatenation + linear projection ("w/o DJVAE").
    djvae: bool = True
    beta_kl: float = field(default=1.0, metadata={"ge": 0})
    latent: int = field(default=128, metadata={"ge": 1})
    # -- (3) Bi-LSTM over dialogue order
    context_lstm: bool = True
    lstm_hidden: int = field(default=64, metadata={"ge": 1})
    # -- (4) MGNN
    #: Masking rate ρ: the fraction of a batch's nodes masked in the reconstruction pass (0 = "w/o masking").
    masking_rate: float = field(default=0.2, metadata={"ge": 0, "lt": 1})
    lambda_rec: float = field(default=0.5, metadata={"ge": 0})
    w_past: int = field(default=10, metadata={"ge": 0})
    w_fut: int = field(default=10, metadata={"ge": 0})
    gcn_hidden: int = field(default=128, metadata={"ge": 1})
    dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
    # -- (5) AdaBoost heads
    #: SAMME heads M (1 = a single focal-loss classifier).
    heads: int = field(default=5, metadata={"ge": 1})
    #: EMA decay of the heads' vote weights across optimiser steps.
    alpha_ema: float = field(default=0.9, metadata={"ge": 0, "lt": 1})


@dataclass(frozen=True)
class CBERLOutput:
    """Forward output of the training module: each modality's features of the batch's rows and where the
    rows sit in their dialogues; :meth:`CBERL.loss` runs the rest of the pipeline through ``nets``."""

    nets: CBERLNets
    features: dict[str, torch.Tensor]
    dialogue: torch.Tensor
    position: torch.Tensor
    has_context: bool


@dataclass(frozen=True)
class GraphPass:
    """Per-head logits ``[M, B, C]``, per-row ``L_vae`` ``[B]``, the masked reconstruction error (mean) and
    the number of masked nodes."""

    logits: torch.Tensor
    vae: torch.Tensor
    rec: torch.Tensor
    masked: int


def _trunks(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """The modalities of the trial's model: a fusion model's encoders by label, else the model itself
    (``input``); each loses its classifier (the encoder protocol of :mod:`fairray.models.fusion`)."""
    parts = dict(model.encoders) if hasattr(model, "encoders") and hasattr(model, "embeddings") else {"input": model}
    for label, part in parts.items():
        missing = [m for m in ("embed", "embed_dim", "drop_classifier") if not hasattr(part, m)]
        if missing:
            raise ConfigError(f"cberl: model part {label!r} ({type(part).__name__}) gives no embedding (lacks "
                              f"{', '.join(missing)}); use a model that implements the encoder protocol of "
                              "fairray.models.fusion (mlp, seq_pool, text, fusion, ...)")
        part.drop_classifier()
    return parts, {label: int(part.embed_dim) for label, part in parts.items()}


class CBERLNets(nn.Module):
    """Every network of CBERL in one module; ``reads_context``: the loop passes the batch's dialogue context."""

    reads_context = True
    #: The window graph as a dense ``[B, B]`` matrix (the reference path, O(B²): what the first version ran;
    #: ``benchmarks/cberl_cost.py --dense`` times it) instead of an edge list (the same sums, O(edges)).
    dense_graph = False

    def __init__(self, model: nn.Module, params: CBERLParams, n_classes: int) -> None:
        super().__init__()
        p = self.params = params
        trunks, dims = _trunks(model)
        self.trunks = nn.ModuleDict(trunks)
        self.dims = dims
        self.fuse = DJVAE(dims, p.latent, p.gan_hidden) if p.djvae else Concat(dims, p.latent)
        self.lstm = DialogueLSTM(p.latent, p.lstm_hidden) if p.context_lstm else None
        width = self.lstm.out_dim if self.lstm is not None else p.latent
        self.gcn = GCN(width, p.gcn_hidden, p.dropout)
        self.mask_token = nn.Parameter(torch.zeros(width)) if p.masking_rate > 0 else None
        self.decoder = nn.Linear(p.gcn_hidden, width) if p.masking_rate > 0 else None
        # the heads read [h_i; g_i]: the node's own context feature beside its graph feature (two GCN layers
        # over windows of up to 21 utterances alone smooth a node towards its dialogue's mean)
        self.heads = nn.ModuleList(nn.Linear(width + p.gcn_hidden, n_classes) for _ in range(p.heads))
        self.register_buffer("head_alpha", torch.ones(p.heads))
        if p.augment_ratio > 0:
            d = sum(dims.values())
            self.gan = nn.ModuleDict({
                "G": ClassGenerator(d, n_classes, p.gan_hidden), "F": ClassGenerator(d, n_classes, p.gan_hidden),
                "D_G": ClassCritic(d, n_classes, p.gan_hidden), "D_F": ClassCritic(d, n_classes, p.gan_hidden),
                "K": mlp(d, p.gan_hidden, n_classes)})
        else:
            self.gan = None

    def features(self, inputs) -> dict[str, torch.Tensor]:
        return {label: trunk.embed(inputs) for label, trunk in self.trunks.items()}

    def forward(self, inputs, context: DialogueContext | None = None) -> CBERLOutput:
        e = self.features(inputs)
        n = len(next(iter(e.values())))
        if context is None:
            some = next(iter(e.values()))
            dialogue = torch.full((n,), -1, dtype=torch.long, device=some.device)
            return CBERLOutput(self, e, dialogue, torch.zeros_like(dialogue), False)
        return CBERLOutput(self, e, context.dialogue, context.position, True)

    def graph_pass(self, e: dict[str, torch.Tensor], dialogue: torch.Tensor, position: torch.Tensor,
                   gen: torch.Generator | None = None, scored: torch.Tensor | None = None,
                   vae_rows: int | None = None) -> GraphPass:
        """DJVAE -> Bi-LSTM -> unmasked GCN -> heads. With ``gen`` (training): z sampled, dropout, and the
        masked pass; without it (evaluation) the pass is deterministic and never masks. ``scored`` (row
        indices): the heads read only those rows (``logits [M, len(scored), C]``: the rows of the loss, not a
        clone's copies of real rows); ``vae_rows``: ``L_vae`` of the first rows only (the real ones). Both
        leave every draw of ``gen`` as it is, so the loss is the same as with every row."""
        p = self.params
        z, vae = self.fuse(e, p.beta_kl, gen, rows=vae_rows)
        h = self.lstm(z, dialogue, position) if self.lstm is not None else z
        a = (window_adjacency if self.dense_graph else window_edges)(dialogue, position, p.w_past, p.w_fut)
        g = torch.cat([h, self.gcn(h, a, gen)], dim=1)
        g = g if scored is None else g[scored]
        logits = torch.stack([head(g) for head in self.heads])
        rec, k = h.new_zeros(()), 0
        if gen is not None and p.masking_rate > 0:
            k = round(p.masking_rate * len(h))
            if k > 0:
                masked = torch.randperm(len(h), generator=gen, device=h.device)[:k]
                h_m = h.clone()
                h_m[masked] = self.mask_token.to(h.dtype)
                if self.dense_graph:
                    a_m = a.clone()
                    a_m[:, masked] = 0.0  # masked nodes send no messages ...
                    a_m[masked, masked] = 1.0  # ... but keep their self-loop (their own mask token)
                else:
                    a_m = a.without_messages_from(masked)  # the same, on the edge list
                g_m = self.gcn(h_m, a_m, gen)
                rec = scaled_cosine_error(self.decoder(g_m[masked]), h[masked].detach(), SCE_ALPHA).mean()
        return GraphPass(logits, vae, rec, k)

    def vote(self, head_logits: torch.Tensor) -> torch.Tensor:
        """The heads' ``head_alpha``-weighted mean of log-probabilities ``[B, C]`` (SAMME's vote, soft)."""
        w = self.head_alpha.clamp(min=VOTE_FLOOR).to(head_logits.dtype)
        return (w[:, None, None] * F.log_softmax(head_logits, dim=2)).sum(dim=0) / w.sum()


class CBERLInference(nn.Module):
    """Inputs (and dialogue context) -> class logits: no masking, ``μ_joint``, the heads' vote; shares the
    training module's weights. In eval mode (the loop's ``infer``) its output does not depend on ρ or r."""

    reads_context = True

    def __init__(self, nets: CBERLNets) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, inputs, context: DialogueContext | None = None) -> torch.Tensor:
        out = self.nets(inputs, context)
        return self.nets.vote(self.nets.graph_pass(out.features, out.dialogue, out.position).logits)


@dataclass(frozen=True)
class Synthetic:
    """Synthetic rows of one batch: target class, source row, features ``[K, D]`` (detached)."""

    label: torch.Tensor
    source: torch.Tensor
    x: torch.Tensor


@dataclass(frozen=True)
class StepUpdate:
    """What one (micro-)batch commits: the per-batch SAMME weights of the heads."""

    alpha: torch.Tensor


def _labels(target: torch.Tensor) -> torch.Tensor:
    return target if target.dim() == 1 else target.argmax(dim=1)


@METHODS.register("cberl")
class CBERL(BaseLossMethod):
    """CBERL on whole dialogues (sampler ``dialogues``); the inference net is :class:`CBERLInference`."""

    Params = CBERLParams
    requires = "nothing"
    sampler = "dialogues"
    summary = ("CBERL: class-conditional bidirectional GAN augmentation, DJVAE fusion, Bi-LSTM, masked MGNN, "
               "focal AdaBoost heads (METHODS 3.12)")
    batch_statistics = False  # means of per-row terms; the SAMME weights are per micro-batch

    def __init__(self, params: CBERLParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        counts = np.asarray(ctx.class_counts, dtype=np.float64)
        target = params.augment_ratio * counts.max()
        #: expected synthetic rows of each class per training row drawn: (r·n_max − n_c)⁺ / N
        self.quota = torch.as_tensor(np.maximum(target - counts, 0.0) / max(ctx.n_train, 1), dtype=torch.float32)
        self.step = 0
        self.warmup_steps = 0  # known from on_train_start; before it, synthetic rows enter at once
        self.nets: CBERLNets | None = None

    def base_loss(self, params: CBERLParams, ctx: TrainContext) -> BaseLoss:
        """Class-balanced weights from the augmented counts ``max(n_c, r·n_max)``."""
        counts = np.asarray(ctx.class_counts, dtype=np.float64)
        augmented = np.maximum(counts, params.augment_ratio * counts.max()).round().astype(np.int64)
        return BaseLoss(params, dataclasses.replace(ctx, class_counts=augmented, class_target_counts=None,
                                                    n_train=int(augmented.sum())))

    @classmethod
    def check_dataset(cls, params: CBERLParams, dataset: Any, dialogues: bool | None = None) -> str | None:
        """GAN augmentation with dialogue cloning needs dialogue ids: refuse data known to have none."""
        if params.augment_ratio <= 0 or not params.clone_dialogues or dialogues is not False:
            return None
        where = (f"corpus {', '.join(repr(c.adapter) for c in dataset.corpora)}" if dataset.name == "corpora"
                 else f"dataset {dataset.name!r}")
        return (f"augment_ratio {params.augment_ratio:g} with clone_dialogues: true inserts synthetic utterances "
                f"into clones of their dialogues, but {where} has no dialogue ids; use a dialogue corpus (meld, "
                "meld_st, iemocap), set clone_dialogues: false, or augment_ratio: 0")

    def build_model(self, build: Callable[[int], nn.Module]) -> CBERLNets:
        self.nets = CBERLNets(build(self.ctx.n_classes), self.params, self.ctx.n_classes)
        return self.nets

    def inference_model(self, train_module: CBERLNets) -> nn.Module:
        return CBERLInference(train_module)

    def batches(self, inp: SamplerInput, batch_size: int, rng: np.random.Generator, epoch: int,
                sampler: str) -> Iterator[np.ndarray]:
        if inp.dialogue is None and self.params.augment_ratio > 0 and self.params.clone_dialogues:
            raise ConfigError("method cberl: augment_ratio > 0 with clone_dialogues: true needs dialogue ids, and "
                              "this dataset's rows have none; set method.clone_dialogues: false or augment_ratio: 0")
        return super().batches(inp, batch_size, rng, epoch, sampler)

    def on_train_start(self, steps_per_epoch: int) -> None:
        self.warmup_steps = self.params.gan_warmup_epochs * steps_per_epoch

    # -- the GAN ---------------------------------------------------------------------------------------

    def _draw(self, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Target classes and source rows of this batch's synthetic rows: ``quota_c · B`` per class in
        expectation (stochastic rounding), sources drawn among the batch's rows of other classes."""
        device = y.device
        expected = self.quota.to(device) * len(y)
        count = expected.floor() + (torch.rand(len(expected), generator=gen, device=device) < expected.frac()).float()
        labels, sources = [], []
        for c, k in enumerate(count.long().tolist()):
            pool = torch.nonzero(y != c).flatten()
            if k == 0 or len(pool) == 0:
                continue
            labels.append(torch.full((k,), c, dtype=torch.long, device=device))
            sources.append(pool[torch.randint(len(pool), (k,), generator=gen, device=device)])
        if not labels:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        return torch.cat(labels), torch.cat(sources)

    def gan_loss(self, nets: CBERLNets, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, float], Synthetic]:
        """The bidirectional GAN's losses on real features ``x`` (detached) with labels ``y``, and this
        batch's synthetic rows (detached)."""
        p, gan = self.params, nets.gan
        g_net, f_net, d_g, d_f, k_net = gan["G"], gan["F"], gan["D_G"], gan["D_F"], gan["K"]
        l_k = F.cross_entropy(k_net(x), y)
        l_id = self.identity_loss(g_net, x, y) + self.identity_loss(f_net, x, y)
        label, source = self._draw(y, gen)
        logs = {"gan_identity": float(l_id.detach()), "gan_aux_ce": float(l_k.detach()), "synthetic": float(len(label))}
        if len(label) == 0:
            return l_k + p.lambda_id * l_id, logs, Synthetic(label, source, x[:0])
        x_s, y_s = x[source], y[source]
        fake = g_net(x_s, label)
        back = f_net(fake, y_s)
        l_d = (lsgan(d_g(x, y), True).mean() + lsgan(d_g(fake.detach(), label), False).mean()
               + lsgan(d_f(x, y), True).mean() + lsgan(d_f(back.detach(), y_s), False).mean())
        l_adv = lsgan(frozen(d_g, fake, label), True).mean() + lsgan(frozen(d_f, back, y_s), True).mean()
        l_cyc = (back - x_s).abs().mean()
        l_cls = F.cross_entropy(frozen(k_net, fake), label)
        loss = l_d + l_k + l_adv + p.lambda_cyc * l_cyc + p.lambda_id * l_id + p.lambda_cls * l_cls
        logs.update({"gan_d": float(l_d.detach()), "gan_adv": float(l_adv.detach()), "gan_cycle": float(l_cyc.detach()),
                     "gan_cls": float(l_cls.detach())})
        logs.update(self.variance_logs(fake.detach(), label, x, y))
        return loss, logs, Synthetic(label, source, fake.detach())

    @staticmethod
    def identity_loss(generator: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``mean ‖G(x, c) − x‖₁`` over rows already in their target class ``c = y``."""
        return (generator(x, y) - x).abs().mean()

    def variance_logs(self, fake: torch.Tensor, label: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                      ) -> dict[str, float]:
        """GAN collapse watch: per target class, mean per-feature variance of the synthetic rows over that of
        the batch's real rows of the class (``gan_var_ratio/<class>``; near 0 = near-duplicates)."""
        out = {}
        for c in torch.unique(label).tolist():
            fake_c, real_c = fake[label == c], x[y == c]
            if len(fake_c) >= 2 and len(real_c) >= 2:
                real_var = float(real_c.var(dim=0).mean())
                if real_var > 0:
                    out[f"gan_var_ratio/{self.ctx.classes[c]}"] = float(fake_c.var(dim=0).mean()) / real_var
        return out

    # -- the objective ---------------------------------------------------------------------------------

    def loss(self, outputs: CBERLOutput, batch: Batch) -> LossOutput:
        nets, p = outputs.nets, self.params
        e, dialogue, position = outputs.features, outputs.dialogue, outputs.position
        target = batch.loss_target
        y = _labels(target)
        n_real = len(y)
        keep = torch.ones(n_real, dtype=torch.bool, device=y.device)
        logs: dict[str, float] = {"context": float(outputs.has_context)}
        gen = self.generator(y.device)
        total = e[next(iter(e))].new_zeros(())
        if nets.gan is not None:
            order = list(nets.dims)
            x = torch.cat([e[m].detach() for m in order], dim=1)
            l_gan, gan_logs, synth = self.gan_loss(nets, x, y, gen)
            total = total + l_gan
            logs.update(gan_logs)
            if len(synth.label) and self.step >= self.warmup_steps:
                e, dialogue, position, keep, target = self._insert(e, dialogue, position, keep, target, synth, order)
                logs["synthetic_used"] = float(len(synth.label))
        rows = torch.nonzero(keep).flatten()
        graph = nets.graph_pass(e, dialogue, position, gen, scored=rows, vae_rows=n_real)
        cls, alpha = self.boosted(graph.logits, target[rows])
        total = total + cls + p.lambda_rec * graph.rec + graph.vae.mean()
        logs.update({"focal": float(cls.detach()), "rec": float(graph.rec.detach()), "masked": float(graph.masked),
                     "vae": float(graph.vae.detach().mean())})
        logs.update({f"alpha/{k}": float(a) for k, a in enumerate(alpha)} if p.heads > 1 else {})
        return LossOutput(total, logs, update=StepUpdate(alpha))

    def generator(self, device: torch.device) -> torch.Generator:
        """The random stream of one optimiser step's loss (draws, mask, z noise, dropout): seeded by the step,
        so ``loss()`` is a function of the method's state and the batch (the Method contract)."""
        seed = (torch.initial_seed() * 1_000_003 + RNG_SEED + self.step) % 2**63  # the loop seeds per trial and epoch
        return torch.Generator(device=device).manual_seed(seed)

    def _insert(self, e, dialogue, position, keep, target, synth: Synthetic, order: list[str]):
        """Append, per synthetic row, a clone of its source's dialogue (the batch's rows of it) with the source
        replaced by the synthetic features; only the synthetic row is kept for the loss."""
        n = len(dialogue)
        k = len(synth.label)
        src = synth.source
        if self.params.clone_dialogues:
            member = (dialogue[None, :] == dialogue[src][:, None]) & (dialogue[src][:, None] >= 0)
        else:
            member = torch.zeros(k, n, dtype=torch.bool, device=dialogue.device)
        member[torch.arange(k, device=src.device), src] = True
        which, row = torch.nonzero(member, as_tuple=True)  # clone `which` holds a copy of row `row`
        is_synth = row == src[which]
        base = int(dialogue.max().clamp(min=-1)) + 1
        split = dict(zip(order, synth.x.split([e[m].shape[1] for m in order], dim=1), strict=True))
        new_e = {}
        for m in order:
            copy = e[m][row].clone()
            copy[is_synth] = split[m][which[is_synth]].to(copy.dtype)
            new_e[m] = torch.cat([e[m], copy])
        syn_target = synth.label[which] if target.dim() == 1 else F.one_hot(synth.label[which], target.shape[1]).to(target.dtype)
        return (new_e, torch.cat([dialogue, base + which]), torch.cat([position, position[row]]),
                torch.cat([keep, is_synth]), torch.cat([target, syn_target]))

    def boosted(self, head_logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online SAMME within the batch: mean over heads of the base loss under the weights the previous heads
        left (``w ← w·exp(α_k·1[wrong_k])``, renormalised to mean 1), and the heads' ``α_k`` (detached)."""
        n = head_logits.shape[1]
        y = _labels(target)
        w = torch.ones(n, device=head_logits.device)
        losses, alphas = [], []
        for logits in head_logits:
            losses.append((w * self.base(logits, target)).mean())
            wrong = (logits.detach().argmax(dim=1) != y).float()
            alpha = samme_alpha((w * wrong).sum() / w.sum(), self.ctx.n_classes)
            w = w * torch.exp(alpha * wrong)
            w = w * n / w.sum()
            alphas.append(alpha)
        return torch.stack(losses).mean(), torch.stack(alphas).detach()

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        """Count the optimiser step and move the heads' vote weights towards the step's SAMME weights."""
        self.step += 1
        if self.nets is None or not outputs:
            return
        alpha = torch.stack([out.update.alpha for out in outputs]).mean(dim=0).to(self.nets.head_alpha.device)
        with torch.no_grad():
            self.nets.head_alpha.mul_(self.params.alpha_ema).add_((1 - self.params.alpha_ema) * alpha)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
