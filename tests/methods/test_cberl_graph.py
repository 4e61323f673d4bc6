"""CBERL's sparse window graph (the edge list the loss runs on) against the dense reference: the same
adjacency, the same GCN sums, and the same loss and gradients within a float tolerance, with dialogue clones
and the masked pass (METHODS §3.12)."""

from __future__ import annotations

import pytest
import torch

from fairray.methods._cberl_nets import GCN, window_adjacency, window_edges
from fairray.methods.cberl import CBERLNets

from .test_cberl import dialogue_batch, make


def test_edges_are_the_nonzeros_of_the_dense_window_adjacency():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 9, (12,), generator=g)
    dialogue = torch.repeat_interleave(torch.arange(12), lengths)
    dialogue[torch.rand(len(dialogue), generator=g) < 0.1] = -1  # some rows of unknown dialogue
    position = torch.cat([torch.randperm(int(n), generator=g) for n in lengths])
    position[:3] = position[0]  # repeated turns in one dialogue: no edge between them (lag 0), self-loops kept
    perm = torch.randperm(len(dialogue), generator=g)
    dialogue, position = dialogue[perm], position[perm]
    for w_past, w_fut in [(0, 0), (2, 1), (10, 10)]:
        graph = window_edges(dialogue, position, w_past, w_fut)
        assert torch.equal(graph.dense(), window_adjacency(dialogue, position, w_past, w_fut))
        masked = torch.tensor([0, 5, 7])
        dense = window_adjacency(dialogue, position, w_past, w_fut)
        dense[:, masked] = 0.0
        dense[masked, masked] = 1.0
        assert torch.equal(graph.without_messages_from(masked).dense(), dense)


def test_gcn_on_edges_equals_the_dense_gcn_with_its_gradients():
    torch.manual_seed(0)
    dialogue = torch.tensor([0, 0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 2])
    position = torch.tensor([0, 1, 2, 3, 0, 1, 0, 4, 3, 2, 1, 0])
    gcn = GCN(6, 5, dropout=0.0)
    h = torch.randn(12, 6, requires_grad=True)
    dense = gcn(h, window_adjacency(dialogue, position, 2, 1))
    (g_dense,) = torch.autograd.grad(dense.pow(2).sum(), h)
    sparse = gcn(h, window_edges(dialogue, position, 2, 1))
    (g_sparse,) = torch.autograd.grad(sparse.pow(2).sum(), h)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masking_rate", [0.0, 0.4])
def test_the_augmented_loss_on_edges_equals_the_dense_reference(monkeypatch, masking_rate):
    """Full CBERL (GAN with dialogue clones, DJVAE, Bi-LSTM, masking, SAMME heads, dropout): the same loss
    and gradient for every parameter whichever graph representation the pass uses."""
    b = dialogue_batch(seed=1)
    results = []
    for dense in (True, False):
        monkeypatch.setattr(CBERLNets, "dense_graph", dense)
        torch.manual_seed(0)
        method, nets = make(augment_ratio=1.0, gan_warmup_epochs=0, masking_rate=masking_rate, dropout=0.2)
        out = method.loss(nets(b.inputs, b.context), b)
        assert out.logs["synthetic_used"] > 0  # clones are in the graph
        grads = torch.autograd.grad(out.loss, [p for p in nets.parameters() if p.requires_grad], allow_unused=True)
        results.append((out.loss.detach(), grads))
    (loss_d, grads_d), (loss_s, grads_s) = results
    torch.testing.assert_close(loss_s, loss_d, rtol=1e-5, atol=1e-6)
    for gs, gd in zip(grads_s, grads_d, strict=True):
        if gd is None:
            assert gs is None
        else:
            torch.testing.assert_close(gs, gd, rtol=1e-4, atol=1e-6)


def test_scoring_only_the_loss_rows_equals_slicing_the_full_pass():
    """The heads on the scored rows and L_vae of the real rows give what the full pass gives on them."""
    b = dialogue_batch(seed=2)
    torch.manual_seed(0)
    method, nets = make(augment_ratio=0.0, masking_rate=0.3, dropout=0.2)
    out = nets(b.inputs, b.context)
    rows = torch.tensor([1, 4, 5, 9])
    full = nets.graph_pass(out.features, out.dialogue, out.position, method.generator(b.device))
    part = nets.graph_pass(out.features, out.dialogue, out.position, method.generator(b.device),
                           scored=rows, vae_rows=7)
    torch.testing.assert_close(part.logits, full.logits[:, rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(part.vae, full.vae[:7], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(part.rec, full.rec, rtol=1e-5, atol=1e-6)
