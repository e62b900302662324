#!/usr/bin/env bash
# GPU measurements on the H200 machine (no network there; the package runs from src/).
# usage: scripts/gpu_run.sh tests|bench|prefill-1m     (writes JSON/PNG/logs under $OUT)
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tb() { python3 -m turboctx.cli bench "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
case "${1:-tests}" in
  tests)
    python3 -m pytest -q -m gpu tests/test_attention_kernels.py tests/test_gpu_engine.py tests/test_sparse.py \
      -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 ;;
  bench)
    tb prefill --model random:qwen2.5-7b --lengths 32k,128k,256k --repeat 2 --compare hf \
      --price-per-gpu-hour 3.5 --json "$OUT/prefill_7b.json" --plot "$OUT/prefill_7b.png" 2>&1 | tee "$OUT/prefill.log"
    tb decode --model random:qwen2.5-7b --lengths 128k,1m --steps 64 --repeat 3 \
      --json "$OUT/decode_7b.json" 2>&1 | tee "$OUT/decode.log" ;;
  prefill-1m)
    tb prefill --model random:qwen2.5-7b --lengths 1m --repeat 1 \
      --price-per-gpu-hour 3.5 --json "$OUT/prefill_7b_1m.json" 2>&1 | tee "$OUT/prefill_1m.log" ;;
esac
