"""The ``lstm`` model (packed over the valid frames) and the ``modalities`` model (one encoder per input, chosen by
its kind)."""

from __future__ import annotations

import pytest
import torch

from fairray.errors import ConfigError
from fairray.inputs import InputSpec, Padded
from fairray.models import MODELS, FusionModel, build_model
from fairray.models.fusion import Encoder

DIM = 5


def _lstm(**params):
    torch.manual_seed(0)
    spec = InputSpec("audio", "sequence", dim=DIM)
    return build_model("lstm", MODELS.get("lstm").Params(**{"dropout": 0.0, **params}), {"audio": spec}, 3).eval()


def _batch(rows: list[torch.Tensor], length: int, pad: float = 0.0) -> dict[str, Padded]:
    values = torch.full((len(rows), length, DIM), pad)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, :len(r)] = r
        mask[i, :len(r)] = True
    return {"audio": Padded(values, mask)}


@pytest.mark.parametrize("params", [{}, {"bidirectional": True}, {"layers": 2, "hidden": 6}])
def test_padding_frames_do_not_change_the_output(params):
    """A row's logits and embedding are the same alone, padded to a longer batch with zeros, or with garbage in
    the padded frames (packed: padding never enters the LSTM), within float tolerance."""
    model = _lstm(**params)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(n, DIM, generator=g) for n in (3, 7, 1, 5)]
    with torch.no_grad():
        alone = torch.cat([model(_batch([r], len(r))) for r in rows])
        padded = model(_batch(rows, 12))
        garbage = model(_batch(rows, 12, pad=1e3))
        emb_alone = torch.cat([model.embed(_batch([r], len(r))) for r in rows])
        emb_padded = model.embed(_batch(rows, 12, pad=-7.0))
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(garbage, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb_padded, emb_alone, rtol=1e-5, atol=1e-6)
    # and the frames do matter: reversing a row's valid frames changes its output
    with torch.no_grad():
        flipped = model(_batch([rows[1].flip(0)], 7))
    assert not torch.allclose(flipped, alone[1:2], atol=1e-4)


def test_a_row_without_frames_gets_a_zero_state_and_a_finite_gradient():
    model = _lstm(hidden=4).train()
    inputs = _batch([torch.randn(4, DIM), torch.zeros(0, DIM)], 4, pad=5.0)
    pooled = model.pool(inputs)
    assert torch.equal(pooled[1], torch.zeros(4)) and pooled[0].abs().sum() > 0
    out = model(inputs)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the empty row's output does not depend on what sits in its padding
    with torch.no_grad():
        other = model.eval()(_batch([torch.randn(4, DIM), torch.zeros(0, DIM)], 4, pad=-3.0))
        torch.testing.assert_close(other[1], model(inputs)[1], rtol=1e-6, atol=1e-7)


def test_encoder_protocol_and_refusals():
    model = _lstm(hidden=4, out=6)
    assert model.embed_dim == 6
    inputs = _batch([torch.randn(2, DIM)], 2)
    assert model.embed(inputs).shape == (1, 6)
    model.drop_classifier()
    torch.testing.assert_close(model(inputs), model.embed(inputs))
    bad = Padded(torch.zeros(1, 3, DIM), torch.tensor([[False, True, True]]))
    with pytest.raises(ValueError, match="padding before valid frames"):
        model({"audio": bad})
    with pytest.raises(ConfigError, match="model lstm accepts sequence inputs, but the dataset provides x: vector"):
        build_model("lstm", MODELS.get("lstm").Params(), {"x": InputSpec("x", "vector", dim=3)}, 2)


SPECS = {"text": InputSpec("text", "sequence", dim=6), "audio": InputSpec("audio", "sequence", dim=4),
         "features": InputSpec("features", "vector", dim=3)}


def test_modalities_picks_each_inputs_encoder_by_kind():
    params = MODELS.get("modalities").Params(encoders={"audio": Encoder("lstm", MODELS.get("lstm").Params(hidden=3,
                                                                                                           out=2))})
    model = build_model("modalities", params, SPECS, 1)
    assert isinstance(model, FusionModel) and model.mode == "early"
    assert {k: type(e).__name__ for k, e in model.encoders.items()} == {
        "text": "LSTMHead", "audio": "LSTMHead", "features": "VectorMLP"}
    assert model.encoders["audio"].rnn.hidden_size == 3 and model.encoders["text"].rnn.hidden_size == 16
    assert model.encoders["text"].key == "text" and model.encoders["features"].key == "features"
    inputs = {"text": Padded(torch.randn(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)),
              "audio": Padded(torch.randn(2, 3, 4), torch.tensor([[True, True, False], [True, False, False]])),
              "features": torch.randn(2, 3)}
    assert model(inputs).shape == (2, 1)
    only = build_model("modalities", MODELS.get("modalities").Params(inputs=("audio",)), SPECS, 2)
    assert list(only.encoders) == ["audio"]


@pytest.mark.parametrize(("params", "match"), [
    ({"inputs": ("vision",)}, "model modalities: input 'vision' is not among the dataset's inputs"),
    ({"encoders": {"vision": Encoder("lstm")}}, "encoders.vision names no input of the dataset"),
    ({"inputs": ("ids",)}, r"input ids: tokens\[ids\] is tokens, which has no encoder section; set model.tokens"),
])
def test_modalities_refusals_are_one_line(params, match):
    specs = {**SPECS, "ids": InputSpec("ids", "tokens", vocab_size=10)}
    with pytest.raises(ConfigError, match=match) as excinfo:
        build_model("modalities", MODELS.get("modalities").Params(**params), specs, 1)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ConfigError, match="no input of a kind with an encoder section"):
        build_model("modalities", MODELS.get("modalities").Params(), {"ids": specs["ids"]}, 1)
