"""GEAR — general debiasing with inverse-probability weights (METHODS §3.11; Sun et al., ACM MM 2023).

Per modality ``m`` (an encoder of the trial's ``fusion`` or ``modalities`` model, or the trial's single model) a
robust encoder ``E_r^m`` and a biased encoder ``E_b^m`` of the same type give ``h_r^m, h_b^m``. The encoder type
follows the input: with ``model: modalities`` a ``sequence`` input (MOSI/MOSEI's aligned GloVe / COVAREP / FACET
frames, ``sequences: true``) goes through an LSTM over its valid frames (``lstm``: METHODS' "1-layer LSTM over
frame features", the released code's ``AuViSubNet``), a ``vector`` input through an MLP (``mlp``), so each
modality gets its own robust and biased LSTM or MLP (a departure from the released code, where METHODS is silent:
text is an LSTM over GloVe vectors, not BERT over the transcript, which MulT's pickles do not carry). An encoder's
learning rate (the model's ``lr_scales``, e.g. the released MOSI config's audio / video at 5 x 1e-3) marks its
module, so both copies train at it, as the released optimisers group ``model_c`` and ``model_b`` of a modality;
the heads, projections and fusion train at ``train.lr`` (the released ``learning_rate_other``)::

    B^m(h)  = biased head on [sg(h_r^m); h_b^m]          -> class logits, trained with GCE_q (bias learning)
    u^m     = F^m([h_r^m; sg(h_b^m)])                    -> R^d, the robust projection
    ŷ       = MLP(concat(Transformer({u^m})))             -> class logits (the prediction; the IFL_ES layout)

With detached per-sample CE losses ``b_i^m`` of the biased heads and ``r_i`` of ``ŷ``, the inverse-probability
weight is ``W_i = b_i / (b_i + r_i + 1e-8)`` with ``b_i = min_m b_i^m`` (``weight: min``) or their mean
(``avg``): samples the biased heads already fit (a strong shortcut) get a small weight::

    L_rob  = mean_i W_i · l(ŷ_i, t_i)                      (l: the base loss of METHODS §3.1)
    L_bias = λ_dis Σ_m mean_i GCE_q(B^m_i, t_i)
    L_swap = mean_i W_i · l(ŷ^π_i, t_i) + λ_dis Σ_m mean_i GCE_q(B^m([sg(h_r); h_b[π]])_i, t[π]_i)
    L      = L_rob + L_bias + λ_swap · L_swap   (L_swap once ``swap_epochs`` epochs are done)

where ``ŷ^π`` is the prediction from ``[h_r^m; sg(h_b^m[π])]``. ``fusion_branches: true`` is the IFL_LS variant:
the fusion block has a robust and a biased branch over the fused robust features, joined with the same
stop-gradient concatenation; its biased loss joins ``L_bias``/``L_swap`` and the ``min``/``avg`` of ``b_i``.
As in the released IFL_LS code, that biased fusion branch reads the robust modality features, so its GCE
reaches the robust encoders (the per-modality heads never do).

Switches for the paper's ablations: ``swap: false`` (w/o swap), ``gce: false`` (w/o GMAE: the biased heads
train with plain CE), ``ipw: false`` (w/o IPW: ``W = 1``).

Classification (class labels): the biased heads use GCE_q (METHODS §3.11 [R]) and the IPW losses are CE.
Regression (``dataset.targets: regression``, MOSI / MOSEI sentiment; the paper's setting): every head has one
output, the biased heads train with GMAE (:func:`gmae`, weight ``gmae``: ``tanh`` / ``sigmoid``, exponent
``q``), the robust prediction with the base loss ``l1`` (MAE), and ``W_i`` comes from detached absolute errors.
``gce: false`` ("w/o GMAE") trains the biased heads with plain L1 there. Each batch logs ``gmae_weight_mean``,
the mean GMAE weight ``w(e)`` over the biased heads' samples (regression only).

The swap permutation is drawn inside the training forward pass (the global torch generator, which the loop
seeds per epoch) so every module runs inside ``forward``. The epoch counter is the method's only state
(:meth:`GEAR.on_epoch_end`); the method switches its module's swap branch on from it (``GEARNets.swap``), so
epochs before ``swap_epochs`` compute no swapped outputs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from fairray.errors import ConfigError
from fairray.methods._base import METHODS, Batch, DevEval, LossOutput, TrainContext
from fairray.methods.erm import BaseLossMethod, BaseLossParams, l1
from fairray.methods.lff import cross_entropy, gce

#: ``W_i = b_i / (b_i + r_i + W_EPS)`` (the released code's constant).
W_EPS = 1e-8
#: The encoder protocol a modality encoder must implement (``fairray.models.fusion``).
_PROTOCOL = ("embed", "embed_dim", "drop_classifier")


# -- pure loss functions ---------------------------------------------------------------------------------

def gmae_weight(error: torch.Tensor, q: float, kind: str = "tanh") -> torch.Tensor:
    """GMAE's per-sample weight of an absolute error ``e`` (no gradient): ``tanh(e^{-q})`` (``tanh``, the
    released code's ``tanh((1/e)^q)``) or ``2σ(−e)`` (``sigmoid``). Both are ≈ 1 for small errors and fall
    for large ones, so the biased branch keeps fitting the easy samples.

    >>> gmae_weight(torch.tensor([1.0]), q=0.7), gmae_weight(torch.tensor([0.0]), q=0.7, kind="sigmoid")
    (tensor([0.7616]), tensor([1.]))
    """
    e = error.detach()
    if kind == "tanh":
        return torch.tanh(e.reciprocal().pow(q))
    if kind == "sigmoid":
        return 2.0 * torch.sigmoid(-e)
    raise ValueError(f"gmae_weight: kind must be 'tanh' or 'sigmoid', got {kind!r}")


def gmae(pred: torch.Tensor, target: torch.Tensor, q: float, kind: str = "tanh") -> torch.Tensor:
    """Per-sample generalised MAE ``sg(w(e))·e`` with ``e = |pred − target|`` (regression's bias loss)."""
    error = (pred - target).abs()
    return gmae_weight(error, q, kind) * error


def ipw_weights(biased: Sequence[torch.Tensor], robust: torch.Tensor, how: str = "min") -> torch.Tensor:
    """``W_i = b_i / (b_i + r_i + 1e-8)`` from detached per-sample losses: ``b_i`` the min (``how='min'``)
    or mean (``'avg'``) over the biased heads' losses ``biased``, ``r_i`` the robust prediction's loss.

    >>> ipw_weights([torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])], torch.tensor([1.0, 1.0]))
    tensor([0.5000, 0.5000])
    """
    stacked = torch.stack([b.detach() for b in biased])
    b = stacked.min(dim=0).values if how == "min" else stacked.mean(dim=0)
    return b / (b + robust.detach() + W_EPS)


# -- the training module ---------------------------------------------------------------------------------

class GEAROutput(NamedTuple):
    """What the training forward pass gives ``loss()``.

    ``logits``: the robust prediction ``ŷ``; ``biased``: each biased head's logits (per modality, and
    ``fusion`` for IFL_LS); ``perm``: the swap permutation π (None in evaluation or with ``swap: false``);
    ``logits_swap``/``biased_swap``: the same from the swapped biased features (None without π).
    """

    logits: torch.Tensor
    biased: dict[str, torch.Tensor]
    perm: torch.Tensor | None = None
    logits_swap: torch.Tensor | None = None
    biased_swap: dict[str, torch.Tensor] | None = None


class GEARFusion(nn.Module):
    """``MLP(concat(Transformer({u^m})))`` over the modality tokens ``u [B, M, d]``. With ``branches`` (IFL_LS),
    a robust and a biased trunk each map the fused tokens to ``hidden`` features, and the heads read
    ``[f_c; sg(f_b)]`` (robust) and ``[sg(f_c); f_b]`` (biased)."""

    def __init__(self, n_modalities: int, d: int, heads: int, layers: int, hidden: int, dropout: float,
                 n_classes: int, branches: bool) -> None:
        super().__init__()
        self.branches = branches

        def trunk() -> nn.Module:
            blocks: list[nn.Module] = []
            if layers:
                layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=dropout, batch_first=True)
                blocks.append(nn.TransformerEncoder(layer, layers, enable_nested_tensor=False))
            blocks += [nn.Flatten(1), nn.Linear(n_modalities * d, hidden), nn.ReLU(), nn.Dropout(dropout)]
            return nn.Sequential(*blocks)

        self.trunk = trunk()
        if branches:
            self.trunk_b = trunk()
            self.head = nn.Linear(2 * hidden, n_classes)
            self.head_b = nn.Linear(2 * hidden, n_classes)
        else:
            self.head = nn.Linear(hidden, n_classes)

    def features(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(f_c, f_b)``: the fused features of the robust trunk and (IFL_LS) of the biased trunk."""
        return self.trunk(u), self.trunk_b(u) if self.branches else None

    def robust(self, f_c: torch.Tensor, f_b: torch.Tensor | None) -> torch.Tensor:
        return self.head(f_c if f_b is None else torch.cat([f_c, f_b.detach()], dim=1))

    def biased(self, f_c: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
        return self.head_b(torch.cat([f_c.detach(), f_b], dim=1))


class GEARNets(nn.Module):
    """Robust and biased encoders per modality, biased heads ``B^m``, robust projections ``F^m`` and the fusion."""

    def __init__(self, robust: Mapping[str, nn.Module], biased: Mapping[str, nn.Module], fusion: GEARFusion,
                 d: int, n_classes: int, swap: bool) -> None:
        super().__init__()
        self.robust_enc, self.biased_enc = nn.ModuleDict(dict(robust)), nn.ModuleDict(dict(biased))
        self.modalities = tuple(robust)
        width = {m: robust[m].embed_dim for m in self.modalities}
        self.bias_head = nn.ModuleDict({m: nn.Linear(2 * width[m], n_classes) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(2 * width[m], d), nn.ReLU())
                                      for m in self.modalities})
        self.fusion = fusion
        #: Whether the training forward pass draws π and computes the swapped outputs: set by the method from
        #: its epoch counter (:attr:`GEAR.swapping`), so epochs before ``swap_epochs`` do not pay for them.
        self.swap = swap

    def encode(self, inputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(h_r, h_b)`` by modality."""
        return ({m: self.robust_enc[m].embed(inputs) for m in self.modalities},
                {m: self.biased_enc[m].embed(inputs) for m in self.modalities})

    def predict(self, h_r: Mapping[str, torch.Tensor], h_b: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``ŷ`` from ``[h_r^m; sg(h_b^m)]``, with the fused features ``(f_c, f_b)`` (``f_b`` IFL_LS only)."""
        u = torch.stack([self.project[m](torch.cat([h_r[m], h_b[m].detach()], dim=1)) for m in self.modalities], dim=1)
        f_c, f_b = self.fusion.features(u)
        return self.fusion.robust(f_c, f_b), f_c, f_b

    def bias_logits(self, h_r: Mapping[str, torch.Tensor], h_b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``B^m([sg(h_r^m); h_b^m])`` by modality."""
        return {m: self.bias_head[m](torch.cat([h_r[m].detach(), h_b[m]], dim=1)) for m in self.modalities}

    def forward(self, inputs) -> GEAROutput:
        h_r, h_b = self.encode(inputs)
        logits, f_c, f_b = self.predict(h_r, h_b)
        biased = self.bias_logits(h_r, h_b)
        if f_b is not None:
            biased["fusion"] = self.fusion.biased(f_c, f_b)
        if not (self.training and self.swap):
            return GEAROutput(logits, biased)
        perm = torch.randperm(logits.shape[0], device=logits.device)  # the global generator: seeded per epoch
        h_b_perm = {m: h[perm] for m, h in h_b.items()}
        logits_swap = self.predict(h_r, h_b_perm)[0]
        biased_swap = self.bias_logits(h_r, h_b_perm)
        if f_b is not None:  # IFL_LS also swaps at the fusion level: the biased trunk's features of the rows π
            biased_swap["fusion"] = self.fusion.biased(f_c, f_b[perm])
        return GEAROutput(logits, biased, perm, logits_swap, biased_swap)


class RobustPrediction(nn.Module):
    """The inference net ``ŷ`` (robust path, no swap), sharing the training module's weights."""

    def __init__(self, nets: GEARNets) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, inputs) -> torch.Tensor:
        return self.nets.predict(*self.nets.encode(inputs))[0]


def _modality_encoders(module: nn.Module) -> dict[str, nn.Module]:
    """The modality encoders of one built model: a fusion model's encoders by label, or the model itself
    (labelled by the input it reads). Each must give embeddings (the fusion encoder protocol)."""
    from fairray.models.fusion import FusionModel

    if isinstance(module, FusionModel):
        encoders = dict(module.encoders.items())
        if module.mode == "late":  # late fusion keeps every encoder's classifier: GEAR puts its own heads on
            for enc in encoders.values():
                enc.drop_classifier()
        return encoders
    missing = [m for m in _PROTOCOL if not hasattr(module, m)]
    if missing:
        raise ConfigError(f"method gear: model {type(module).__name__} gives no embedding (it lacks "
                          f"{', '.join(missing)}); use a model that implements the encoder protocol of "
                          "fairray.models.fusion (mlp, seq_pool, lstm, text, wav_cnn, ssl, fusion, modalities)")
    module.drop_classifier()
    return {str(getattr(module, "key", "input")): module}


@dataclass(frozen=True)
class GEARParams(BaseLossParams):
    #: Base loss of the robust prediction: CE, as the paper's MAE's classification counterpart; ``l1`` (MAE, the
    #: paper's) for ``dataset.targets: regression``.
    loss: Literal["ce", "cb_ce", "focal", "l1"] = "ce"
    #: Width of each robust projection u^m (the fusion's token size).
    d: int = field(default=64, metadata={"ge": 1})
    #: Attention heads of the fusion Transformer (must divide d).
    heads: int = field(default=4, metadata={"ge": 1})
    #: Transformer encoder layers over the modality tokens (0: concatenate and MLP only).
    fusion_layers: int = field(default=1, metadata={"ge": 0})
    #: Width of the fusion MLP's hidden layer.
    hidden: int = field(default=128, metadata={"ge": 1})
    #: Dropout inside the fusion block (the encoders have their own).
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    #: Weight of the biased heads' loss (METHODS 3.11: 15 in the MOSEI config).
    lambda_dis: float = field(default=15.0, metadata={"ge": 0})
    #: Weight of the swap loss.
    lambda_swap: float = field(default=1.0, metadata={"ge": 0})
    #: Epochs trained before swapping starts (swap from the epoch after swap_epochs completed ones).
    swap_epochs: int = field(default=5, metadata={"ge": 0})
    #: GCE exponent of the biased heads (GEAR's GMAE q for regression).
    q: float = field(default=0.7, metadata={"gt": 0, "le": 1})
    #: GMAE's weight function of the biased heads' errors (regression): ``tanh(e^-q)`` or ``2σ(−e)``.
    gmae: Literal["tanh", "sigmoid"] = "tanh"
    #: Bias aggregation over the biased heads for the IPW weights.
    weight: Literal["min", "avg"] = "min"
    #: Ablation switches: feature swap, GCE for the biased heads (false: plain CE, "w/o GMAE"), IPW (false: W = 1).
    swap: bool = True
    gce: bool = True
    ipw: bool = True
    #: IFL_LS: the fusion block with its own robust and biased branch.
    fusion_branches: bool = False

    def __post_init__(self) -> None:
        if self.d % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d ({self.d}): the fusion Transformer splits d "
                             "across its heads")


@METHODS.register("gear")
class GEAR(BaseLossMethod):
    """GEAR's robust prediction ``ŷ`` is evaluated, selected and exported."""

    Params = GEARParams
    requires = "nothing"
    sampler = "uniform"
    summary = "GEAR: per-modality robust/biased encoders, GCE bias heads, IPW-weighted robust loss, feature swap (METHODS 3.11)"
    batch_statistics = False  # W_i is per sample, from the sample's own detached losses
    regression = True  # GMAE biased heads, L1 robust loss (loss: l1)

    def __init__(self, params: GEARParams, ctx: TrainContext) -> None:
        super().__init__(params, ctx)
        self.epoch = 0  # epochs completed (on_epoch_end); swapping starts at swap_epochs
        # the module build_model made, whose swap branch follows the epoch (a weak reference: Method.to walks
        # the method's attributes, and the module is the loop's to move)
        self._nets: Callable[[], GEARNets | None] = lambda: None

    def build_model(self, build: Callable[[int], nn.Module]) -> GEARNets:
        p, n = self.params, self.ctx.n_outputs
        robust, biased = _modality_encoders(build(n)), _modality_encoders(build(n))
        fusion = GEARFusion(len(robust), p.d, p.heads, p.fusion_layers, p.hidden, p.dropout, n, p.fusion_branches)
        nets = GEARNets(robust, biased, fusion, p.d, n, self.swapping)
        self._nets = weakref.ref(nets)
        return nets

    def inference_model(self, train_module: GEARNets) -> nn.Module:
        return RobustPrediction(train_module)

    @property
    def swapping(self) -> bool:
        """Whether this epoch adds ``L_swap``."""
        return self.params.swap and self.epoch >= self.params.swap_epochs

    @property
    def regressing(self) -> bool:
        return self.ctx.task == "regression"

    def bias_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of a biased head: GCE_q (classification) or GMAE (regression), or with ``gce: false``
        plain CE / L1."""
        if self.regressing:
            if not self.params.gce:
                return l1(logits, target)
            return gmae(logits.squeeze(-1).float(), target.float(), self.params.q, self.params.gmae)
        return gce(logits, target, self.params.q) if self.params.gce else cross_entropy(logits, target)

    def _sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The detached per-sample loss ``W`` reads: CE, or the absolute error of a regression."""
        return l1(logits.detach(), target) if self.regressing else cross_entropy(logits.detach(), target)

    def weights(self, out: GEAROutput, target: torch.Tensor) -> torch.Tensor:
        """IPW ``W_i`` (ones with ``ipw: false``)."""
        if not self.params.ipw:
            return torch.ones(out.logits.shape[0], device=out.logits.device)
        biased = [self._sample_loss(z, target) for z in out.biased.values()]
        return ipw_weights(biased, self._sample_loss(out.logits, target), self.params.weight)

    def loss(self, outputs: GEAROutput, batch: Batch) -> LossOutput:
        p, t = self.params, batch.loss_target
        w = self.weights(outputs, t)
        l_rob = (w * self.base(outputs.logits, t)).mean()
        l_bias = p.lambda_dis * sum(self.bias_loss(z, t).mean() for z in outputs.biased.values())
        loss = l_rob + l_bias
        logs = {"l_rob": float(l_rob.detach()), "l_bias": float(l_bias.detach()), "weight_mean": float(w.mean()),
                "swapping": float(self.swapping)}
        if self.regressing and p.gce:  # what GMAE weighed the biased heads' errors with (1 = plain L1)
            errors = torch.cat([(z.detach().squeeze(-1).float() - t.float()).abs() for z in outputs.biased.values()])
            logs["gmae_weight_mean"] = float(gmae_weight(errors, p.q, p.gmae).mean())
        if self.swapping:
            if outputs.perm is None:
                raise RuntimeError("gear: swapping is on but the forward pass drew no permutation (eval mode?)")
            t_perm = t[outputs.perm]
            l_swap = ((w * self.base(outputs.logits_swap, t)).mean()
                      + p.lambda_dis * sum(self.bias_loss(z, t_perm).mean() for z in outputs.biased_swap.values()))
            loss = loss + p.lambda_swap * l_swap
            logs["l_swap"] = float(l_swap.detach())
        return LossOutput(loss, logs)

    def on_step(self, outputs: Sequence[LossOutput]) -> None:
        return None  # nothing per step: the epoch counter moves in on_epoch_end

    def on_epoch_end(self, dev: DevEval) -> dict[str, float]:
        self.epoch += 1
        self._sync_swap()
        return {}

    def _sync_swap(self) -> None:
        nets = self._nets()
        if nets is not None:
            nets.swap = self.swapping

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._sync_swap()
