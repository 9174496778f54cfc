# The README's two commands are `make demo` and `make test`. Each creates .venv (unless a
# virtualenv is already active) and installs the pinned CPU torch wheel before anything else:
# an unpinned torch would pull gigabytes of CUDA builds. `make demo` installs the package alone;
# `make test` adds the dev and wan extras on top.
SHELL := /bin/bash
PYTHON ?= python3
TORCH_PIN ?= torch==2.13.0

ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.lrag-installed
DEV_STAMP := $(VENV)/.lrag-installed-dev

# Why the install is fast (BENCHMARKS.md "make demo"): --no-compile, because compiling every .py of
# torch to bytecode costs ~40 s of CPU and only what is imported needs it (written on first use);
# uv for the dependencies (pip resolves and unpacks them in ~2 min on 2 cores, uv in ~20 s). torch
# comes from pip, which reads pip.conf's local wheel folder (uv does not), so uv finds it installed.
# Without uv (no network to PyPI, an old platform) pip installs everything.
PIP_INSTALL := $(BIN)/python -m pip install -q --no-compile
UV_INSTALL := $(BIN)/uv pip install -q --python $(BIN)/python

.PHONY: setup demo test sample-data bench assets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) $(TORCH_PIN)
	$(PIP_INSTALL) uv || echo "uv not installed: pip installs the rest (slower)"
	if [ -x $(BIN)/uv ] && $(UV_INSTALL) -e .; then :; else $(PIP_INSTALL) -e .; fi
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	if [ -x $(BIN)/uv ] && $(UV_INSTALL) -e '.[dev,wan]'; then :; else $(PIP_INSTALL) -e '.[dev,wan]'; fi
	touch $(DEV_STAMP)

setup: $(DEV_STAMP)

## The main job on the embedded default: the same world with retrieval and natively (both
## processes at once, one core each), then runs/<id>-rag-0/compare.{mp4,gif,png} side by side.
DEMO_ID := demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	@mkdir -p runs
	OMP_NUM_THREADS=1 $(BIN)/lrag predict --config configs/predict/demo.yaml \
	    --model.init_args.memory.init_args.memory_size 0 --model.init_args.run_name $(DEMO_ID)-native \
	    --model.init_args.progress false > runs/$(DEMO_ID)-native.log 2>&1 & native=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/lrag predict --config configs/predict/demo.yaml \
	    --model.init_args.run_name $(DEMO_ID)-rag || { wait $$native; exit 1; }; \
	wait $$native || { cat runs/$(DEMO_ID)-native.log; exit 1; }
	$(BIN)/lrag demo compare $(DEMO_ID)-rag-0 $(DEMO_ID)-native-0

## The whole test suite (CI runs exactly this through .ci/run).
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

## Regenerate the small shipped sample shard set in data/ (deterministic).
sample-data: $(STAMP)
	rm -rf data/sample
	$(BIN)/lrag data synth data/sample --clips 6 --frames 24 --height 8 --width 8 --shard-size 3 --seed 0

## Retrain the shipped tiny weights (lrag/assets) from the configs; knobs in scripts/make_assets.sh,
## e.g. `make assets ACCEL=gpu BACKBONE_STEPS=20000 BACKBONE_BATCH=256`.
assets: $(STAMP)
	LRAG=$(BIN)/lrag scripts/make_assets.sh

## CPU benchmarks (ratios measured side by side); GPU ones: benchmarks/gpu_session.sh on a GPU.
bench: $(STAMP)
	$(BIN)/python benchmarks/embedder_fit.py --config configs/embedder/demo.yaml
	$(BIN)/python benchmarks/predict_cpu.py

clean:
	rm -rf runs lightning_logs .pytest_cache
