"""The inputs contract (fairray.inputs): stores, padding and masks, crops, Batch and device moves."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import fairray.inputs as inputs_module
from fairray.inputs import (
    FEATURES,
    Batch,
    DialogueContext,
    InputSpec,
    Padded,
    SequenceStore,
    TokenStore,
    VectorStore,
    specs_of,
    take_inputs,
)


def test_the_inputs_module_is_a_leaf():
    tree = ast.parse(Path(inputs_module.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("fairray")], imported


def test_vector_rows_are_the_matrix_rows():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    store = VectorStore("f", X)
    assert store.spec == InputSpec("f", "vector", dim=3) and len(store) == 4
    assert store.take(np.array([2, 0])).tolist() == [[6, 7, 8], [0, 1, 2]]


def test_sequences_are_padded_and_masked():
    rows = [np.full((n, 2), i + 1, dtype=np.float32) for i, n in enumerate((3, 1, 5))]
    store = SequenceStore.from_rows("lld", "sequence", rows)
    assert store.spec.kind == "sequence" and store.spec.dim == 2 and store.lengths.tolist() == [3, 1, 5]
    batch = store.take(np.array([1, 0]))
    assert batch.values.shape == (2, 3, 2) and batch.lengths.tolist() == [1, 3]
    assert batch.mask.tolist() == [[True, False, False], [True, True, True]]
    assert batch.values[0, 1:].abs().sum() == 0 and (batch.values[1] == 1).all()


def test_waveforms_are_cropped_at_random_in_training_and_from_the_start_otherwise():
    wav = np.arange(100, dtype=np.float32)
    store = SequenceStore.from_rows("audio", "waveform", [wav, wav[:10]], max_length=40)
    assert store.spec.sample_rate == 16_000 and store.spec.dim is None
    fixed = store.take(np.array([0, 1]))
    assert fixed.values.shape == (2, 40) and fixed.lengths.tolist() == [40, 10]
    assert fixed.values[0, 0] == 0 and fixed.values[0, -1] == 39  # from the start
    starts = {int(store.take(np.array([0]), np.random.default_rng(s)).values[0, 0]) for s in range(20)}
    assert len(starts) > 5 and max(starts) <= 60  # random offsets, always a whole window inside the clip
    crop = store.take(np.array([0]), np.random.default_rng(3)).values[0]
    assert torch.equal(crop, torch.arange(crop[0], crop[0] + 40))  # a contiguous window of the clip


def test_tokens_are_padded_with_the_pad_id_and_truncated():
    store = TokenStore("text", [[5, 6, 7, 8], [9]], vocab_size=10, pad_id=1, max_length=3)
    batch = store.take(np.array([0, 1]))
    assert batch.values.tolist() == [[5, 6, 7], [9, 1, 1]]
    assert batch.mask.tolist() == [[True, True, True], [True, False, False]]
    with pytest.raises(ValueError, match=r"ids must lie in 0..9"):
        TokenStore("text", [[10]], vocab_size=10)


def test_bad_layouts_are_refused_with_the_input_name():
    with pytest.raises(ValueError, match="vector input 'f' needs a 2-d array"):
        VectorStore("f", np.zeros(3))
    with pytest.raises(ValueError, match="input 'a': offsets must rise from 0 to len"):
        SequenceStore("a", "waveform", np.zeros(5, np.float32), np.array([0, 3]))
    with pytest.raises(ValueError, match="kind must be one of"):
        InputSpec("x", "image")


def test_a_batch_carries_named_inputs_and_moves_in_one_call():
    stores = {FEATURES: VectorStore(FEATURES, np.ones((3, 2), np.float32)),
              "audio": SequenceStore.from_rows("audio", "waveform", [np.ones(n, np.float32) for n in (4, 6, 2)])}
    assert {k: s.kind for k, s in specs_of(stores).items()} == {FEATURES: "vector", "audio": "waveform"}
    taken = take_inputs(stores, np.array([0, 2]))
    b = Batch(y=torch.tensor([0, 1]), attr=torch.tensor([0, 1]), stratum=torch.tensor([0, 0]),
              index=torch.tensor([0, 2]), group=torch.tensor([0, 1]), group_prob=torch.eye(2), inputs=taken,
              context=DialogueContext(torch.tensor([3, 3]), torch.tensor([0, 1]), torch.tensor([1, 0])))
    assert b.x is taken[FEATURES] and isinstance(b.inputs["audio"], Padded)  # x = the one vector input
    meta = b.to("meta")
    assert meta.y.device.type == "meta" and meta.inputs["audio"].mask.device.type == "meta"
    assert meta.inputs[FEATURES].device.type == "meta" and meta.context.position.device.type == "meta"
    assert meta.x is meta.inputs[FEATURES]
    assert b.to("cpu") is b  # already there: no copy
    assert b.labels_only().inputs == {} and b.labels_only().x is None
    with pytest.raises(TypeError):
        Batch(torch.zeros(2, 1), torch.tensor([0, 1]))  # keywords only: a positional call cannot mis-assign


def test_x_builds_the_features_input():
    x = torch.randn(2, 3)
    b = Batch(x=x, y=torch.tensor([0, 1]), attr=torch.tensor([0, 1]), stratum=torch.tensor([0, 0]),
              index=torch.tensor([0, 1]), group=torch.tensor([0, 1]), group_prob=torch.eye(2))
    assert list(b.inputs) == [FEATURES] and b.inputs[FEATURES] is x
    with pytest.raises(ValueError, match="pass either x= .* or inputs="):
        Batch(x=x, y=b.y, attr=b.attr, stratum=b.stratum, index=b.index, group=b.group, group_prob=b.group_prob,
              inputs={"other": torch.randn(2, 3)})


def test_an_empty_take_keeps_the_frame_shape():
    store = SequenceStore.from_rows("lld", "sequence", [np.ones((3, 4), np.float32)])
    empty = store.take(np.array([], dtype=np.int64))
    assert empty.values.shape == (0, 1, 4) and empty.mask.shape == (0, 1)
