#!/usr/bin/env bash
# One GPU session for the full-size benchmarks (issues 6 and 11; DESIGN.md "Where speed comes from").
#
#   bash benchmarks/gpu_session.sh            # from the repository root, on the GPU machine
#
# Writes everything to $OUT (default ./gpu_out): nvidia-smi.txt, env.txt, per step
# <step>.md (Markdown on stdout), <step>.log (stderr), <step>.json, summary.txt and
# BENCHMARKS_gpu.md (all Markdown sections, ready to merge into BENCHMARKS.md).
# Every step runs under `timeout` and inside a global budget (LRAG_GPU_BUDGET_S, default
# 570 s: one device call is at most 10 minutes), so a slow or failing step never takes the
# later ones down with it; the
# predict_wan steps get a --time-budget a little under their timeout, so they skip runs
# they cannot finish instead of being killed (their JSON is rewritten after every run).
set -uo pipefail
set -x

OUT=${OUT:-./gpu_out}
BUDGET_S=${LRAG_GPU_BUDGET_S:-570}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

# -- environment -------------------------------------------------------------------------
source benchmarks/gpu_env.sh  # lancedb and wheels from .devcarry/ and .whl/, PYTHONPATH

if command -v nvidia-smi > /dev/null; then nvidia-smi | tee "$OUT/nvidia-smi.txt"; fi
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE (torch.cuda.is_available() is False)")
import lrag.memory.bank, lrag.nets.wan, lrag.sampling.sampler  # the benchmark's only lrag imports
print("lrag imports ok")
PY

# -- steps -------------------------------------------------------------------------------
START=$SECONDS
FAILED=()
# A CPU dry run of the plumbing: LRAG_BENCH_DEVICE=cpu LRAG_BENCH_MODEL="--preset tiny --height 8 --width 8"
# LRAG_BENCH_SHORT=21 LRAG_BENCH_LONG=30 bash benchmarks/gpu_session.sh
DEVICE=${LRAG_BENCH_DEVICE:-cuda}
read -r -a MODEL <<< "--device $DEVICE ${LRAG_BENCH_MODEL:---preset wan_1_3b}"
SHORT=${LRAG_BENCH_SHORT:-120}
LONG=${LRAG_BENCH_LONG:-480}

# run_step NAME CAP_S CMD...: run CMD under min(CAP_S, what is left of the budget).
# The literal argument @TIME_BUDGET@ is replaced by that limit minus 20 s.
run_step() {
  local name=$1 cap=$2
  shift 2
  local left=$(( BUDGET_S - (SECONDS - START) ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 45 )); then
    echo "SKIP $name: only ${left} s of the ${BUDGET_S} s budget left" | tee -a "$OUT/summary.txt"
    return
  fi
  local args=("${@//@TIME_BUDGET@/$(( limit - 20 ))}")
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "${args[@]}" 2> "$OUT/$name.log" | tee "$OUT/$name.md"
  local rc=${PIPESTATUS[0]}
  echo "$name: rc=$rc in $(( SECONDS - t0 )) s (limit $limit s)$([[ $rc == 124 ]] && echo ' TIMED OUT')" | tee -a "$OUT/summary.txt"
  if (( rc != 0 )); then FAILED+=("$name"); tail -n 25 "$OUT/$name.log"; fi
}

# LRAG_GPU_STEPS picks the steps (default: tiers$SHORT long$LONG), so one session can be split
# over several device calls of at most 10 minutes each:
#   tiersN   every KV tier at N frames, incl. store_stride 5 for int8/host, with a profile per mode
#   longN    native vs the bounded tiers (LRAG_LONG_TIERS, default "int8:5 host:10") at N frames, e.g. long960
#   refknobsN    ours (auto, cuDNN SDPA) vs the reference at N frames (needs .devcarry/reference)
#   refcompileN  the same with our block compile
#   exactN   native vs the exact tiers (device, host) at N frames with the configs' settings (cuDNN,
#            compiled blocks + fused RoPE), 2 interleaved repeats: issue 11 target 1
#   fp8N     ours bf16 vs FP8 (eager and compiled) vs the reference at N frames, with FP8's output error
#   e2e      lrag predict end to end vs the bare sampler + the <= 24 GB config (LRAG_E2E_REPEATS, default 1)
#   embedder the frame embedder fit of issue 6
STEPS=${LRAG_GPU_STEPS:-"tiers$SHORT long$LONG"}
for step in $STEPS; do
  case $step in
    tiers*)  # 120 frames: ~20 s per mode + a profile of ~12 blocks each (~25 s total)
      n=${step#tiers}
      run_step predict_wan_$n 400 python3 benchmarks/predict_wan.py "${MODEL[@]}" \
        --frames "$n" --modes native rag --kv-tier device host int8 recompute int8:5 host:10 \
        --profile "$OUT/profile_$n" --time-budget @TIME_BUDGET@ --json "$OUT/predict_wan_$n.json" ;;
    long*)  # ~6 latent frames/s: 960 frames ~160 s per mode. The exact tiers need 288 MiB per
            # evicted frame (126 GiB at 480, 252 GiB at 960): more than the card or the host holds.
      n=${step#long}
      run_step predict_wan_$n 560 python3 benchmarks/predict_wan.py "${MODEL[@]}" \
        --frames "$n" --modes native rag --kv-tier ${LRAG_LONG_TIERS:-int8:5 host:10} \
        --time-budget @TIME_BUDGET@ --json "$OUT/predict_wan_$n.json" ;;
    refknobs*)  # ours (auto and cuDNN SDPA) vs the reference, same weights, 2 interleaved repeats
      n=${step#refknobs}
      run_step reference_compare_$n 300 python3 benchmarks/reference_compare.py --reference .devcarry/reference \
        --frames "$n" --repeats 2 --sdpa-backend auto cudnn --json "$OUT/reference_compare_$n.json" ;;
    refcompile*)  # the same with our block compile on cuDNN (compile time is in the 2 warm-up blocks)
      n=${step#refcompile}
      run_step reference_compare_compile_$n 300 python3 benchmarks/reference_compare.py \
        --reference .devcarry/reference --frames "$n" --repeats 1 --sdpa-backend cudnn --compile \
        --warmup-blocks 2 --json "$OUT/reference_compare_compile_$n.json" ;;
    exact*)  # ~12 s per run at 120 frames after ~40 s of compiling in the 6 warm-up blocks
      n=${step#exact}
      run_step exact_tiers_$n 300 python3 benchmarks/predict_wan.py "${MODEL[@]}" --frames "$n" --modes native rag \
        --kv-tier device host --sdpa-backend cudnn --compile --warmup-blocks 6 --repeats 2 \
        --time-budget @TIME_BUDGET@ --json "$OUT/exact_tiers_$n.json" ;;
    fp8*)
      n=${step#fp8}
      run_step reference_compare_fp8_$n 300 python3 benchmarks/reference_compare.py --reference .devcarry/reference \
        --frames "$n" --repeats 1 --sdpa-backend cudnn --compile --fp8 --warmup-blocks 1 \
        --json "$OUT/reference_compare_fp8_$n.json" ;;
    e2e)  # lrag predict end to end vs the bare sampler, and the <= 24 GB config (targets 5 and 4)
      run_step predict_e2e 330 python3 benchmarks/predict_e2e.py --repeats "${LRAG_E2E_REPEATS:-1}" \
        --json "$OUT/predict_e2e.json" --out /tmp/e2e ;;
    embedder)
      EMB_ARGS=(--device "$DEVICE")
      [[ -n ${LRAG_EMBEDDER_ARGS:-} ]] && read -r -a EMB_ARGS <<< "$LRAG_EMBEDDER_ARGS"
      run_step embedder_fit 100 python3 benchmarks/embedder_fit.py "${EMB_ARGS[@]}" ;;
    *) echo "unknown step $step" | tee -a "$OUT/summary.txt"; FAILED+=("$step") ;;
  esac
done

# -- collect -----------------------------------------------------------------------------
{
  echo "## Full-size GPU benchmarks ($(date -u +%Y-%m-%d))"
  echo
  for f in "$OUT"/predict_wan_*.md "$OUT"/reference_compare*.md "$OUT"/predict_e2e.md "$OUT"/embedder_fit.md; do
    [[ -s $f ]] && { cat "$f"; echo; }
  done
} > "$OUT/BENCHMARKS_gpu.md"
echo "total $(( SECONDS - START )) s of ${BUDGET_S} s" | tee -a "$OUT/summary.txt"
cat "$OUT/summary.txt"
if (( ${#FAILED[@]} )); then
  echo "FAILED steps: ${FAILED[*]}"
  exit 1
fi
