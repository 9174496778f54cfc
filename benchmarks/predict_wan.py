"""Full-size sampler benchmark: native sliding window vs retrieval (RAG), one process, one GPU.

Random-weight ``CausalWanModel`` (built on the device in the benchmark dtype), the reference
schedule, and ``ARSampler`` driven directly: no store, text encoder or VAE, only the AR loop.
Modes (native, RAG per KV tier) run interleaved in one process after a warmup call each.
Per run: latent frames/s, RAG/native ratio, peak GPU memory, GPU and host (RSS) growth per
frame (slope over blocks >= 5), stored KV per frame, ms per block, finiteness. The JSON is
rewritten after every run, so a run killed by a timeout keeps what it finished.

    python benchmarks/predict_wan.py --frames 120 --kv-tier device host --json out/wan_120.json
    python benchmarks/predict_wan.py --device cpu --preset tiny --height 8 --width 8 --frames 30
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("predict_wan")

REFERENCE_NATIVE_FPS = 6.0  # DESIGN.md: the reference's native 1.3B bf16 throughput on one H100
SLOPE_FROM_BLOCK = 5  # growth slopes skip the blocks that fill the window
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
GIB, MIB = 2.0**30, 2.0**20


@dataclass
class Mode:
    """One measured configuration: native (``memory_size 0``) or RAG with a KV tier."""

    name: str
    memory_size: int
    kv_tier: str


@dataclass
class Trace:
    """Per-block samples of one run (times after a device sync)."""

    block_s: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    gpu: list[float] = field(default_factory=list)
    retrieved: int = 0


def _proc_bytes(path: str, key: str) -> float | None:
    """A ``kB`` field of a Linux ``/proc`` file in bytes (None where /proc is missing)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs``; None with fewer than two points."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(sampler, device: torch.device) -> None:
    """Drop the memory pool and hand cached device/pinned blocks back, so the next run starts clean."""
    sampler.memory.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        try:  # pinned blocks stay cached by torch otherwise; private API, absent in some builds
            getattr(torch._C, "_host_emptyCache", lambda: None)()
        except RuntimeError as err:
            log.warning("could not release cached pinned memory: %s", err)


def build_backbone(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random-weight ``CausalWanModel`` built on the meta device, then materialised in place.

    Initialising on the target device in the target dtype avoids a 5.7 GB fp32 CPU copy
    at full size. Weights follow the fixture's rule (N(0, 1/fan_in), unit norm gains,
    modulation N/sqrt(dim)) so activations stay O(1) through all layers.
    """
    from lrag.modules.nets.wan import PRESETS, CausalWanModel

    if args.preset not in PRESETS:
        raise SystemExit(f"--preset {args.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[args.preset]()
    if args.num_layers is not None:
        cfg.num_layers = args.num_layers
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    model = model.to_empty(device=device).to(dtype).eval().requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.normal_(0.0, cfg.dim**-0.5, generator=gen)
            elif p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:  # norm gains
                p.fill_(1.0)
    return model


def kv_bytes_per_frame(model: torch.nn.Module, args: argparse.Namespace, dtype: torch.dtype) -> int:
    """K and V of one frame in all layers: layers x tokens x dim x 2 x bytes (~288 MB for 1.3B bf16)."""
    h, w = model.token_grid(args.height, args.width)
    return model.config.num_layers * h * w * model.config.dim * 2 * torch.finfo(dtype).bits // 8


def preflight(mode: Mode, frames: int, kv_frame: int, args: argparse.Namespace, device: torch.device) -> str | None:
    """Why ``mode`` cannot fit (None if it can): the pool keeps every evicted frame's K/V."""
    if mode.memory_size == 0 or args.force:
        return None
    stored = max(frames - args.window, 0)
    if mode.kv_tier == "device" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        need, have, where = stored * kv_frame, free - 4 * GIB, "free GPU memory (minus 4 GiB headroom)"
    elif mode.kv_tier in ("host", "device") and (avail := _proc_bytes("/proc/meminfo", "MemAvailable:")):
        # Pinned host blocks (K and V apart) are rounded up to a power of two by torch's caching host allocator.
        per = 2 * 2 ** math.ceil(math.log2(kv_frame // 2)) if device.type == "cuda" else kv_frame
        need, have, where = stored * per, 0.85 * avail, "85% of MemAvailable"
    else:  # recompute stores nothing
        return None
    if need > have:
        return (f"skipped: the pool would hold {stored} frames x {kv_frame / MIB:.0f} MiB = {need / GIB:.1f} GiB, "
                f"more than {where} ({have / GIB:.1f} GiB); pass --force to try anyway")
    return None


def make_sampler(mode: Mode, model: torch.nn.Module, args: argparse.Namespace, embedder: torch.nn.Module | None):
    from lrag.memory.bank import RetrievalMemory
    from lrag.modules.sampler import ARSampler
    from lrag.modules.schedule import FlowMatchSchedule

    schedule = FlowMatchSchedule(shift=args.shift, denoising_steps=args.steps, warp=True)
    memory = RetrievalMemory(mode.memory_size, args.recent_exclude, args.descriptor, None, mode.kv_tier)
    if embedder is not None:
        memory.set_embedder(embedder)
    return ARSampler(model, schedule, memory, args.frames_per_block, args.window, args.sink)


def run_once(sampler, context: torch.Tensor, frames: int, args: argparse.Namespace,
             device: torch.device, seed: int) -> tuple[dict, torch.Tensor]:
    """One sampler call of ``frames`` frames, sampled per block; returns (record, latents)."""
    noise = make_noise(sampler, args, context, seed)
    trace = Trace()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    rss0, tic = _proc_bytes("/proc/self/status", "VmRSS:"), time.perf_counter()
    last = tic

    def on_block(result) -> None:
        nonlocal last
        sync(device)
        now = time.perf_counter()
        trace.block_s.append(now - last)
        last = now
        trace.frames.append(result.start_frame + result.latents.shape[1])
        trace.rss.append(_proc_bytes("/proc/self/status", "VmRSS:") or 0.0)
        trace.gpu.append(float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0)
        trace.retrieved += result.retrieval is not None

    out = sampler(noise, context, frames, on_block=on_block)
    sync(device)
    wall = time.perf_counter() - tic
    return summarise(trace, sampler, out, frames, wall, rss0, device), out


def make_noise(sampler, args: argparse.Namespace, context: torch.Tensor, seed: int):
    from lrag.modules.sampler import SeededNoise

    return SeededNoise(seed, context.shape[0], sampler.backbone.config.in_dim, args.height, args.width,
                       args.frames_per_block, device=context.device, dtype=context.dtype)


def summarise(trace: Trace, sampler, out: torch.Tensor, frames: int, wall: float, rss0: float | None,
              device: torch.device) -> dict:
    late = [i for i, _ in enumerate(trace.frames) if i >= SLOPE_FROM_BLOCK]
    xs = [float(trace.frames[i]) for i in late]
    rss_slope = slope(xs, [trace.rss[i] for i in late]) if rss0 is not None else None
    gpu_slope = slope(xs, [trace.gpu[i] for i in late]) if device.type == "cuda" else None
    stored = sampler.memory.stored_bytes()
    return {
        "frames": frames,
        "wall_s": wall,
        "frames_per_s": frames / wall,
        "steady_frames_per_s": (trace.frames[-1] - trace.frames[late[0] - 1]) / sum(trace.block_s[i] for i in late)
        if late else None,  # blocks >= 5 only: RAG retrieves from there on
        "block_ms_median": 1e3 * statistics.median(trace.block_s),
        "block_ms_max": 1e3 * max(trace.block_s),
        "blocks_with_retrieval": trace.retrieved,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "gpu_growth_mib_per_frame": None if gpu_slope is None else gpu_slope / MIB,
        "host_rss_growth_mib_per_frame": None if rss_slope is None else rss_slope / MIB,
        "host_rss_growth_mib_total": None if rss0 is None else (trace.rss[-1] - rss0) / MIB,
        "stored_kv_gib": stored / GIB,
        "stored_kv_mib_per_frame": stored / MIB / frames,
        "finite": bool(torch.isfinite(out).all()),
        "latent_std": float(out.float().std()),
    }


def setup_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False: no GPU or a CPU-only torch")
        if device.index is None:  # set_device() needs an index ("cuda" alone is refused)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        # TF32 only touches fp32 matmuls (norm statistics, the float64->fp32 paths stay exact).
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True  # fixed shapes: the patch-embedding conv is tuned once
    name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return device, DTYPES[name]


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    cuda = device.type == "cuda"
    return {"torch": torch.__version__, "python": platform.python_version(), "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "host": platform.node(), "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None}


def modes_from(args: argparse.Namespace) -> list[Mode]:
    native = [Mode("native", 0, "device")] if "native" in args.modes else []
    return native + ([Mode(f"rag-{t}", args.memory_size, t) for t in args.kv_tier] if "rag" in args.modes else [])


def add_ratios(runs: list[dict]) -> None:
    """Throughput of each run relative to the native run of the same repeat and length."""
    native = {(r["repeat"], r["frames"]): r["frames_per_s"] for r in runs if r["mode"] == "native" and r["status"] == "ok"}
    for r in runs:
        base = native.get((r.get("repeat"), r.get("frames")))
        if r["status"] == "ok" and base:
            r["throughput_vs_native"] = r["frames_per_s"] / base
            r["retrieval_overhead_pct"] = 100.0 * (1.0 - r["throughput_vs_native"])
            if r["mode"] == "native" and r.get("device_type") == "cuda":
                r["native_vs_reference"] = r["frames_per_s"] / REFERENCE_NATIVE_FPS


# (header, run key, format) of the Markdown table's columns.
COLUMNS = [("mode", "mode", "s"), ("frames", "frames", "d"), ("latent frames/s", "frames_per_s", ".2f"),
           ("steady frames/s (blocks >= 5)", "steady_frames_per_s", ".2f"), ("vs native", "throughput_vs_native", ".3f"),
           ("retrieval overhead %", "retrieval_overhead_pct", ".1f"), ("ms/block (median)", "block_ms_median", ".0f"),
           ("peak GPU GiB", "peak_gpu_gib", ".2f"), ("GPU MiB/frame", "gpu_growth_mib_per_frame", ".1f"),
           ("host RSS MiB/frame", "host_rss_growth_mib_per_frame", ".1f"),
           ("stored KV MiB/frame", "stored_kv_mib_per_frame", ".1f"), ("finite", "finite", ""), ("status", "status", "s")]


def fmt(value, spec: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The results as a Markdown section (heading, environment line, one row per run)."""
    env, cfg = result["environment"], result["config"]
    lines = [
        f"### predict_wan: `{cfg['preset']}` ({cfg['num_layers']} layers), {cfg['height']}x{cfg['width']} latents, "
        f"steps {cfg['steps']}, window {cfg['window']}, sink {cfg['sink']}, K {cfg['memory_size']}, "
        f"R {cfg['recent_exclude']}, descriptor `{cfg['descriptor']}`",
        "",
        f"Device: {env['gpu'] or env['device']}, torch {env['torch']}, CUDA {env['cuda']}, dtype {env['dtype']}; "
        f"random weights; {cfg['warmup_blocks']} untimed warmup block(s) per mode.",
        "",
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(fmt(r.get(key), spec) for _, key, spec in COLUMNS) + " |" for r in result["runs"]]
    natives = [r["native_vs_reference"] for r in result["runs"] if "native_vs_reference" in r]
    if natives:
        lines += ["", f"Native vs the reference's ~{REFERENCE_NATIVE_FPS:g} latent frames/s: "
                  f"{', '.join(f'{x:.2f}x' for x in natives)} (target >= 1.2x on an H100)."]
    lines += ["", "Targets: retrieval overhead <= 2 %, GPU + host growth <= 30 MiB per generated frame.", ""]
    return "\n".join(lines)


def build_embedder(args: argparse.Namespace, in_dim: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
    """A random frame embedder at the latent size (reference defaults otherwise) for ``--descriptor ae``."""
    if args.descriptor != "ae":
        return None
    from lrag.modules.nets.autoencoder import AEConfig, LatentAE

    torch.manual_seed(args.seed)
    with torch.device(device):
        ae = LatentAE(AEConfig(in_channels=in_dim, spatial_h=args.height, spatial_w=args.width))
    return ae.to(dtype).eval().requires_grad_(False)


def measure(mode: Mode, frames: int, repeat: int, ctx: dict) -> dict:
    """Run one mode once; errors and skips become the record's status instead of aborting."""
    args, device = ctx["args"], ctx["device"]
    record = {"mode": mode.name, "memory_size": mode.memory_size, "kv_tier": mode.kv_tier if mode.memory_size else None,
              "frames": frames, "repeat": repeat, "device_type": device.type}
    reason = preflight(mode, frames, ctx["kv_frame"], args, device)
    elapsed = time.perf_counter() - ctx["t0"]
    est = frames / ctx["est_fps"] if ctx.get("est_fps") else 0.0
    if reason is None and args.time_budget and elapsed + est > args.time_budget:
        reason = (f"skipped: estimated {est:.0f} s would pass --time-budget {args.time_budget:.0f} s "
                  f"({elapsed:.0f} s used)")
    if reason is not None:
        log.warning("%s, %d frames: %s", mode.name, frames, reason)
        return {**record, "status": reason}
    log.info("running %s, %d frames (repeat %d)", mode.name, frames, repeat)
    sampler = ctx["samplers"][mode.name]
    try:
        stats, out = run_once(sampler, ctx["context"], frames, args, device, args.seed)
        del out
    except (RuntimeError, ValueError, MemoryError) as err:  # OOM is a RuntimeError subclass
        log.error("%s, %d frames failed: %s", mode.name, frames, err)
        stats = {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    finally:
        release(sampler, device)
    stats.setdefault("status", "ok" if stats.get("finite") else "non-finite output")
    if "frames_per_s" in stats:
        log.info("%s: %.2f latent frames/s", mode.name, stats["frames_per_s"])
        # Conservative: later runs (RAG tiers, longer videos) are estimated at the slowest speed seen.
        ctx["est_fps"] = min(ctx.get("est_fps") or math.inf, stats["frames_per_s"])
    return {**record, **stats}


def warmup(modes: list[Mode], ctx: dict) -> None:
    """One untimed call of ``--warmup-blocks`` blocks per mode; its speed seeds the time estimate."""
    args, device = ctx["args"], ctx["device"]
    frames = args.warmup_blocks * args.frames_per_block
    if frames <= 0:
        return
    best = 0.0
    for mode in modes:
        sampler = ctx["samplers"][mode.name]
        sync(device)
        tic = time.perf_counter()
        sampler(make_noise(sampler, args, ctx["context"], args.seed + 1), ctx["context"], frames)
        sync(device)
        best = max(best, frames / (time.perf_counter() - tic))
        release(sampler, device)
    ctx["est_fps"] = best


def write_json(path: str | None, result: dict) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)  # atomic: a timeout never leaves half a file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="wan_1_3b", help="lrag.modules.nets.wan.PRESETS entry")
    p.add_argument("--num-layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--frames", type=int, nargs="+", default=[120], help="latent frames per video (each value is run)")
    p.add_argument("--modes", nargs="+", default=["native", "rag"], choices=["native", "rag"])
    p.add_argument("--kv-tier", nargs="+", default=["device", "host"], choices=["device", "host", "recompute"],
                   help="RetrievalMemory.kv_tier values to measure in RAG mode")
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
    p.add_argument("--json", default=None, help="write results to this JSON file (rewritten after every run)")
    args = p.parse_args(argv)
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
    for frames in args.frames:
        for repeat in range(args.repeats):
            order = modes if repeat % 2 == 0 else modes[::-1]  # alternate so drift hits every mode alike
            for mode in order:
                result["runs"].append(measure(mode, frames, repeat, ctx))
                add_ratios(result["runs"])
                write_json(args.json, result)
    result["total_s"] = time.perf_counter() - t0
    write_json(args.json, result)
    print(markdown(result), flush=True)
    bad = [r for r in result["runs"] if r["status"].startswith("failed") or r["status"] == "non-finite output"]
    for r in bad:
        log.error("%s, %d frames: %s", r["mode"], r["frames"], r["status"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
