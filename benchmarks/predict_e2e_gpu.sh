#!/usr/bin/env bash
# `lrag predict` end to end at full size (random weights) on one GPU: first benchmarks/predict_e2e.py
# (bare sampler vs `lrag predict` with sync and async persistence, frames/s and e2e/bare ratios, and the
# <= 24 GB config's peak GPU memory; issue 11 targets 4 and 5), then the CLI itself, native and RAG, with
# what the GPU image lacks carried in .devcarry/ (lancedb as an xz-packed site folder, since its
# 75 MB wheel exceeds the 64 MiB carry limit; pure-Python wheels). Run from the repo root.
# Build .devcarry/ (git-ignored) on the dev machine first, e.g.:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     -d /tmp/w lancedb==0.40.0 && unzip -q /tmp/w/lancedb-*.whl -d /tmp/ls && tar cJf .devcarry/lancedb_site.tar.xz -C /tmp/ls .
#   the same `pip download` into .devcarry/whl for: jsonargparse docstring-parser typeshed-client
#   webdataset braceexpand deprecation overrides lance-namespace lance-namespace-urllib3-client
#   pydantic pydantic-core annotated-types typing-inspection
#   optional, for the 24 GB config's random Wan VAE (else it decodes with LinearRGBCodec and says so):
#   diffusers (pure Python; needs huggingface_hub, regex, importlib_metadata, filelock in the image)
set -uo pipefail
OUT=${OUT:-./gpu_out}
source benchmarks/gpu_env.sh  # lancedb and wheels from .devcarry/ and .whl/, PYTHONPATH
timeout 560 python3 benchmarks/predict_e2e.py --json "$OUT/e2e.json" --out "$OUT/e2e" > "$OUT/e2e.md" 2> "$OUT/e2e.log"
echo "predict_e2e: exit $?"; cat "$OUT/e2e.md"
[ "${LRAG_E2E_ONLY:-0}" = 1 ] && exit 0
LRAG=(python3 -c "import sys; from lrag.cli import main; sys.argv[0] = 'lrag'; main()")
OV=(--model.init_args.backbone_checkpoint null --model.init_args.memory.init_args.descriptor avg_pool
    --model.init_args.memory.init_args.embedder_path null --model.init_args.memory.init_args.kv_tier device
    --model.init_args.text_encoder lrag.nets.conditioning.TinyTextEncoder
    --model.init_args.text_encoder.text_len 512 --model.init_args.text_encoder.text_dim 4096
    --model.init_args.codec lrag.nets.codecs.LinearRGBCodec --model.init_args.write_video false)
for cfg in self_forcing_native self_forcing; do
  /usr/bin/time -v "${LRAG[@]}" predict --config configs/predict/$cfg.yaml "${OV[@]}" \
    --model.init_args.run_name "gpu-$cfg" > "$OUT/$cfg.log" 2>&1
  echo "$cfg: exit $?"; grep -E "blocks|Maximum resident|Elapsed" "$OUT/$cfg.log" | tail -4
done
python3 - <<'PY' | tee "$OUT/store.txt"
import lancedb
db = lancedb.connect("runs/memory.lancedb")
runs = db.open_table("runs").to_arrow().to_pylist()
for r in runs:
    print(r["run_id"], r["status"], r["frames_done"], "/", r["frames_planned"], r["backbone"])
fr = db.open_table("frames").to_arrow()
rt = db.open_table("retrievals").to_arrow()
print("frames rows", fr.num_rows, "retrieval rows", rt.num_rows)
PY
ls runs/gpu-* | head
