"""The one checkpoint format: trainable state only, strict fit, atomic files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fairray.train.checkpoint import (
    BEST_FILE,
    MODEL_FILE,
    load_state,
    load_trainable_state,
    read_trainer_state,
    save_state,
    trainable_state,
    write_checkpoint,
)


class Frozen(nn.Module):
    """A frozen 'backbone' (with a buffer) and a trained head, as a LoRA or linear-probe model has."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, 2)
        for p in self.backbone.parameters():
            p.requires_grad_(False)


def test_only_trainable_parameters_and_buffers_are_saved(tmp_path):
    torch.manual_seed(0)
    model = Frozen()
    state = trainable_state(model)
    assert set(state) == {"head.weight", "head.bias", "backbone.1.running_mean", "backbone.1.running_var",
                          "backbone.1.num_batches_tracked"}
    save_state(model, tmp_path / "w.pt")
    assert not list(tmp_path.glob(".*tmp"))  # written under a temporary name, then renamed
    torch.manual_seed(1)
    other = Frozen()  # another frozen backbone init: only the trained part is restored
    load_trainable_state(other, load_state(tmp_path / "w.pt"))
    torch.testing.assert_close(other.head.weight, model.head.weight, rtol=0, atol=0)
    assert not torch.equal(other.backbone[0].weight, model.backbone[0].weight)


def test_weights_of_another_model_are_refused_in_one_line(tmp_path):
    save_state(nn.Linear(3, 2), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w.pt: the saved weights do not fit the model \(missing \[.*'head.bias'.*"
                                         r"unexpected \['bias', 'weight'\]\)"):
        load_trainable_state(Frozen(), load_state(tmp_path / "w.pt"), source=str(tmp_path / "w.pt"))


def test_a_checkpoint_folder_holds_weights_best_trainer_state_meta_and_config(tmp_path):
    model = Frozen()
    save_state(model, tmp_path / "best.pt")
    write_checkpoint(tmp_path / "ckpt", model, {"epoch": 3}, {"classes": ["a", "b"]}, {"name": "x"},
                     best=tmp_path / "best.pt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert names == {MODEL_FILE, BEST_FILE, "trainer.pt", "fairray.json", "config.yaml"}
    assert read_trainer_state(tmp_path / "ckpt") == {"epoch": 3}
    assert set(load_state(tmp_path / "ckpt" / BEST_FILE)) == set(trainable_state(model))
