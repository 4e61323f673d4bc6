#!/usr/bin/env bash
# The loop on a CUDA device, as one short script (a lent GPU machine runs it in a few minutes):
#   1. the tests that need a GPU (method state on the device, the loop placing model, batches and state);
#   2. benchmarks/loop.py on CUDA in bf16: samples/s of fairray's loop vs a plain PyTorch loop, peak memory.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (writes gpu_tests.txt and loop_cuda_bf16.json there)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c "import fairray" 2>/dev/null; then
  "$py" -m pip install -q -e '.[test]'
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.__version__, torch.cuda.get_device_name(0))"
"$py" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -20 | tee "$out/gpu_tests.txt"
"$py" benchmarks/loop.py --device cuda --precision bf16 --epochs 10 --wave-epochs 5 --repeats 3 --json "$out/loop_cuda_bf16.json" \
  | tee "$out/loop_cuda_bf16.txt"
"$py" benchmarks/loop.py --device cuda --precision fp32 --epochs 10 --wave-epochs 5 --repeats 3 --json "$out/loop_cuda_fp32.json" \
  | tee "$out/loop_cuda_fp32.txt"
