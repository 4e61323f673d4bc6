"""Training-step throughput and peak memory of the backbone models, per backbone and finetune mode.

Each row times full training steps (forward, loss, backward, AdamW step over the trainable parameter groups,
as fairray's loop builds them) on random inputs of a fixed shape, after warm-up steps:

* CPU: tiny random configs (``ssl``: :data:`fairray.models.ssl.TINY`, 32 wide, 2 blocks); peak memory is the
  growth of the process's resident set while the timed steps run (sampled every 2 ms): what the steps add
  beyond the warm-up's high-water mark (it reads 0 when the allocator reuses memory freed by earlier rows, so
  compare CPU rows with care; the CUDA figure is the true per-row peak);
* CUDA (when a GPU is visible): the same, plus Base-sized random configs (``ssl``: WavLM Base, 768 wide, 12
  blocks, group-norm feature encoder; ``text``: BERT-base; ``qwen2_audio``: Qwen2-Audio-7B's shapes, bf16
  weights, 30 s mel windows) under bf16 autocast; peak memory is ``torch.cuda.max_memory_allocated``.

Model FLOPs per step are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions, forward and backward as executed: a frozen weight costs no weight gradient); achieved FLOP/s =
FLOPs / step time, and on CUDA the model FLOPs utilisation (MFU) against the GPU's dense bf16 peak
(``--peak-tflops``, default 989 for an H200 / H100 SXM).

Other backbones join by adding a builder to :data:`BUILDERS`: ``builder(root, size, finetune, device)`` ->
``(model, batch)`` where ``batch(n)`` gives the model's input mapping for ``n`` samples; :data:`MODES` names the
finetune modes of a backbone that lacks some.

    python benchmarks/backbones.py [--steps 5] [--batch 8] [--seconds 1.0] [--gpu-batch 32] [--gpu-seconds 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from fairray.inputs import SAMPLE_RATE, InputSpec, Padded
from fairray.models import MODELS, build_model
from fairray.models.ssl import write_random_model
from fairray.train.loop import param_groups

Batch = Callable[[int], dict]
Builder = Callable[[Path, str, str, torch.device], tuple[torch.nn.Module, Batch]]
H200_BF16_DENSE_TFLOPS = 989.0
N_CLASSES = 4


def ssl_builder(seconds: float) -> Builder:
    """The ``ssl`` model (WavLM) on ``seconds`` of audio per clip (clips of 50-100 % of that length on CPU,
    all full length on CUDA: the group-norm Base encoder runs padded clips one by one)."""
    folders: dict[str, Path] = {}

    def build(root: Path, size: str, finetune: str, device: torch.device) -> tuple[torch.nn.Module, Batch]:
        if size not in folders:
            norm = "group" if size == "base" else "layer"
            folders[size] = write_random_model(root / f"wavlm-{size}", "wavlm", size=size, norm=norm)
        params = MODELS.get("ssl").Params(model_path=str(folders[size]), finetune=finetune, top_k=1)
        model = build_model("ssl", params, {"audio": InputSpec("audio", "waveform")}, N_CLASSES).to(device)
        samples = int(seconds * SAMPLE_RATE)

        def batch(n: int) -> dict:
            g = torch.Generator().manual_seed(0)
            full = device.type == "cuda"
            lengths = torch.full((n,), samples) if full else torch.randint(samples // 2, samples + 1, (n,), generator=g)
            mask = torch.arange(samples)[None, :] < lengths[:, None]
            values = torch.randn(n, samples, generator=g) * 0.1 * mask
            return {"audio": Padded(values, mask).to(device)}

        return model, batch

    return build


def text_builder(tokens: int) -> Builder:
    """The ``text`` model (BERT: tiny, or BERT-base for ``base``) on rows of 50-100 % of ``tokens`` ids."""
    from fairray.models.text import write_random_model as write_bert

    folders: dict[str, Path] = {}

    def build(root: Path, size: str, finetune: str, device: torch.device) -> tuple[torch.nn.Module, Batch]:
        if size not in folders:
            folders[size] = write_bert(root / f"bert-{size}", size)
        params = MODELS.get("text").Params(model_path=str(folders[size]), finetune=finetune, top_k=1)
        model = build_model("text", params, {"text": InputSpec("text", "tokens")}, N_CLASSES).to(device)

        def batch(n: int) -> dict:
            g = torch.Generator().manual_seed(0)
            lengths = torch.randint(tokens // 2, tokens + 1, (n,), generator=g)
            mask = torch.arange(tokens)[None, :] < lengths[:, None]
            ids = torch.randint(1000, 30000, (n, tokens), generator=g) * mask
            return {"text": Padded(ids, mask).to(device)}

        return model, batch

    return build


def qwen2_audio_builder(seconds: float) -> Builder:
    """The ``qwen2_audio`` model (head classifier, speech-only prompt) on ``seconds`` of audio per clip: the
    tiny config, or Qwen2-Audio-7B's shapes for ``base`` (random bf16 weights written once, ~17 GB; its
    feature extractor pads every clip to 30 s = 750 audio tokens; gradient checkpointing on)."""
    from fairray.models.qwen2_audio import write_random_model as write_qwen

    folders: dict[str, Path] = {}

    def build(root: Path, size: str, finetune: str, device: torch.device) -> tuple[torch.nn.Module, Batch]:
        shape = "7b" if size == "base" else "tiny"
        if shape not in folders:
            folders[shape] = write_qwen(root / f"qwen2-audio-{shape}", shape, device=device.type)
        params = MODELS.get("qwen2_audio").Params(model_path=str(folders[shape]), finetune=finetune,
                                                  gradient_checkpointing=shape == "7b")
        model = build_model("qwen2_audio", params, {"audio": InputSpec("audio", "waveform")}, N_CLASSES).to(device)
        samples = int(seconds * SAMPLE_RATE)

        def batch(n: int) -> dict:
            g = torch.Generator().manual_seed(0)
            values = torch.randn(n, samples, generator=g) * 0.1
            return {"audio": Padded(values, torch.ones(n, samples, dtype=torch.bool)).to(device)}

        return model, batch

    return build


#: backbone name -> builder.
BUILDERS: dict[str, Callable[[argparse.Namespace], Builder]] = {
    "ssl": lambda args: ssl_builder(args.seconds),
    "text": lambda args: text_builder(args.tokens),
    "qwen2_audio": lambda args: qwen2_audio_builder(args.seconds),
}
GPU_BUILDERS: dict[str, Callable[[argparse.Namespace], Builder]] = {
    "ssl": lambda args: ssl_builder(args.gpu_seconds),
    "text": lambda args: text_builder(args.tokens),
    "qwen2_audio": lambda args: qwen2_audio_builder(args.gpu_seconds),
}
FINETUNE = ("frozen", "top_k", "lora", "full")
#: The finetune modes a backbone has, where not all of FINETUNE (Qwen2-Audio trains adapters or its head only).
MODES = {"qwen2_audio": ("frozen", "lora")}


class RssPeak:
    """Peak resident-set growth of this process while the block runs (sampled from /proc/self/statm)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(self.interval_s)

    def __enter__(self) -> RssPeak:
        self.base = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(model: torch.nn.Module, batch: Batch, n: int, steps: int, warmup: int, device: torch.device,
            bf16: bool) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-4)
    inputs = batch(n)
    y = torch.arange(n, device=device) % N_CLASSES

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), y)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        watch = None
    else:
        watch = RssPeak().__enter__()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    if watch is not None:
        watch.__exit__()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else watch.peak
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"samples_s": n * steps / elapsed, "step_ms": 1e3 * elapsed / steps, "peak_mib": peak / 2**20,
            "gflops_s": flops / (elapsed / steps) / 1e9, "gflop_step": flops / 1e9, "trainable": trainable,
            "total": sum(p.numel() for p in model.parameters())}


def row(name: str, size: str, mode: str, device: str, r: dict[str, float], peak_tflops: float | None) -> str:
    mfu = f"{100 * r['gflops_s'] / 1e3 / peak_tflops:5.1f}%" if peak_tflops else "    -"
    return (f"{name:<12} {size:<5} {mode:<7} {device:<5} {r['samples_s']:>9.1f} {r['step_ms']:>9.1f} "
            f"{r['peak_mib']:>9.1f} {r['gflop_step']:>10.2f} {r['gflops_s']:>9.1f} {mfu:>6} "
            f"{r['trainable']:>11,d} / {r['total']:,d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="clips per step (tiny configs)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds of audio per clip (tiny configs)")
    parser.add_argument("--tokens", type=int, default=64, help="token ids per row (text)")
    parser.add_argument("--gpu-batch", type=int, default=32, help="clips per step (Base-sized configs, CUDA)")
    parser.add_argument("--gpu-seconds", type=float, default=4.0)
    parser.add_argument("--gpu-modes", default="lora,frozen", help="finetune modes of the Base-sized rows")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the GPU's dense bf16 peak, TFLOP/s (H200 / H100 SXM: 989)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft / transformers deprecation notices
    import transformers

    transformers.utils.logging.disable_progress_bar()

    print(f"{'backbone':<12} {'size':<5} {'mode':<7} {'dev':<5} {'samples/s':>9} {'step ms':>9} {'peak MiB':>9} "
          f"{'GFLOP/step':>10} {'GFLOP/s':>9} {'MFU':>6} {'trainable / total params':>12}")
    with tempfile.TemporaryDirectory(prefix="fairray-bench-") as d:
        root = Path(d)
        cpu = torch.device("cpu")
        for name, make in BUILDERS.items():
            builder = make(args)
            for mode in MODES.get(name, FINETUNE):
                model, batch = builder(root, "tiny", mode, cpu)
                print(row(name, "tiny", mode, "cpu", measure(model, batch, args.batch, args.steps, args.warmup, cpu,
                                                              bf16=False), None), flush=True)
        if not torch.cuda.is_available():
            print("no GPU available: the CUDA rows (Base-sized configs, bf16, MFU) were not measured")
            return
        cuda = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name()}; MFU against {args.peak_tflops:g} TFLOP/s dense bf16")
        for name, make in GPU_BUILDERS.items():
            builder = make(args)
            has = MODES.get(name, FINETUNE)
            for size, modes, n in (("tiny", has, args.batch), ("base", args.gpu_modes.split(","), args.gpu_batch)):
                for mode in [m for m in modes if m in has]:
                    model, batch = builder(root, size, mode, cuda)
                    print(row(name, size, mode, "cuda", measure(model, batch, n, args.steps, args.warmup, cuda,
                                                                 bf16=True), args.peak_tflops), flush=True)
                    del model
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
