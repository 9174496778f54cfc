#!/usr/bin/env bash
# Train the tiny backbone with memory exposure + camera positions on one GPU, then A/B
# evaluate it on held-out worlds (docs/training.md). One call of <= 9 minutes:
#
#   bash scripts/train_assets_gpu.sh          # from the repository root on the GPU machine
#
# Knobs (environment): OUT (default ./gpu_out), BATCH (256), TRAIN_TIME (00:00:07:00, the
# trainer's max_time: training stops there and still saves a checkpoint), STEPS (max_steps
# cap, 100000), EXPOSURE (0.6, the memory_exposure; 0.0 trains the frozen-generator baseline of
# issue 12: a backbone never shown retrieved frames), EVAL_SEEDS ("1000 1001 1002 1003"; empty:
# no eval), EVAL_FRAMES (48). What the GPU image lacks comes from .devcarry/ (benchmarks/gpu_env.sh).
# Writes $OUT/fit.log, $OUT/backbone.ckpt, $OUT/eval/{report.md,report.json,*.png,tb/},
# $OUT/eval.log and $OUT/summary.txt.
set -uo pipefail

OUT=${OUT:-./gpu_out}
BATCH=${BATCH:-256}
TRAIN_TIME=${TRAIN_TIME:-00:00:07:00}
STEPS=${STEPS:-100000}
EXPOSURE=${EXPOSURE:-0.6}
EVAL_SEEDS=${EVAL_SEEDS-1000 1001 1002 1003}
EVAL_FRAMES=${EVAL_FRAMES:-48}
mkdir -p "$OUT"

source benchmarks/gpu_env.sh  # lancedb and wheels from .devcarry/ and .whl/, PYTHONPATH
LRAG=(python3 -c "import sys; from lrag.cli import main; sys.argv[0] = 'lrag'; main()")
ACCEL=gpu
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || { echo "no CUDA: running on CPU"; ACCEL=cpu; }
DEVICE=$([ "$ACCEL" = gpu ] && echo cuda || echo cpu)
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

# -- train (it/s is printed every 50 steps) ----------------------------------------------
ROOT="$OUT/fit"
echo "training: batch $BATCH, max_time $TRAIN_TIME, max_steps $STEPS, memory_exposure $EXPOSURE, camera position" | tee "$OUT/summary.txt"
tic=$(date +%s)
"${LRAG[@]}" fit --config configs/backbone/demo.yaml \
  --trainer.accelerator "$ACCEL" --trainer.max_steps "$STEPS" --trainer.max_time "$TRAIN_TIME" \
  --trainer.default_root_dir "$ROOT" --trainer.log_every_n_steps 50 --trainer.enable_progress_bar false \
  --model.init_args.camera position --model.init_args.memory_exposure "$EXPOSURE" --data.init_args.batch_size "$BATCH" \
  --data.init_args.steps_per_epoch 250 2>&1 | tee "$OUT/fit.log"
echo "fit: exit ${PIPESTATUS[0]}, $(( $(date +%s) - tic )) s" | tee -a "$OUT/summary.txt"
CKPT=$(ls -t "$ROOT"/lightning_logs/version_*/checkpoints/*.ckpt 2>/dev/null | head -n 1)
if [ -z "$CKPT" ]; then echo "no checkpoint under $ROOT" | tee -a "$OUT/summary.txt"; exit 1; fi
cp "$CKPT" "$OUT/backbone.ckpt"
echo "checkpoint: $CKPT" | tee -a "$OUT/summary.txt"
grep -E "it/s" "$OUT/fit.log" | tail -n 3 | tee -a "$OUT/summary.txt"

# -- evaluate on held-out worlds ---------------------------------------------------------
[ -z "$EVAL_SEEDS" ] && exit 0
tic=$(date +%s)
# shellcheck disable=SC2086
"${LRAG[@]}" eval --config configs/eval/demo.yaml --device "$DEVICE" --camera position \
  --backbone_checkpoint "$OUT/backbone.ckpt" --seeds $EVAL_SEEDS --num_frames "$EVAL_FRAMES" \
  --descriptors '[avg_pool, oracle]' --out_dir "$OUT/eval" 2>&1 | tee "$OUT/eval.log"
echo "eval: exit ${PIPESTATUS[0]}, $(( $(date +%s) - tic )) s" | tee -a "$OUT/summary.txt"

