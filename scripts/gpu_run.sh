#!/usr/bin/env bash
# GPU measurements on the H200 machine (no network there; the package runs from src/).
# usage: scripts/gpu_run.sh tests|bench|prefill-1m|decode|dca-cost|dca-eval|sparse-eval|sparse-passkey|sparse-diag|sparse-paired|dca-decode|profile-eval|
#        suite|ttft-sparse   (JSON/PNG/logs under $OUT; the default-model modes need $GGUF: scripts/gpu_stage.sh)
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tb() { python3 -m turboctx.cli bench "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
case "${1:-tests}" in
  tests)     # every gpu-marked test; the server tests need the wheels of scripts/gpu_stage.sh
    python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15 ;;
  bench)
    tb prefill --model random:qwen2.5-7b --lengths 32k,128k,256k --repeat 2 --compare hf \
      --price-per-gpu-hour 3.5 --json "$OUT/prefill_7b.json" --plot "$OUT/prefill_7b.png" 2>&1 | tee "$OUT/prefill.log"
    tb decode --model random:qwen2.5-7b --lengths 128k,1m --steps 64 --repeat 3 \
      --json "$OUT/decode_7b.json" 2>&1 | tee "$OUT/decode.log" ;;
  decode)   # the split-KV Triton kernel alone, then the engine eager and with CUDA graphs
    timeout 150 python3 scripts/bench_decode_kernel.py --lengths 131072,1048576 2>&1 | tee "$OUT/decode_kernel.log"
    for g in --no-cuda-graphs --cuda-graphs; do
      tb decode --model random:qwen2.5-7b --lengths 128k,1m --steps 64 --repeat 3 $g \
        --json "$OUT/decode_7b${g#--}.json" 2>&1 | tee -a "$OUT/decode.log"
    done ;;
  dca-cost)  # DCA prefill against dense at 128K, same model and run length
    for d in --no-dca --dca; do
      tb prefill --model random:qwen2.5-7b --lengths 128k --repeat 2 $d \
        --json "$OUT/prefill_7b_128k${d#--}.json" 2>&1 | tee -a "$OUT/dca_cost.log"
    done ;;
  dca-eval)  # default model (GGUF=path): NLL by position over 64K tokens, passkey 8K-128K (issue #4)
    RES=/root/res/dca; mkdir -p $RES
    te() { timeout "$1" python3 -m turboctx.cli eval "${@:2}" --model "$GGUF" --device cuda; }
    te 200 ppl --dtype float32 --lengths 64k --max-model-len 65600 --setting dca=false \
      --setting dca=true,dca_yarn=false --setting dca=true \
      --setting dca=true,dca_yarn_per_position=false --out "$RES/ppl64k" 2>&1 | grep -v -i warn | tail -14
    for s in --no-dca --dca; do
      te 230 passkey $s --dtype bfloat16 --max-model-len 132000 --lengths 8k,16k,32k,64k,128k \
        --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --out "$RES/passkey${s#-}" 2>&1 | \
        grep -v -i warn | grep -v "sample/s" | tail -9
    done
    tar czf "$OUT/dca_eval.tgz" -C $RES . ;;
  sparse-eval)  # default model + DCA: calibration (heatmap), then NLL of its file against the dense
    # row measured in session 4 (docs/results/sparse_eval_s4: dense and fixed budgets) (issue #5)
    RES=/root/res/sparse; mkdir -p $RES/cal
    timeout 240 python3 -m turboctx.cli calibrate --model "$GGUF" --dca --length 16k --dtype float32 \
      --device cuda --sparse-threshold 4096 --vertical-size 1000 --slash-size 2000 --out $RES/cal \
      --plot $RES/cal/heatmap.png --json $RES/cal/calibration.json 2>&1 | grep -v -i warn | tail -12
    timeout 150 python3 scripts/sparse_gpu.py fidelity --gguf "$GGUF" --out $RES/fid --budgets 1000x5000 \
      --dense-json docs/results/sparse_eval_s4/fidelity_continuous/sparse_fidelity.json \
      --extra-config $RES/cal/sparse_attention_config.json 2>&1 | tail -12
    tar czf "$OUT/sparse_eval.tgz" -C $RES . ;;
  sparse-diag)  # default model + DCA, bf16: dense and sparse prefill time per length (where the
    # eval time of sparse goes)
    for a in dense sparse; do
      thr=""; [ $a = sparse ] && thr="--sparse-threshold 4096"
      timeout 150 python3 -m turboctx.cli bench prefill --model "$GGUF" --dca --dtype bfloat16 \
        --attention $a $thr --lengths ${LENGTHS:-16k,64k,128k} --repeat 2 \
        --json "$OUT/prefill_default_$a.json" 2>&1 | grep -v -i warn | tail -7
    done ;;
  sparse-passkey)  # DCA, sparse from 4096 tokens, default budgets: passkey 64K-128K (16K-32K are in
    # docs/results/sparse_eval_s4), then the RULER needle tasks at 16K sparse and dense
    PK="--model $GGUF --device cuda --dca --dtype bfloat16 --max-model-len 132000"
    timeout 250 python3 -m turboctx.cli eval passkey $PK --attention sparse --sparse-threshold 4096 \
      --lengths 64k,128k --depths 0.1,0.3,0.5,0.7,0.9 --trials 2 --out /root/res/passkey_sparse 2>&1 | \
      grep -v -i warn | grep -v "sample/s" | tail -8
    for a in dense sparse; do
      thr=""; [ $a = sparse ] && thr="--sparse-threshold 4096"
      timeout 140 python3 -m turboctx.cli eval ruler $PK --attention $a $thr --lengths 16k --samples 20 \
        --tasks niah_single_1,niah_single_2,niah_multikey_1,niah_multivalue,niah_multiquery \
        --out /root/res/ruler16k_$a 2>&1 | grep -v -i warn | grep -v "sample/s" | tail -10
    done
    tar czf "$OUT/passkey_sparse.tgz" -C /root/res passkey_sparse ruler16k_dense ruler16k_sparse ;;
  sparse-paired)  # many paired samples (same prompts): dense, sparse from 4096 with the default
    # budgets (and the default dense tail of 512 tokens), and with the calibrated file of session 5;
    # every (seed, setting, task) runs as its own process side by side (the 135M model leaves the
    # H200 idle), then the paired differences pooled over the seeds (issue #5). SEEDS (default 7) /
    # TRIALS / SAMPLES / SETTINGS / T (seconds per process) / RES / KV per call; reruns resume.
    # One call of T=480 and one seed gave 120 RULER + 60 passkey pairs per setting. DENSE_RUNS=DIR
    # (e.g. docs/results/sparse_eval_s7) pairs with the dense runs kept there (DIR/seedN/*_dense)
    # instead of running dense again; use SETTINGS without dense then. TASKS="ruler passkey"
    # (default both); PK_DEPTHS (default the 10-depth grid of the stored runs) e.g. random:30 with
    # TRIALS=1: every seed puts its passkeys at new positions (eval paired clusters by position).
    # Setting `full`: the sparse path with budgets over every key (density 100%), a control for
    # what the sparse path costs apart from sparsity. With DENSE_RUNS decode stays eager, as in the
    # stored runs (CUDA graphs decode DCA since session 9; their rounding differs): DECODE= overrides.
    RES=${RES:-/root/res/paired}; mkdir -p $RES; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    CAL=docs/results/sparse_eval_s5/calibration_dca/sparse_attention_config.json
    V4000=docs/results/sparse_eval_s7/budgets_4000x6096/sparse_attention_config.json  # every head
    FULL=$RES/full_budgets.json      # the default model: 30 layers, 9 query heads
    python3 -c "from turboctx.attention.sparse_config import write_sparse_attention_config as w
w('$FULL', [[(1 << 20, 1 << 20)] * 9] * 30)"
    DECODE=${DECODE-$([ -n "${DENSE_RUNS:-}" ] && echo --no-cuda-graphs)}
    SETS=${SETTINGS:-dense sparse cal}; SEEDS=${SEEDS:-${SEED:-7}}
    D="--depths ${PK_DEPTHS:-0.05,0.15,0.25,0.35,0.45,0.55,0.65,0.75,0.85,0.95}"; TASKS=${TASKS:-ruler passkey}
    SP="--attention sparse --sparse-threshold 4096"
    flags() { case $1 in dense) echo "--attention dense" ;; sparse) echo "$SP" ;;
              notail) echo "$SP --sparse-dense-tail 0" ;;
              tail*) echo "$SP --sparse-dense-tail ${1#tail}" ;;  # e.g. tail2048
              cal) echo "$SP --sparse-config $CAL" ;; v4000) echo "$SP --sparse-config $V4000" ;;
              full) echo "$SP --sparse-config $FULL" ;; esac; }
    for s in $SEEDS; do
      R=$RES/seed$s; mkdir -p $R      # a bounded KV cache: the processes share the GPU
      PK="--model $GGUF --device cuda --dca --dtype bfloat16 --max-model-len 34000 --batch-size 8
          --kv-cache-tokens ${KV:-300000} --seed $s $DECODE"
      for a in $SETS; do
        case " $TASKS " in *" ruler "*)
          timeout ${T:-480} python3 -m turboctx.cli eval ruler $PK $(flags $a) --lengths 16k --samples ${SAMPLES:-40} \
            --tasks niah_single_2,niah_multikey_1,niah_multivalue --out $R/ruler_$a > $R/ruler_$a.log 2>&1 &
          sleep 1 ;; esac
        case " $TASKS " in *" passkey "*)
          timeout ${T:-480} python3 -m turboctx.cli eval passkey $PK $(flags $a) $D --lengths 16k,32k \
            --trials ${TRIALS:-3} --out $R/passkey_$a > $R/passkey_$a.log 2>&1 &
          sleep 1 ;; esac
      done
    done
    wait
    for f in $RES/seed*/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -v -i warn | grep -v "sample/s" | tail -3; done
    for b in $SETS; do
      [ $b = dense ] && continue
      for t in $TASKS; do
        pairs=""; for s in $SEEDS; do
          pairs="$pairs --a ${DENSE_RUNS:-$RES}/seed$s/${t}_dense --b $RES/seed$s/${t}_$b"; done
        python3 -m turboctx.cli eval paired $pairs --json $RES/paired_${t}_$b.json | tail -8
      done
    done
    tar czf "$OUT/paired.tgz" -C $RES . ;;
  dca-decode)  # random:qwen2.5-7b with DCA (its config: chunk 32768): decode eager, then in CUDA graphs
    for g in --no-cuda-graphs --cuda-graphs; do
      timeout 250 python3 -m turboctx.cli bench decode --model random:qwen2.5-7b --dca --lengths ${LENGTHS:-128k,1m} \
        --steps 64 --repeat 3 $g --json "$OUT/decode_7b_dca${g#--}.json" 2>&1 | grep -v -i warn | tail -5
    done ;;
  profile-eval)  # default model + DCA at 16K, bf16: where a prefill (and 16 decode steps) goes, dense
    # then sparse from 4096, op by op (scripts/profile_prefill.py): the paired runs' throughput
    for a in dense sparse; do
      thr=""; [ $a = sparse ] && thr="--sparse-threshold 4096"
      timeout 150 python3 scripts/profile_prefill.py --model "$GGUF" --dca --attention $a $thr \
        --length ${LENGTH:-16k} --decode 16 --device cuda --dtype bfloat16 --top 30 --out "$OUT" 2>&1 | \
        grep -v -i warn | tee "$OUT/profile_$a.log" | head -80
    done ;;
  suite)  # issue #6: engine, HF and the server on the same prompts (resumes when rerun)
    timeout "${SUITE_TIMEOUT:-420}" python3 scripts/eval_suite.py /root/suite --model "$GGUF" \
      --device cuda --batch-size "${SUITE_BATCH:-64}" --doc /root/suite/EVAL.md 2>&1 | grep -v -i warn | tail -25
    tar czf "$OUT/suite.tgz" -C /root/suite . ;;
  ttft-sparse)  # random:qwen2.5-7b, default budgets; LENGTHS / REPEAT, dense beside it via DENSE
    # (e.g. DENSE=128k,256k,512k DENSE_REPEAT=1: dense 512K takes ~2 min a run),
    # TAILS="0 512 2048" times each dense tail in turn (default: the engine's, 512)
    for tl in ${TAILS:-default}; do
      tflag=""; [ "$tl" != default ] && tflag="--sparse-dense-tail $tl"
      timeout "${TTFT_TIMEOUT:-300}" python3 -m turboctx.cli bench prefill --model random:qwen2.5-7b \
        --attention sparse $tflag --lengths "${LENGTHS:-1m}" --repeat "${REPEAT:-2}" \
        --json "$OUT/prefill_7b_sparse_$(echo "${LENGTHS:-1m}" | tr , _)_tail$tl.json" 2>&1 | grep -v -i warn | tail -6
    done
    if [ -n "${DENSE:-}" ]; then
      timeout "${DENSE_TIMEOUT:-300}" python3 -m turboctx.cli bench prefill --model random:qwen2.5-7b --attention dense \
        --lengths "$DENSE" --repeat "${DENSE_REPEAT:-2}" --json "$OUT/prefill_7b_dense_$(echo "$DENSE" | tr , _).json" 2>&1 | grep -v -i warn | tail -5
    fi ;;
  sparse-speed)  # random:qwen2.5-7b, default budgets (1000 vertical / 6096 slash per head)
    timeout 170 python3 -m turboctx.cli bench prefill --model random:qwen2.5-7b --attention sparse --lengths 128k,256k,512k \
      --repeat 2 --json "$OUT/prefill_7b_sparse.json" 2>&1 | tee "$OUT/sparse.log" | tail -6
    timeout 150 python3 -m turboctx.cli bench prefill --model random:qwen2.5-7b --attention sparse --lengths 1m --repeat 1 \
      --json "$OUT/prefill_7b_sparse_1m.json" 2>&1 | tee -a "$OUT/sparse.log" | tail -4
    timeout 60 python3 scripts/sparse_gpu.py micro --out "$OUT" 2>&1 | tail -12
    timeout 60 python3 scripts/sparse_gpu.py check --out "$OUT" 2>&1 | tail -12 ;;
  hf-32k)  # TTFT and peak memory against HF at 32K in the same run
    timeout 120 python3 -m turboctx.cli bench prefill --model random:qwen2.5-7b --lengths 32k --repeat 3 --compare hf \
      --json "$OUT/prefill_7b_32k_hf.json" 2>&1 | tail -6 ;;
  prefill-1m)
    tb prefill --model random:qwen2.5-7b --lengths 1m --repeat 1 \
      --price-per-gpu-hour 3.5 --json "$OUT/prefill_7b_1m.json" 2>&1 | tee "$OUT/prefill_1m.log" ;;
esac
