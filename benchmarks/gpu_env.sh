# Sourced by the GPU scripts (benchmarks/gpu_session.sh, benchmarks/predict_e2e_gpu.sh,
# scripts/train_assets_gpu.sh): puts what the GPU image lacks on PYTHONPATH. From the ignored
# .devcarry/ (predict_e2e_gpu.sh says how to build it): lancedb as an xz-packed site folder and
# pure-Python wheels; from .whl/: any other wheels. Everything goes to /tmp/site; pip's output
# to $OUT/pip.log, and a failure is appended to $OUT/summary.txt.
#   OUT=./gpu_out; source benchmarks/gpu_env.sh
mkdir -p /tmp/site "$OUT"
if [[ -f .devcarry/lancedb_site.tar.xz ]]; then
  tar xJf .devcarry/lancedb_site.tar.xz -C /tmp/site
fi
for wheels in .devcarry/whl .whl; do
  if compgen -G "$wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$wheels"/*.whl >> "$OUT/pip.log" 2>&1 || echo "pip install of $wheels/ failed (see $OUT/pip.log)" | tee -a "$OUT/summary.txt"
  fi
done
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
