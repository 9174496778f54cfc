#!/usr/bin/env bash
# Retrain the shipped weights of the embedded default and copy them into lrag/assets/:
#   1. fit the tiny backbone on procedural worlds   (configs/backbone/demo.yaml)
#   2. export it                                     -> backbone_tiny.safetensors
#   2b. the same fit with memory_exposure 0, export  -> backbone_tiny_frozen.safetensors (FROZEN=1)
#   3. generate videos of TRAINING worlds with it    (configs/predict/demo.yaml, avg_pool retrieval)
#   4. fit the tiny embedder on those latents        (configs/embedder/world.yaml)
#   5. export it                                     -> embedder_tiny.safetensors
#   6. copy them into lrag/assets/
# Knobs (environment variables), defaults = the recipe of docs/assets.md:
#   ACCEL=cpu|gpu  BACKBONE_STEPS=2000  BACKBONE_BATCH=8  PREDICT_WORLDS=8  PREDICT_FRAMES=120
#   EMBEDDER_EPOCHS=30  WORK=runs/assets  INSTALL=1 (0: leave lrag/assets/ alone)
#   CAMERA=motion|position|none (must equal `camera:` in configs/predict/demo.yaml)
#   BACKBONE_CKPT=<BackboneFitModule .ckpt>: skip step 1 and export this (e.g. a GPU-trained) one;
#     FIT_CONFIG (configs/backbone/demo.yaml) names its architecture if the .ckpt records none
#   EMBEDDER_ARGS="...": extra `lrag fit` flags for the embedder
#   ABLATION=1 (0: skip): also fit the same embedder without the WTD term -> $WORK/embedder_nowtd.safetensors
#     (never installed; docs/results/eval.md compares it)
#   FROZEN=1 (0: skip): also fit the backbone with memory_exposure 0 (same recipe otherwise) ->
#     backbone_tiny_frozen.safetensors, the frozen-generator baseline of configs/eval/frozen.yaml;
#     FROZEN_CKPT=<.ckpt>: export this one instead (e.g. scripts/train_assets_gpu.sh with EXPOSURE=0.0).
#     With BACKBONE_CKPT and no FROZEN_CKPT it is skipped: a CPU fit would not match a GPU-trained backbone.
# Every step is seeded (seed_everything: 0 in the configs), so a rerun on the same hardware and
# software writes the same files. Usage: scripts/make_assets.sh   or   make assets
set -euo pipefail

ACCEL=${ACCEL:-cpu}
BACKBONE_STEPS=${BACKBONE_STEPS:-2000}
BACKBONE_BATCH=${BACKBONE_BATCH:-8}
PREDICT_WORLDS=${PREDICT_WORLDS:-8}
PREDICT_FRAMES=${PREDICT_FRAMES:-120}
EMBEDDER_EPOCHS=${EMBEDDER_EPOCHS:-30}
WORK=${WORK:-runs/assets}
INSTALL=${INSTALL:-1}
CAMERA=${CAMERA:-position}
BACKBONE_CKPT=${BACKBONE_CKPT:-}
FIT_CONFIG=${FIT_CONFIG:-configs/backbone/demo.yaml}
EMBEDDER_ARGS=${EMBEDDER_ARGS:-}
ABLATION=${ABLATION:-1}
FROZEN=${FROZEN:-1}
FROZEN_CKPT=${FROZEN_CKPT:-}
LRAG=${LRAG:-lrag}

cd "$(dirname "$0")/.."
case "$ACCEL" in cpu|gpu) ;; *) echo "ACCEL=$ACCEL: use cpu or gpu" >&2; exit 2 ;; esac
if (( PREDICT_FRAMES % 3 )); then
  echo "PREDICT_FRAMES=$PREDICT_FRAMES must be a multiple of frames_per_block (3)" >&2; exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK"
step() { echo; echo "== $* ($(date +%H:%M:%S))"; }
# fit_backbone DIR [extra lrag fit flags]: the backbone recipe into $WORK/DIR; prints its newest .ckpt.
fit_backbone() {
  local dir=$1; shift
  "$LRAG" fit --config configs/backbone/demo.yaml --trainer.accelerator "$ACCEL" \
    --trainer.max_steps "$BACKBONE_STEPS" --data.init_args.batch_size "$BACKBONE_BATCH" \
    --model.init_args.camera "$CAMERA" "$@" \
    --trainer.default_root_dir "$WORK/$dir" --trainer.enable_progress_bar false >&2 || return 1
  ls -t "$WORK/$dir"/lightning_logs/version_*/checkpoints/*.ckpt | head -n 1
}

if [[ -n "$BACKBONE_CKPT" ]]; then
  step "1/6 backbone fit skipped: using $BACKBONE_CKPT"
  ckpt=$BACKBONE_CKPT
else
  step "1/6 backbone fit: $BACKBONE_STEPS steps, batch $BACKBONE_BATCH, camera $CAMERA on $ACCEL"
  ckpt=$(fit_backbone backbone)
fi

step "2/6 export $ckpt"
"$LRAG" export "$ckpt" "$WORK/backbone_tiny.safetensors" --fit_config "$FIT_CONFIG"

if [[ "$FROZEN" == 1 && -z "$FROZEN_CKPT" && -n "$BACKBONE_CKPT" ]]; then
  step "2b/6 frozen backbone skipped: BACKBONE_CKPT was given without FROZEN_CKPT"
elif [[ "$FROZEN" == 1 ]]; then
  if [[ -z "$FROZEN_CKPT" ]]; then
    step "2b/6 frozen-generator backbone fit: the same recipe with memory_exposure 0"
    FROZEN_CKPT=$(fit_backbone backbone_frozen --model.init_args.memory_exposure 0.0)
  fi
  step "2b/6 export $FROZEN_CKPT"
  "$LRAG" export "$FROZEN_CKPT" "$WORK/backbone_tiny_frozen.safetensors" --fit_config "$FIT_CONFIG"
fi

seeds=$(seq -s, 0 $((PREDICT_WORLDS - 1)))
step "3/6 predict $PREDICT_WORLDS training worlds [$seeds] x $PREDICT_FRAMES latent frames"
"$LRAG" predict --config configs/predict/demo.yaml --trainer.accelerator "$ACCEL" \
  --model.init_args.backbone_checkpoint "$WORK/backbone_tiny.safetensors" \
  --model.init_args.embedder_checkpoint null --model.init_args.backbone.init_args.camera "$CAMERA" \
  --model.init_args.memory.init_args.descriptor avg_pool \
  --model.init_args.num_frames "$PREDICT_FRAMES" --data.init_args.num_frames "$PREDICT_FRAMES" \
  --data.init_args.world_seeds "[$seeds]" \
  --model.init_args.out_dir "$WORK/predict" --model.init_args.store_uri "$WORK/predict/memory.lancedb" \
  --model.init_args.run_name world --model.init_args.progress false \
  --trainer.logger.init_args.save_dir "$WORK/tb"

step "4/6 embedder fit on $WORK/predict/*/latents-*.tar, $EMBEDDER_EPOCHS epochs"
"$LRAG" fit --config configs/embedder/world.yaml --trainer.accelerator "$ACCEL" \
  --trainer.max_epochs "$EMBEDDER_EPOCHS" \
  --data.init_args.data_dir "$WORK/predict/*/latents-*.tar" \
  --trainer.logger.init_args.save_dir "$WORK" $EMBEDDER_ARGS
emb=$(ls -t "$WORK"/embedder_world/version_*/checkpoints/last.ckpt | head -n 1)

step "5/6 export $emb"
"$LRAG" export "$emb" "$WORK/embedder_tiny.safetensors"

if [[ "$ABLATION" == 1 ]]; then
  step "5b/6 ablation: the same embedder fit without the WTD term (delta_weight 0)"
  "$LRAG" fit --config configs/embedder/world.yaml --trainer.accelerator "$ACCEL" \
    --trainer.max_epochs "$EMBEDDER_EPOCHS" \
    --data.init_args.data_dir "$WORK/predict/*/latents-*.tar" \
    --trainer.logger.init_args.save_dir "$WORK/nowtd" \
    --model.init_args.net.init_args.config.delta_weight 0.0 $EMBEDDER_ARGS
  "$LRAG" export "$(ls -t "$WORK"/nowtd/embedder_world/version_*/checkpoints/last.ckpt | head -n 1)" \
    "$WORK/embedder_nowtd.safetensors"
fi

if [[ "$INSTALL" == 1 ]]; then
  step "6/6 install into lrag/assets/"
  cp "$WORK/backbone_tiny.safetensors" "$WORK/embedder_tiny.safetensors" lrag/assets/
  if [[ -f "$WORK/backbone_tiny_frozen.safetensors" ]]; then cp "$WORK/backbone_tiny_frozen.safetensors" lrag/assets/; fi
  sha256sum lrag/assets/*.safetensors
else
  step "6/6 skipped (INSTALL=$INSTALL): files are in $WORK/"
fi
