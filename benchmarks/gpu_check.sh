#!/usr/bin/env bash
# The loop on a CUDA device, as one short script (a lent GPU machine runs it in a few minutes):
#   1. the tests that need a GPU (method state on the device, the loop placing model, batches and state);
#   2. benchmarks/loop.py on CUDA in bf16: samples/s of fairray's loop vs a plain PyTorch loop, peak memory.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (writes gpu_tests.txt and loop_cuda_bf16.json there)
# On a bare GPU machine with no network: fairray runs from this checkout (PYTHONPATH), and Python packages that
# machine lacks travel as wheels in .whl/ (installed with --no-index into /tmp/site; see the device notes).
# A failing GPU test is recorded and the benchmarks still run; the script's exit status is the tests' status.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c "import fairray" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_check: installing the wheels in .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$py" -c "import fairray, fairray.train" \
    || { echo "gpu_check: fairray does not import here; carry the missing packages as wheels in .whl/" >&2; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  || exit 1
"$py" -m pytest -q -m gpu -p no:cacheprovider tests > "$out/gpu_tests.txt" 2>&1
tests=$?
tail -20 "$out/gpu_tests.txt"
for precision in bf16 fp32; do
  "$py" benchmarks/loop.py --device cuda --precision "$precision" --epochs 10 --wave-epochs 5 --repeats 3 \
    --json "$out/loop_cuda_$precision.json" | tee "$out/loop_cuda_$precision.txt" \
    || echo "gpu_check: benchmarks/loop.py --precision $precision failed (see above)" >&2
done
[ "$tests" -eq 0 ] || echo "gpu_check: the GPU tests failed (exit $tests); see $out/gpu_tests.txt" >&2
exit "$tests"
