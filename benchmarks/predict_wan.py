"""Full-size sampler benchmark: native sliding window vs retrieval (RAG), one process, one GPU.

Random-weight ``CausalWanModel`` (built on the device in the benchmark dtype), the reference
schedule, and ``ARSampler`` driven directly: no store, text encoder or VAE, only the AR loop.
Modes (native, RAG per KV tier) run interleaved in one process after a warmup call each.
Per run: latent frames/s, RAG/native ratio, peak GPU memory, GPU and host (RSS) growth per
frame (slope over blocks >= 5), stored KV per frame, ms per block, finiteness. The JSON is
rewritten after every run, so a run killed by a timeout keeps what it finished.

    python benchmarks/predict_wan.py --frames 120 --kv-tier device host --json out/wan_120.json
    python benchmarks/predict_wan.py --device cpu --preset tiny --height 8 --width 8 --frames 30

This file is the command line; the work is in its sibling modules ``predict_wan_setup.py``
(device, model, samplers), ``predict_wan_measure.py`` (timed runs) and ``predict_wan_report.py``
(ratios, Markdown, JSON), whose names it re-exports.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by path (tests) instead of run as a script: find the siblings
    sys.path.insert(0, _HERE)

from predict_wan_measure import (  # noqa: E402
    SLOPE_FROM_BLOCK, Trace, measure, preflight, release, run_once, slope, summarise, sync, warmup,
)
from predict_wan_report import (  # noqa: E402
    COLUMNS, COMPILE_ONE_BACKEND, REFERENCE_NATIVE_FPS, add_ratios, fmt, markdown, write_json,
)
from predict_wan_setup import (  # noqa: E402
    DTYPES, GIB, MIB, Mode, build_backbone, build_embedder, environment, kv_bytes_per_frame, make_noise,
    make_sampler, modes_from, setup_device,
)

__all__ = [
    "COLUMNS", "DTYPES", "GIB", "MIB", "REFERENCE_NATIVE_FPS", "SLOPE_FROM_BLOCK", "Mode", "Trace", "add_ratios",
    "build_backbone", "build_embedder", "environment", "fmt", "kv_bytes_per_frame", "main", "make_noise",
    "make_sampler", "markdown", "measure", "modes_from", "parse_args", "preflight", "release", "run_once",
    "setup_device", "slope", "summarise", "sync", "warmup", "write_json",
]

log = logging.getLogger("predict_wan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="wan_1_3b", help="lrag.nets.wan.PRESETS entry")
    p.add_argument("--num-layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--frames", type=int, nargs="+", default=[120], help="latent frames per video (each value is run)")
    p.add_argument("--modes", nargs="+", default=["native", "rag"], choices=["native", "rag"])
    p.add_argument("--kv-tier", nargs="+", default=["device", "host"], metavar="TIER[:N]",
                   help="RetrievalMemory.kv_tier values to measure in RAG mode (device, host, int8, recompute); "
                        "TIER:N keeps every N-th evicted frame (RetrievalMemory.store_stride)")
    p.add_argument("--descriptor", default="avg_pool", choices=["avg_pool", "ae"], help="ae: random full-size LatentAE")
    p.add_argument("--height", type=int, default=60, help="latent height (480 px / 8)")
    p.add_argument("--width", type=int, default=104, help="latent width (832 px / 8)")
    p.add_argument("--frames-per-block", type=int, default=3)
    p.add_argument("--window", type=int, default=12, help="KV window in frames, sink included")
    p.add_argument("--sink", type=int, default=1)
    p.add_argument("--memory-size", type=int, default=6, help="K retrieved frames per block in RAG mode")
    p.add_argument("--recent-exclude", type=int, default=5, help="R newest evicted frames never retrieved")
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 750, 500, 250], help="denoising steps (warped)")
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every mode")
    p.add_argument("--warmup-blocks", type=int, default=1, help="untimed blocks per mode before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=0.0, help="skip runs estimated to end after this many s (0: off)")
    p.add_argument("--force", action="store_true", help="run even when the memory pre-flight says it cannot fit")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every block except its self-attention call (CausalWanModel.compile_blocks); "
                        "every mode alike")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode of --compile")
    p.add_argument("--sdpa-backend", nargs="+", default=["auto"],
                   choices=["auto", "flash", "cudnn", "efficient", "math"],
                   help="CausalWanModel.attention_backend; several values: every mode runs once per backend")
    p.add_argument("--rope-cache", nargs="+", default=["on"], choices=["on", "off"],
                   help="CausalWanModel.rope_cache (keys roped once when written); 'on off' runs both (A/B, "
                        "and the table checks the latents are equal)")
    p.add_argument("--no-rope-cache", dest="rope_cache", action="store_const", const=["off"],
                   help="same as --rope-cache off")
    p.add_argument("--sync-debug", action="store_true",
                   help="after the warm-up, warn (with the source line) at every host<->GPU synchronisation "
                        "(torch.cuda.set_sync_debug_mode); the native block loop should have none")
    p.add_argument("--json", default=None, help="write results to this JSON file (rewritten after every run)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after the timed runs, profile a few steady blocks per mode into DIR/profile_<mode>.txt")
    p.add_argument("--profile-torch", action="store_true",
                   help="with --profile: also run those blocks under torch.profiler for a top-ops table (slow)")
    args = p.parse_args(argv)
    for token in args.kv_tier:
        tier, _, stride = token.partition(":")
        if tier not in ("device", "host", "int8", "recompute") or (stride and not (stride.isdigit() and int(stride) >= 1)):
            p.error(f"--kv-tier {token}: expected TIER or TIER:N with TIER in device/host/int8/recompute and N >= 1")
    if args.compile and len(args.sdpa_backend) > 1:
        p.error(COMPILE_ONE_BACKEND)
    if any(f <= 0 or f % args.frames_per_block for f in args.frames):
        p.error(f"--frames {args.frames}: each must be a positive multiple of --frames-per-block {args.frames_per_block}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 if a run failed or produced non-finite latents."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    t0 = time.perf_counter()
    device, dtype = setup_device(args)
    model = build_backbone(args, device, dtype)
    cfg = model.config
    log.info("built %s (%d layers, %.2fB params) on %s in %.1f s", args.preset, cfg.num_layers,
             sum(p.numel() for p in model.parameters()) / 1e9, device, time.perf_counter() - t0)
    embedder = build_embedder(args, cfg.in_dim, device, dtype)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen, device=device, dtype=dtype)
    modes = modes_from(args)
    ctx = {"args": args, "device": device, "context": context, "t0": t0,
           "kv_frame": kv_bytes_per_frame(model, args, dtype),
           "samplers": {m.name: make_sampler(m, model, args, embedder) for m in modes}}
    result = {"environment": environment(device, dtype),
              "config": {**{k: v for k, v in vars(args).items() if k != "json"},
                         "num_layers": cfg.num_layers, "kv_mib_per_frame": ctx["kv_frame"] / MIB},
              "runs": []}
    warmup(modes, ctx)
    if args.sync_debug and device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")  # the benchmark's own end-of-run syncs show up too
    for frames in args.frames:
        for repeat in range(args.repeats):
            order = modes if repeat % 2 == 0 else modes[::-1]  # alternate so drift hits every mode alike
            for mode in order:
                result["runs"].append(measure(mode, frames, repeat, ctx))
                add_ratios(result["runs"])
                write_json(args.json, result)
    if args.profile:
        from predict_wan_profile import profile_mode

        pctx = {**ctx, "model": model, "embedder": embedder}
        result["profiles"] = [profile_mode(m, pctx, Path(args.profile), torch_profiler=args.profile_torch)
                              for m in modes]
        for prof in result["profiles"]:
            log.info("profile %s: %s", prof["mode"],
                     ", ".join(f"{k} {v:.1f} ms" for k, v in prof["stage_ms_per_block"].items()))
    result["total_s"] = time.perf_counter() - t0
    write_json(args.json, result)
    print(markdown(result), flush=True)
    bad = [r for r in result["runs"] if r["status"].startswith("failed") or r["status"] == "non-finite output"]
    for r in bad:
        log.error("%s, %d frames: %s", r["mode"], r["frames"], r["status"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
