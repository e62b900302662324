#!/usr/bin/env bash
# Tensor-parallel prefill on 2 GPUs, from the repo root of a 2-GPU machine (the package runs from
# src/; worker ranks inherit PYTHONPATH and this environment).
# usage: tools/bench_tensor_parallel.sh [all|check|7b|14b-dense|14b-sparse]   (JSON + logs under $OUT)
#   check       2 GPUs visible; tp=2 gives tp=1's tokens and logprobs (random:qwen2.5-0.5b, fp32)
#   7b          random:qwen2.5-7b at 128K, tp=1 then tp=2 (target: tp=2 >= 1.7x faster)
#   14b-dense   random:qwen2.5-14b dense at 256K, tp=2
#   14b-sparse  random:qwen2.5-14b sparse prefill at 1M, tp=2 (target: TTFT <= 60 s)
# Every row reports peak_memory_gib_per_rank (torch.cuda.max_memory_allocated of each rank's GPU).
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
# NVLink multicast stays off on the shared machines (see the device notes); workers inherit these
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out/tp}; mkdir -p "$OUT"
tb() { python3 -m turboctx.cli bench prefill "$@"; }
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader

check() {   # random weights (no model files on that machine), fp32, token ids as the prompt
  python3 - <<'EOF' 2>&1 | tee "$OUT/check.log"
import torch
from turboctx import LLM, SamplingParams
assert torch.cuda.device_count() >= 2, f"{torch.cuda.device_count()} GPUs visible"
sp = SamplingParams(max_tokens=16, temperature=0, logprobs=5, ignore_eos=True)
prompt = [(7 * i) % 50000 + 100 for i in range(3000)]
kw = dict(max_model_len=4096, dtype="float32", max_num_batched_tokens=1024)
a = LLM("random:qwen2.5-0.5b", **kw).generate([prompt], sp, use_tqdm=False)[0]
torch.cuda.empty_cache()
with LLM("random:qwen2.5-0.5b", tensor_parallel_size=2, **kw) as llm:
    b = llm.generate([prompt], sp, use_tqdm=False)[0]
diff = max(abs(x[t] - y[t]) for x, y in zip(a.logprobs, b.logprobs) for t in x if t in y)
print("same tokens:", a.token_ids == b.token_ids, "| max logprob diff (fp32, NCCL):", f"{diff:.3g}")
EOF
}

b7() {
  for tp in 1 2; do
    tb --model random:qwen2.5-7b --lengths 128k --repeat 3 --tensor-parallel-size $tp \
      --json "$OUT/prefill_7b_128k_tp$tp.json" 2>&1 | tee "$OUT/prefill_7b_128k_tp$tp.log"
  done
  python3 - "$OUT" <<'EOF'
import json, sys
r = {tp: json.load(open(f"{sys.argv[1]}/prefill_7b_128k_tp{tp}.json"))["rows"][0] for tp in (1, 2)}
print(f"7B 128K TTFT: tp=1 {r[1]['ttft_s']:.2f} s, tp=2 {r[2]['ttft_s']:.2f} s -> "
      f"{r[1]['ttft_s'] / r[2]['ttft_s']:.2f}x (target >= 1.7x); "
      f"peak GiB per rank tp=2: {r[2]['peak_memory_gib_per_rank']}")
EOF
}

b14_dense() {
  tb --model random:qwen2.5-14b --lengths 256k --repeat 1 --tensor-parallel-size 2 \
    --json "$OUT/prefill_14b_256k_dense_tp2.json" 2>&1 | tee "$OUT/prefill_14b_256k_dense_tp2.log"
}

b14_sparse() {
  tb --model random:qwen2.5-14b --lengths 1m --repeat 1 --attention sparse --tensor-parallel-size 2 \
    --json "$OUT/prefill_14b_1m_sparse_tp2.json" 2>&1 | tee "$OUT/prefill_14b_1m_sparse_tp2.log"
}

case "${1:-all}" in
  check) check ;;
  7b) b7 ;;
  14b-dense) b14_dense ;;
  14b-sparse) b14_sparse ;;
  all) check; b7; b14_dense; b14_sparse ;;
  *) echo "usage: $0 [all|check|7b|14b-dense|14b-sparse]"; exit 2 ;;
esac
