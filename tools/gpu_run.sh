#!/usr/bin/env bash
# The GPU measurements the docs quote, on a machine with no network (the package runs from src/;
# the default model and extra wheels come through tools/gpu_stage.sh). JSON and logs go to $OUT.
# usage: tools/gpu_run.sh tests                 # every gpu-marked test (default-model ones need $GGUF)
#        tools/gpu_run.sh prefill               # TTFT, random:qwen2.5-7b, sparse, 1M (MODEL, LENGTHS,
#                                               #   ATTENTION, REPEAT override; EXTRA: more flags)
#        tools/gpu_run.sh decode                # decode ms/token, random:qwen2.5-7b-1m, 128K and 1M
#        tools/gpu_run.sh fidelity              # default model + DCA: NLL by position, dense vs sparse
#        tools/gpu_run.sh structured            # default model: decode ms/token with and without a grammar
#        tools/gpu_run.sh fp8-accuracy          # default model + DCA, bf16: the FP8 KV cache against the
#                                               #   bf16 one (NLL by position over 64K; paired RULER needles
#                                               #   and passkey at 16K and 32K; SAMPLES, DEPTHS)
#        tools/gpu_run.sh fp8-linear-ttft        # random:qwen2.5-7b-1m TTFT, bf16, --quantization fp8, fp8 but qkv_proj (LENGTHS)
#        tools/gpu_run.sh fp8-linear-accuracy    # default model + DCA: NLL by position over 64K, bf16 against
#                                               #   --quantization fp8
#        tools/gpu_run.sh context               # a kept 1M context, random:qwen2.5-7b-1m: prefill, then a new
#                                               #   process loading it from RAM and from disk (LENGTH)
#        tools/gpu_run.sh serve-long            # `turboctx serve` with defaults (MODEL, MAXLEN, EXTRA) and one
#                                               #   LONG-token prompt among 8 streaming clients, alone and beside
#        tools/gpu_run.sh coldstart             # an HF folder of random PRESET weights (sharded safetensors +
#                                               #   sparse config), then `turboctx serve` on it to the first token
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tc() { python3 -m turboctx.cli "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
case "${1:-}" in
  tests)
    python3 -m pytest -q -m gpu tests/ -p no:cacheprovider ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/gpu_tests.log" | tail -25 ;;
  prefill)
    m=${MODEL:-random:qwen2.5-7b}; a=${ATTENTION:-sparse}; l=${LENGTHS:-1m}
    tc bench prefill --model "$m" --attention "$a" --lengths "$l" --repeat "${REPEAT:-2}" ${EXTRA:-} \
      --json "$OUT/prefill_${m#random:}_${a}_${l//,/_}.json" 2>&1 | tee -a "$OUT/prefill.log" | grep -v -i warn ;;
  decode)
    m=${MODEL:-random:qwen2.5-7b-1m}
    tc bench decode --model "$m" --lengths "${LENGTHS:-128k,1m}" --steps 64 --repeat 3 ${EXTRA:-} \
      --json "$OUT/decode_${m#random:}.json" 2>&1 | tee -a "$OUT/decode.log" | grep -v -i warn ;;
  fidelity)   # NLL by position over 64K tokens of the ASV, fp32: dense DCA against sparse DCA
    tc eval ppl --model "$GGUF" --device cuda --dtype float32 --dca --lengths 64k --max-model-len 65600 \
      --setting attention=dense --setting attention=sparse,sparse_threshold=4096 ${EXTRA:-} \
      --out "$OUT/fidelity" 2>&1 | grep -v -i warn | tail -14 ;;
  structured)
    python3 tools/bench_structured_decode.py --model "$GGUF" --device cuda --tokens "${TOKENS:-128}" \
      --batch "${BATCH:-1,8}" --repeat "${REPEAT:-5}" --json "$OUT/structured_decode.json" 2>&1 | grep -v -i warn ;;
  fp8-accuracy)
    E="--model $GGUF --device cuda --dca"
    tc eval ppl $E --lengths 64k --max-model-len 65600 --setting kv_cache_dtype=auto \
      --setting kv_cache_dtype=fp8 --out "$OUT/fp8_ppl" 2>&1 | grep -v -i warn | tail -14
    for kv in auto fp8; do
      tc eval ruler $E --max-model-len 34000 --kv-cache-dtype $kv --lengths 16k,32k --samples "${SAMPLES:-60}" \
        --tasks niah_single_2,niah_multikey_1,niah_multivalue --seed 7 --out "$OUT/fp8_ruler_$kv" 2>&1 | tail -2
      tc eval passkey $E --max-model-len 34000 --kv-cache-dtype $kv --lengths 16k,32k \
        --depths "random:${DEPTHS:-60}" --trials 2 --seed 19 --out "$OUT/fp8_passkey_$kv" 2>&1 | tail -2
    done
    for t in ruler passkey; do
      tc eval paired --a "$OUT/fp8_${t}_auto" --b "$OUT/fp8_${t}_fp8" --json "$OUT/fp8_${t}_paired.json"
    done ;;
  fp8-linear-ttft)
    for q in none fp8 fp8-but-qkv; do
      opts="--quantization ${q%%-*}"; [ "$q" = fp8-but-qkv ] && opts="$opts --quantization-ignored-layers qkv_proj"
      tc bench prefill --model random:qwen2.5-7b-1m --lengths "${LENGTHS:-128k,1m}" --repeat "${REPEAT:-2}" \
        $opts --json "$OUT/prefill_7b-1m_quant_$q.json" 2>&1 | grep -v -i warn | tail -6
    done ;;
  fp8-linear-accuracy)
    tc eval ppl --model "$GGUF" --device cuda --dca --lengths 64k --max-model-len 65600 \
      --setting quantization=none --setting quantization=fp8 \
      --setting quantization=fp8,quantization_ignored_layers=qkv_proj --out "$OUT/fp8_linear_ppl" 2>&1 | grep -v -i warn | tail -14 ;;
  context)
    df -h / /dev/shm "${TURBOCTX_HOME:-$HOME}" 2>/dev/null; free -g | head -2
    tc bench context --model "${MODEL:-random:qwen2.5-7b-1m}" --length "${LENGTH:-1m}" ${EXTRA:-} \
      --json "$OUT/kept_context_${LENGTH:-1m}.json" 2>&1 | tee -a "$OUT/context.log" | grep -v -i warn
    tc context rm --all ;;
  serve-long)
    m=${MODEL:-random:qwen2.5-7b-1m}; L=${LONG:-1048576}; port=8011
    # python itself in the background, not the tc function: $! must be the server, whom the
    # stop signal has to reach (a function's subshell passed SIGINT on to no one)
    python3 -m turboctx.cli serve "$m" --max-model-len "${MAXLEN:-1050000}" --port $port ${EXTRA:-} \
      > "$OUT/server_$L.log" 2>&1 &
    srv=$!
    python3 - <<PY || { tail -20 "$OUT/server_$L.log"; kill $srv; exit 1; }
import os, time, urllib.request
for _ in range(600):
    try:
        os.kill($srv, 0)                  # the server died at start: stop waiting
    except OSError:
        raise SystemExit("the server exited before it was ready")
    try:
        urllib.request.urlopen("http://127.0.0.1:$port/health", timeout=2); break
    except Exception:
        time.sleep(0.5)
else:
    raise SystemExit("the server did not come up")
PY
    date +"bench starts %T"; tc bench serve --url http://127.0.0.1:$port --concurrency 8 --prompt-len 64 --max-tokens 128 --token-ids \
      --long-prompt-len "$L" --baseline-s "${BASELINE:-10}" --json "$OUT/serve_long_$L.json" \
      --plot "$OUT/serve_long_$L.png" 2>&1 | grep -v -i warn
    t0=$(date +%s); kill -TERM $srv; wait $srv; rc=$?
    echo "server stopped in $(( $(date +%s) - t0 )) s, exit status $rc"
    grep -i -E "error|traceback" "$OUT/server_$L.log" | head -5 ;;
  coldstart)
    p=${PRESET:-qwen2.5-7b-1m}; dir=${DIR:-/root/stage/hf-$p}
    [ -f "$dir/model.safetensors.index.json" ] || python3 tools/make_random_hf_folder.py --preset "$p" --out "$dir" --device cuda
    tc bench coldstart --model "$dir" --max-model-len "${MAXLEN:-1010000}" --repeat "${REPEAT:-2}" ${EXTRA:-} \
      --json "$OUT/coldstart_$p.json" 2>&1 | grep -v -i warn ;;
  *) echo "usage: tools/gpu_run.sh tests|prefill|decode|fidelity|structured|fp8-accuracy|fp8-linear-ttft|fp8-linear-accuracy|context|serve-long|coldstart"; exit 2 ;;
esac
