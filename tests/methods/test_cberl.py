"""CBERL (METHODS §3.12): the formulas and switches of each component, on tiny constructed batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fairray.cli import main
from fairray.inputs import Batch, DialogueContext, InputSpec, VectorStore
from fairray.methods import METHODS, SAMPLERS, SamplerInput
from fairray.methods._cberl_nets import (
    ClassGenerator,
    dialogue_order,
    product_of_experts,
    scaled_cosine_error,
    window_adjacency,
)
from fairray.methods.cberl import CBERL, CBERLInference, Synthetic
from fairray.models import MODELS, build_model
from fairray.train.loop import _chunks, infer

from .test_conformance import CTX, N_FEATURES

SPEC = Path(__file__).parents[2] / "search_spaces" / "cberl.yaml"


def make(**params) -> tuple[CBERL, torch.nn.Module]:
    defaults = {"latent": 8, "lstm_hidden": 4, "gcn_hidden": 8, "gan_hidden": 8, "heads": 3, "dropout": 0.0,
                "w_past": 2, "w_fut": 1}
    method = METHODS.get("cberl")(METHODS.get("cberl").Params(**{**defaults, **params}), CTX)
    spec = {"features": InputSpec("features", "vector", dim=N_FEATURES)}
    nets = method.build_model(lambda n: build_model("mlp", MODELS.get("mlp").Params(hidden=8, depth=1, dropout=0.0),
                                                    spec, n))
    return method, nets


def dialogue_batch(seed: int = 0) -> Batch:
    """Three dialogues of 5, 4 and 3 utterances, rows shuffled; labels include the minority classes."""
    g = torch.Generator().manual_seed(seed)
    dialogue = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    position = torch.cat([torch.arange(5), torch.arange(4), torch.arange(3)])
    perm = torch.randperm(12, generator=g)
    y = torch.tensor([0, 1, 0, 2, 0, 1, 3, 0, 0, 1, 0, 2])[perm]
    a = torch.randint(0, 2, (12,), generator=g)
    return Batch(y=y, attr=a, stratum=torch.zeros(12, dtype=torch.long), index=torch.arange(12), group=a,
                 group_prob=F.one_hot(a, 2).float(), target=F.one_hot(y, 4).float(),
                 inputs={"features": torch.randn(12, N_FEATURES, generator=g)},
                 context=DialogueContext(dialogue[perm], position[perm], torch.zeros(12, dtype=torch.long)))


# -- DJVAE -----------------------------------------------------------------------------------------------

def test_product_of_one_expert_and_the_prior():
    """One expert N(μ, σ²) times N(0, I): precision 1 + 1/σ², mean μ/σ² / (1 + 1/σ²)."""
    mu, logvar = torch.tensor([[[2.0, -1.0, 0.5]]]), torch.tensor([[[0.0, np.log(0.25), np.log(4.0)]]])
    joint_mu, joint_logvar = product_of_experts(mu, logvar)
    var = logvar.exp()[0]
    torch.testing.assert_close(joint_logvar.exp(), 1.0 / (1.0 + 1.0 / var))
    torch.testing.assert_close(joint_mu, (mu[0] / var) / (1.0 + 1.0 / var))


def test_two_experts_add_their_precisions():
    mu = torch.tensor([[[1.0]], [[3.0]]])
    joint_mu, joint_logvar = product_of_experts(mu, torch.zeros(2, 1, 1))  # two N(·, 1) experts + prior
    torch.testing.assert_close(joint_logvar.exp(), torch.tensor([[1.0 / 3.0]]))
    torch.testing.assert_close(joint_mu, torch.tensor([[4.0 / 3.0]]))


# -- focal heads -----------------------------------------------------------------------------------------

def test_focal_with_gamma_zero_is_class_balanced_cross_entropy():
    method, _ = make(gamma=0.0)
    cb, _ = make(loss="cb_ce")
    logits, y = torch.randn(10, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(method.base(logits, y), cb.base(logits, y))
    torch.testing.assert_close(method.base(logits, y), method.base.alpha[y] * F.cross_entropy(logits, y, reduction="none"))
    focal, _ = make(gamma=2.0)
    p = torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(focal.base(logits, y), -focal.base.alpha[y] * (1 - p) ** 2 * p.log())


def test_class_weights_use_the_augmented_counts():
    """After augmentation every class counts max(n_c, r·n_max): r = 1 gives equal weights."""
    full, _ = make(augment_ratio=1.0)
    torch.testing.assert_close(full.base.alpha, torch.ones(4))
    none, _ = make(augment_ratio=0.0)
    assert none.base.alpha.argmax() == int(np.argmin(CTX.class_counts))


def test_one_boosting_head_is_the_plain_base_loss_and_later_heads_weigh_mistakes():
    method, _ = make(heads=2)
    good = F.one_hot(torch.tensor([0, 1, 2, 3]), 4).float() * 5
    bad = good.roll(1, dims=1)  # every row wrong
    head_logits = torch.stack([torch.cat([good[:2], bad[2:]]), good])
    y = torch.tensor([0, 1, 2, 3])
    loss, alpha = method.boosted(head_logits, y)
    # head 1: uniform weights; err 1/2 -> alpha = log(1) + log(3); rows 2, 3 get weight e^alpha = 3 times more
    torch.testing.assert_close(alpha[0], torch.tensor(np.log(3.0), dtype=torch.float32))
    w = torch.tensor([1.0, 1.0, 3.0, 3.0]) * 4 / 8
    expected = (method.base(head_logits[0], y).mean() + (w * method.base(head_logits[1], y)).mean()) / 2
    torch.testing.assert_close(loss, expected)


# -- MGNN ------------------------------------------------------------------------------------------------

def test_graph_windows_link_past_and_future_turns_of_the_same_dialogue_only():
    dialogue = torch.tensor([0, 0, 0, 0, 0, 1, 1, -1])
    position = torch.tensor([0, 1, 2, 3, 4, 0, 1, 0])
    a = window_adjacency(dialogue, position, w_past=2, w_fut=1)
    # node 2 (turn 2) receives from turns 0, 1 (past 2), itself, and turn 3 (future 1); not turn 4
    assert a[2].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert a[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert a[5].tolist() == [0, 0, 0, 0, 0, 1, 1, 0]
    assert a[7].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # no dialogue: only its self-loop


def test_dialogue_order_sorts_turns_within_dialogues():
    order, starts, lengths = dialogue_order(torch.tensor([1, 0, 1, 0, -1]), torch.tensor([1, 1, 0, 0, 0]))
    assert order.tolist() == [3, 1, 2, 0, 4] and lengths.tolist() == [2, 2, 1] and starts.tolist() == [0, 2, 4]


def test_scaled_cosine_error_is_zero_for_parallel_and_one_for_orthogonal_rows():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(scaled_cosine_error(pred, torch.tensor([[3.0, 0.0], [1.0, 0.0]])), torch.tensor([0.0, 1.0]))


def test_masking_rate_zero_is_no_masking_and_the_classifier_reads_the_unmasked_pass():
    b = dialogue_batch()
    torch.manual_seed(0)
    masked, nets = make(masking_rate=0.5, augment_ratio=0.0)
    plain, plain_nets = make(masking_rate=0.0, augment_ratio=0.0)
    plain_nets.load_state_dict(nets.state_dict(), strict=False)  # the same weights, without mask token / decoder
    out_m, out_p = nets(b.inputs, b.context), plain_nets(b.inputs, b.context)
    pass_m = nets.graph_pass(out_m.features, out_m.dialogue, out_m.position, masked.generator(b.device))
    pass_p = plain_nets.graph_pass(out_p.features, out_p.dialogue, out_p.position, plain.generator(b.device))
    assert pass_m.masked == 6 and float(pass_m.rec.detach()) > 0
    assert pass_p.masked == 0 and float(pass_p.rec.detach()) == 0.0
    torch.testing.assert_close(pass_m.logits, pass_p.logits)  # the second, unmasked pass feeds the heads
    # with rho = 0 the loss does not depend on lambda_rec: no reconstruction term at all
    other, other_nets = make(masking_rate=0.0, augment_ratio=0.0, lambda_rec=7.0)
    other_nets.load_state_dict(plain_nets.state_dict())
    torch.testing.assert_close(plain.loss(plain_nets(b.inputs, b.context), b).loss,
                               other.loss(other_nets(b.inputs, b.context), b).loss)


def test_masking_is_off_at_evaluation():
    b = dialogue_batch()
    torch.manual_seed(0)
    _, nets = make(masking_rate=0.7)
    _, plain = make(masking_rate=0.0)
    plain.load_state_dict(nets.state_dict(), strict=False)
    for mode in (True, False):  # the inference path never masks, in train or eval mode
        nets.train(mode)
        first = CBERLInference(nets)(b.inputs, b.context)
        torch.testing.assert_close(first, CBERLInference(nets)(b.inputs, b.context))
        torch.testing.assert_close(first, CBERLInference(plain.train(mode))(b.inputs, b.context))


# -- GAN augmentation ------------------------------------------------------------------------------------

def test_identity_loss_is_zero_for_a_sample_already_in_its_target_class():
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    g = ClassGenerator(5, 4, hidden=8)  # the residual generator starts as the identity map
    assert float(CBERL.identity_loss(g, x, y).detach()) == 0.0
    with torch.no_grad():
        g.net[-1].bias.add_(0.5)
    torch.testing.assert_close(CBERL.identity_loss(g, x, y), torch.tensor(0.5))


def test_minority_classes_are_topped_up_to_r_times_n_max():
    method, _ = make(augment_ratio=1.0)
    counts = CTX.class_counts
    expected = (counts.max() - counts) / CTX.n_train
    torch.testing.assert_close(method.quota, torch.as_tensor(expected, dtype=torch.float32))
    half, _ = make(augment_ratio=0.5)
    assert float(half.quota[int(np.argmax(counts))]) == 0.0


def test_a_synthetic_utterance_replaces_its_source_in_a_clone_of_its_dialogue():
    method, _ = make()
    e = {"input": torch.arange(12.0).reshape(6, 2)}
    dialogue, position = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 1, 2, 0, 1, 0])
    keep, target = torch.ones(6, dtype=torch.bool), torch.tensor([0, 0, 1, 0, 2, 0])
    synth = Synthetic(label=torch.tensor([3]), source=torch.tensor([1]), x=torch.tensor([[-1.0, -2.0]]))
    new_e, d, p, k, t = method._insert(e, dialogue, position, keep, target, synth, ["input"])
    assert d[6:].tolist() == [3, 3, 3] and p[6:].tolist() == [0, 1, 2]  # a new dialogue, the source's turns
    assert new_e["input"][6:].tolist() == [[0.0, 1.0], [-1.0, -2.0], [4.0, 5.0]]
    assert k[6:].tolist() == [False, True, False] and int(t[7]) == 3  # only the synthetic row is scored
    torch.testing.assert_close(new_e["input"][:6], e["input"])


def test_synthetic_rows_come_only_from_training_batches_never_from_evaluation():
    b = dialogue_batch()
    torch.manual_seed(0)
    method, nets = make(augment_ratio=1.0, gan_warmup_epochs=0)
    calls = []
    for name, module in nets.gan.items():
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
    out = method.loss(nets(b.inputs, b.context), b)
    assert out.logs["synthetic_used"] > 0 and "G" in calls
    calls.clear()
    stores = {"features": VectorStore("features", b.inputs["features"].numpy())}
    context = torch.stack([b.context.dialogue, b.context.position, b.context.speaker], dim=1).numpy()
    logits = infer(method.inference_model(nets), stores, np.arange(12), 5, torch.device("cpu"), context=context)
    assert calls == [] and logits.shape == (12, 4)  # dev/test inference never touches the GAN
    _, no_gan = make(augment_ratio=0.0)
    no_gan.load_state_dict(nets.state_dict(), strict=False)
    torch.testing.assert_close(logits, infer(CBERLInference(no_gan), stores, np.arange(12), 5, torch.device("cpu"),
                                             context=context))


def test_gan_variance_is_logged_per_class():
    b = dialogue_batch()
    method, nets = make(augment_ratio=1.0)
    logs = method.loss(nets(b.inputs, b.context), b).logs
    assert any(k.startswith("gan_var_ratio/") for k in logs)
    assert all(np.isfinite(v) for v in logs.values())


def test_without_dialogue_context_every_utterance_is_its_own_dialogue():
    b = dialogue_batch()
    method, nets = make()
    out = nets(b.inputs, None)
    assert not out.has_context and (out.dialogue == -1).all()
    assert method.loss(out, b).logs["context"] == 0.0


# -- batching --------------------------------------------------------------------------------------------

def test_the_dialogues_sampler_keeps_dialogues_whole_and_uses_each_training_row_once():
    dialogue = np.repeat(np.arange(20), 5)
    dialogue[-3:] = -1
    train = np.arange(0, 100, 1)[dialogue != 7]
    inp = SamplerInput(train, np.zeros(100, int), np.zeros(100, int), np.zeros(100, int), np.zeros(100, int), dialogue)
    batches = list(SAMPLERS.get("dialogues")(inp, 12, np.random.default_rng(0)))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == sorted(train.tolist())
    for batch in batches:
        for d in set(dialogue[batch]) - {-1}:
            assert set(np.flatnonzero(dialogue == d)) & set(train) <= set(batch.tolist())


def test_evaluation_chunks_end_at_dialogue_ends():
    context = np.stack([np.repeat([0, 1, 2], [3, 4, 2]), np.zeros(9, int), np.zeros(9, int)], axis=1)
    chunks = list(_chunks(np.arange(9), 2, context))
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5, 6], [7, 8]]
    assert [len(c) for c in _chunks(np.arange(9), 2, None)] == [2, 2, 2, 2, 1]


# -- bad input: one line, exit 2, nothing written ------------------------------------------------------------

def _one_line(capsys, *argv) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fairray: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(("override", "message"), [
    (["method.masking_rate=1.0"], "method.masking_rate"),
    (["method.masking_rate=-0.1"], "method.masking_rate"),
    (["dataset={name: ser3}", "search.space={}"], "has no dialogue ids"),
    (["dataset.inputs={audio: {kind: waveform}}"], "kind waveform reads audio"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, override, message):
    args = ["sweep", str(SPEC), "--set", f"storage.path={tmp_path / 'runs'}"]
    for o in override:
        args += ["--set", o]
    assert message in _one_line(capsys, *args)
    assert not (tmp_path / "runs").exists()
