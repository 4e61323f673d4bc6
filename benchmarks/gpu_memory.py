"""GPU memory per trial of the two backbone search spaces, measured on the CPU (no GPU needed).

What a training step holds on the device is (1) the base weights, (2) per trainable parameter its fp32 value,
gradient and AdamW's two moments, (3) the activations autograd saves for the backward pass, the peak. (1) and
(2) are counted from the real fairray model (``build_model``, the same LoRA / finetune wrapping the loop trains);
(3) is measured: one training forward + loss of that model under bf16 autocast runs under a
``TorchDispatchMode`` that records the storage of every tensor a kernel makes, and the distinct storages still
alive after the forward (what autograd saved, checkpointed blocks' inputs, autocast's bf16 weight copies, the
logits) are summed. Nothing is estimated from a formula except the final sum.

Full-size models cannot be written here (Qwen2-Audio-7B is 17 GB of weights), so each model is built at its
full width as depth slices of 1 and 2 blocks (audio encoder and decoder alike); parameters and saved bytes are
linear in the number of identical blocks, so the two slices give the per-block cost and the rest, extrapolated
to the full depth (WavLM Base: 12 blocks; Qwen2-Audio-7B: 32 + 32). The slices' vocabulary is small (its
embedding and LM head are frozen weights, counted from the full config instead). Activations are measured at
two batch sizes and extrapolated linearly to the search space's batch; with gradient checkpointing the forward
keeps each block's input (measured with checkpointing on), and the backward pass adds one block's activations
while that block is recomputed (the per-block figure without checkpointing).

Not counted: the CUDA context (~0.5 GB), allocator fragmentation (often 10-20 %), and kernels' workspaces: on a GPU
``torch.cuda.max_memory_allocated`` is the figure to trust, and ``benchmarks/backbones.py`` prints it there.

    python benchmarks/gpu_memory.py [--wavlm-batch 32 --wavlm-seconds 4] [--qwen-batch 8]
"""

from __future__ import annotations

import argparse
import copy
import gc
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fairray.inputs import SAMPLE_RATE, InputSpec, Padded
from fairray.models import MODELS, build_model

N_CLASSES = 4
GIB = 2**30


class Retained(TorchDispatchMode):
    """Records the storage of every tensor the kernels produce while active (autocast's casts included)."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[StorageWeakRef, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                self.made.append((StorageWeakRef(storage), storage.data_ptr(), storage.nbytes()))
        return out

    def alive(self, exclude: set[int]) -> int:
        """Bytes of the distinct storages made while active that are still alive, those in ``exclude``
        (storages that existed before, which views such as a weight's transpose share) left out."""
        return sum(dict((ptr, n) for ref, ptr, n in self.made if not ref.expired() and ptr not in exclude).values())


def retained_bytes(model: torch.nn.Module, run: Callable[[], torch.Tensor]) -> int:
    """Bytes that one forward + loss (``run``) leaves alive until the backward pass: what autograd saved,
    the inputs of checkpointed blocks, autocast's bf16 weight copies, the logits; the model's own weights are
    made before and do not count."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    gc.collect()
    mode = Retained()
    with mode:
        loss = run()
    if not loss.requires_grad:
        raise RuntimeError("the loss does not require grad: nothing of the model trains")
    gc.collect()
    kept = mode.alive(own)
    del loss
    return kept


@dataclass(frozen=True)
class Counts:
    total: int  # parameters
    trainable: int
    weight_bytes: int  # of the frozen and trainable weights, in the dtype the model holds them
    activations: int  # saved bytes of one forward + loss


def measure(model: torch.nn.Module, inputs: dict, n: int) -> Counts:
    model.train()
    y = torch.arange(n) % N_CLASSES

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.nn.functional.cross_entropy(model(inputs).float(), y)

    params = list(model.parameters())
    return Counts(total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad),
                  weight_bytes=sum(p.numel() * p.element_size() for p in params), activations=retained_bytes(model, run))


def linear(at1: float, at2: float, x: float) -> float:
    """The value at ``x`` of the line through (1, at1) and (2, at2)."""
    return at1 + (at2 - at1) * (x - 1)


@dataclass(frozen=True)
class Plan:
    name: str
    setting: str
    total: float
    trainable: float
    weights: float  # bytes
    states: float  # bytes: fp32 value + gradient + 2 AdamW moments per trainable parameter
    activations: float  # bytes at the peak

    def row(self) -> str:
        peak = self.weights + self.states + self.activations
        return (f"| {self.name} | {self.setting} | {self.total / 1e6:,.0f} M | {self.trainable / 1e6:,.2f} M | "
                f"{self.weights / GIB:.1f} | {self.states / GIB:.2f} | {self.activations / GIB:.1f} | "
                f"**{peak / GIB:.1f}** |")


def plan(name: str, setting: str, build: Callable[[int, bool], tuple[torch.nn.Module, Callable[[int], dict]]],
         depth: int, batch: int, probe: tuple[int, int], extra_weights: int = 0, extra_params: int = 0
         ) -> tuple[Plan, Plan]:
    """Measure ``build(blocks, checkpointing)`` slices of 1 and 2 blocks at the two ``probe`` batch sizes and
    extrapolate to ``depth`` blocks and ``batch`` rows: the plan without and with gradient checkpointing."""
    at: dict[tuple[int, bool], tuple[Counts, Counts]] = {}
    for blocks in (1, 2):
        for ckpt in (False, True):
            model, inputs = build(blocks, ckpt)
            at[blocks, ckpt] = tuple(measure(model, inputs(b), b) for b in probe)  # type: ignore[assignment]
            del model
    b1, b2 = probe

    def act(blocks: int, ckpt: bool) -> float:  # saved bytes of a `blocks` slice at `batch` rows
        lo, hi = at[blocks, ckpt]
        return lo.activations + (hi.activations - lo.activations) * (batch - b1) / (b2 - b1)

    full = linear(act(1, False), act(2, False), depth)
    per_block = act(2, False) - act(1, False)
    ckpt_total = linear(act(1, True), act(2, True), depth) + per_block  # the inputs kept + one block recomputed
    c1, c2 = at[1, False][0], at[2, False][0]
    total = linear(c1.total, c2.total, depth) + extra_params
    trainable = linear(c1.trainable, c2.trainable, depth)
    weights = linear(c1.weight_bytes, c2.weight_bytes, depth) + extra_weights
    return (Plan(name, setting, total, trainable, weights, 16 * trainable, full),
            Plan(name, setting + ", gradient checkpointing", total, trainable, weights, 16 * trainable, ckpt_total))


def wavlm(root: Path, seconds: float, finetune: str) -> Callable[[int, bool], tuple[torch.nn.Module, Callable]]:
    from fairray.models.ssl import write_random_model

    def build(blocks: int, ckpt: bool) -> tuple[torch.nn.Module, Callable[[int], dict]]:
        folder = root / f"wavlm-base-{blocks}"
        if not folder.exists():  # WavLM Base's shapes (768 wide, group-norm feature encoder), `blocks` deep
            write_random_model(folder, "wavlm", size="base", norm="group", num_hidden_layers=blocks)
        params = MODELS.get("ssl").Params(model_path=str(folder), finetune=finetune, top_k=1,
                                          gradient_checkpointing=ckpt)
        model = build_model("ssl", params, {"audio": InputSpec("audio", "waveform")}, N_CLASSES)
        samples = int(seconds * SAMPLE_RATE)

        def inputs(n: int) -> dict:
            g = torch.Generator().manual_seed(0)
            return {"audio": Padded(torch.randn(n, samples, generator=g) * 0.1, torch.ones(n, samples, dtype=torch.bool))}

        return model, inputs

    return build


def qwen2_audio(root: Path) -> Callable[[int, bool], tuple[torch.nn.Module, Callable]]:
    from fairray.models import qwen2_audio as q

    def build(blocks: int, ckpt: bool) -> tuple[torch.nn.Module, Callable[[int], dict]]:
        folder = root / f"qwen2-audio-7b-{blocks}"
        if not folder.exists():  # Qwen2-Audio-7B's widths, `blocks` deep in encoder and decoder, a small vocab
            shapes = copy.deepcopy(q.SIZES["7b"])
            shapes["audio_config"]["encoder_layers"] = blocks
            shapes["text_config"].update(num_hidden_layers=blocks, vocab_size=1024)
            shapes["audio_token_index"] = 1023
            q.SIZES[f"7b-slice-{blocks}"] = shapes
            q.write_random_model(folder, f"7b-slice-{blocks}")
        params = MODELS.get("qwen2_audio").Params(model_path=str(folder), finetune="lora", weights_dtype="bfloat16",
                                                  gradient_checkpointing=ckpt)
        model = build_model("qwen2_audio", params, {"audio": InputSpec("audio", "waveform")}, N_CLASSES)

        def inputs(n: int) -> dict:  # 10 s clips (max_seconds of the search space): 250 audio tokens
            g = torch.Generator().manual_seed(0)
            samples = 10 * SAMPLE_RATE
            return {"audio": Padded(torch.randn(n, samples, generator=g) * 0.1, torch.ones(n, samples, dtype=torch.bool))}

        return model, inputs

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wavlm-batch", type=int, default=32, help="clips per step (search_spaces/wavlm.yaml)")
    parser.add_argument("--wavlm-seconds", type=float, default=4.0)
    parser.add_argument("--qwen-batch", type=int, default=8, help="clips per step (minmaxgap_qwen2audio.yaml)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from fairray.models.qwen2_audio import SIZES

    text = SIZES["7b"]["text_config"]
    # the full vocabulary's embedding and (untied) LM head, bf16, frozen; the slices have 1 024 ids
    vocab_params = (text["vocab_size"] - 1024) * text["hidden_size"] * 2
    print("| model | setting | parameters | trainable | weights GiB | trainable states GiB | activations GiB "
          "| peak GiB |\n|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="fairray-gpu-memory-") as d:
        root = Path(d)
        wb, ws = args.wavlm_batch, args.wavlm_seconds
        for finetune in ("lora", "full"):
            for p in plan("WavLM Base (fp32 weights, bf16 autocast)", f"{finetune}, batch {wb} x {ws:g} s",
                          wavlm(root, ws, finetune), 12, wb, (1, 2)):
                print(p.row(), flush=True)
        qb = args.qwen_batch
        for p in plan("Qwen2-Audio-7B (bf16 weights)", f"LoRA r 8 (q, v), batch {qb} x 10 s clips", qwen2_audio(root),
                      32, qb, (1, 2), extra_weights=2 * vocab_params, extra_params=vocab_params):
            print(p.row(), flush=True)
    print("\nNot counted: the CUDA context (~0.5 GB), allocator fragmentation, kernel workspaces.")


if __name__ == "__main__":
    main()
