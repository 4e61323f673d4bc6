"""fairray.models._peft: which weights train per finetune mode; LoRA through peft; adapter folders."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fairray.errors import ConfigError
from fairray.models._peft import (
    adapter_state,
    apply_lora,
    check_targets,
    count_params,
    load_adapter,
    module_names,
    peft_models,
    save_adapters,
    set_finetune,
    unreached_adapters,
)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj, self.v_proj, self.norm = nn.Linear(d, d), nn.Linear(d, d), nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.q_proj(x) * torch.sigmoid(self.v_proj(x)))


class Toy(nn.Module):
    def __init__(self, d: int = 8, n: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n))
        self.final_norm = nn.LayerNorm(d)

    def forward(self, x):
        h = self.embed(x)
        for block in self.layers:
            h = block(h)
        return self.final_norm(h)


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_module_names_are_the_weight_owning_leaves():
    assert module_names(Toy()) == ["embed", "final_norm", "norm", "q_proj", "v_proj"]


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_frozen_and_full(mode):
    model = set_finetune(Toy(), mode, who="toy")
    assert (trainable(model) == {n for n, _ in model.named_parameters()}) == (mode == "full")
    assert bool(trainable(model)) == (mode == "full")


def test_top_k_trains_the_last_blocks_and_the_extras():
    model = Toy()
    set_finetune(model, "top_k", who="toy", layers=model.layers, top_k=2, extra=[model.final_norm])
    assert {n.split(".")[0] + "." + n.split(".")[1] if n.startswith("layers") else n.split(".")[0]
            for n in trainable(model)} == {"layers.1", "layers.2", "final_norm"}


def test_top_k_out_of_range_is_one_line():
    model = Toy()
    with pytest.raises(ConfigError, match=r"top_k must be in 1\.\.3") as err:
        set_finetune(model, "top_k", who="toy", layers=model.layers, top_k=4)
    assert "\n" not in str(err.value)


def test_lora_freezes_the_base_and_trains_adapters_only():
    torch.manual_seed(0)
    model = apply_lora(Toy(), r=2, alpha=4.0, dropout=0.0, target_modules=("q_proj", "v_proj"), who="toy")
    names = trainable(model)
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert len(names) == 3 * 2 * 2  # 3 blocks x (q, v) x (A, B)
    n_train, n_total = count_params(model)
    assert 0 < n_train < n_total


def test_lora_base_weights_stay_bit_identical_under_training():
    torch.manual_seed(0)
    model = apply_lora(Toy(), r=2, alpha=4.0, dropout=0.0, target_modules=("q_proj",), who="toy")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    after = dict(model.named_parameters())
    # identity of untouched weights: the one place an exact comparison is right
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in after.items() if "lora_B" in n)


def test_unknown_target_lists_the_module_names():
    with pytest.raises(ConfigError) as err:
        apply_lora(Toy(), r=2, alpha=4.0, dropout=0.0, target_modules=("q_proj", "query"), who="model toy")
    msg = str(err.value)
    assert "\n" not in msg and "model toy" in msg and "['query']" in msg
    assert "q_proj, v_proj" in msg


def test_regex_targets_and_unsupported_module_types():
    check_targets(Toy(), r"layers\.0\.q_proj", "toy")
    with pytest.raises(ConfigError, match="matches no module"):
        check_targets(Toy(), r".*\.k_proj", "toy")
    with pytest.raises(ConfigError, match="LoRA cannot adapt") as err:
        apply_lora(Toy(), r=2, alpha=4.0, dropout=0.0, target_modules=("norm",), who="toy")
    assert "\n" not in str(err.value)


def test_adapter_folder_loads_with_peft_and_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    base = Toy()
    fresh = copy.deepcopy(base)  # peft wraps in place: keep an untouched copy of the base weights
    outer = nn.Module()
    outer.backbone = apply_lora(base, r=2, alpha=4.0, dropout=0.0, target_modules=("q_proj", "v_proj"), who="toy")
    with torch.no_grad():
        for n, p in outer.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_()
    x = torch.randn(3, 4)
    expected = outer.backbone(x)
    assert set(peft_models(outer)) == {"backbone"}
    folders = save_adapters(outer, tmp_path / "adapters")
    folder = folders["backbone"]
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    loaded = load_adapter(fresh, folder).eval()
    torch.testing.assert_close(loaded(x), expected)
    state, config = adapter_state(outer.backbone)
    assert config.r == 2 and set(config.target_modules) == {"q_proj", "v_proj"}
    assert state and all("lora_" in k for k in state)


def test_plain_models_have_no_adapters(tmp_path):
    assert peft_models(Toy()) == {} and save_adapters(Toy(), tmp_path) == {}


def test_adapters_a_forward_never_calls_are_found():
    class ReadsWeights(Toy):
        def forward(self, x):  # uses q_proj's weight, never calls q_proj
            h = self.embed(x)
            return h @ self.layers[0].q_proj.weight.T + self.layers[0].v_proj(h)

    model = apply_lora(ReadsWeights(), r=2, alpha=4.0, dropout=0.0, target_modules=("q_proj", "v_proj"), who="toy")
    dead = unreached_adapters(model, lambda: model(torch.randn(2, 4)))
    # blocks 1 and 2 are not used at all; block 0 calls v_proj but reads q_proj's weight
    assert dead == ["base_model.model.layers.0.q_proj"] + [f"base_model.model.layers.{i}.{m}"
                                                            for i in (1, 2) for m in ("q_proj", "v_proj")]
