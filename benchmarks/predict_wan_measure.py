"""Measuring sampler runs for ``predict_wan.py``: per-block timing, GPU/host memory, pre-flight.

One run is one sampler call; every block end records a CUDA event (no device sync, so the host
may run ahead exactly as in production) and samples host RSS and allocated GPU memory, so growth
per frame is a slope over blocks (the first blocks, which fill the window, are skipped). The host
ring of the host/int8 tiers is reserved (pinned) before the clock starts and reported apart.
Errors and skips become a run's status instead of aborting.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from predict_wan_setup import GIB, MIB, Mode, apply_knobs, kv_bytes_per_frame, make_noise

log = logging.getLogger("predict_wan")

SLOPE_FROM_BLOCK = 5  # growth slopes skip the blocks that fill the window
EDGE_BLOCKS = 5  # per-block time of the first and last this many blocks (no growth with length)
PIN_GIB_PER_S = 4.0  # conservative page-locking speed, for the time estimate of a reservation


@dataclass
class Trace:
    """Per-block samples of one run (times after a device sync)."""

    block_s: list[float] = field(default_factory=list)
    events: list = field(default_factory=list)
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
    sampler.memory.release_storage()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        try:  # pinned blocks stay cached by torch otherwise; private API, absent in some builds
            getattr(torch._C, "_host_emptyCache", lambda: None)()
        except RuntimeError as err:
            log.warning("could not release cached pinned memory: %s", err)


def preflight(mode: Mode, frames: int, kv_frame: int, args: argparse.Namespace, device: torch.device) -> str | None:
    """Why ``mode`` cannot fit (None if it can): the pool keeps every evicted frame's K/V."""
    if mode.memory_size == 0 or args.force:
        return None
    stored = max(frames - args.window, 0)
    if mode.kv_tier == "device" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        need, have, where = stored * kv_frame, free - 4 * GIB, "free GPU memory (minus 4 GiB headroom)"
    elif mode.kv_tier in ("host", "int8", "device") and (avail := _proc_bytes("/proc/meminfo", "MemAvailable:")):
        # The host ring is reserved exactly (no power-of-two rounding); int8 halves it (+ scales).
        need, have, where = stored * ring_bytes_per_frame(mode, kv_frame), 0.85 * avail, "85% of MemAvailable"
    else:  # recompute stores nothing
        return None
    if need > have:
        return (f"skipped: the pool would hold {stored} frames x {kv_frame / MIB:.0f} MiB = {need / GIB:.1f} GiB, "
                f"more than {where} ({have / GIB:.1f} GiB); pass --force to try anyway")
    return None


def ring_bytes_per_frame(mode: Mode, kv_frame: int) -> int:
    """Host-ring bytes of one evicted frame: the logical KV, or int8 values + float32 per-token scales."""
    if mode.kv_tier == "int8":  # a float32 scale per token of dim >= 400 values is < 1 % on top
        return int(kv_frame / 2 * 1.01 / mode.store_stride)
    return kv_frame // mode.store_stride


def reserve(sampler, frames: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> float:
    """Reserve the host ring for every frame this run evicts (host/int8 tiers); returns seconds."""
    model = sampler.backbone
    th, tw = model.token_grid(args.height, args.width)
    cfg = model.config
    shape = (1, cfg.num_layers, th * tw, cfg.num_heads, cfg.dim // cfg.num_heads)
    tic = time.perf_counter()
    sampler.memory.reserve(max(frames - args.window, 0), shape, dtype, device)
    return time.perf_counter() - tic


def run_once(sampler, context: torch.Tensor, frames: int, args: argparse.Namespace,
             device: torch.device, seed: int) -> tuple[dict, torch.Tensor]:
    """One sampler call of ``frames`` frames, sampled per block; returns (record, latents)."""
    noise = make_noise(sampler, args, context, seed)
    trace = Trace()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_pre = _proc_bytes("/proc/self/status", "VmRSS:")
    reserve_s = reserve(sampler, frames, args, device, context.dtype)
    sync(device)
    rss0, tic = _proc_bytes("/proc/self/status", "VmRSS:"), time.perf_counter()
    last = tic
    cuda = device.type == "cuda"
    if cuda:
        trace.events.append(torch.cuda.current_stream(device).record_event(torch.cuda.Event(enable_timing=True)))

    def on_block(result) -> None:
        nonlocal last
        if cuda:  # GPU time stamps: no sync, the host keeps running ahead
            trace.events.append(torch.cuda.current_stream(device).record_event(torch.cuda.Event(enable_timing=True)))
        else:
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
    if cuda:
        trace.block_s = [a.elapsed_time(b) / 1e3 for a, b in zip(trace.events, trace.events[1:])]
    stats = summarise(trace, sampler, out, frames, wall, rss0, device)
    ring = sampler.memory.host_reserved_bytes()
    stored = max(frames - args.window, 1)
    stats.update({
        "reserve_s": reserve_s,
        "host_ring_mib_per_frame": ring / MIB / stored,
        "host_ring_vs_logical_kv": ring / stored / kv_bytes_per_frame(sampler.backbone, args, context.dtype)
        if ring else None,
        "host_mib_per_frame_incl_ring": None if rss_pre is None else (trace.rss[-1] - rss_pre) / MIB / frames,
        **{f"{k}_per_block": v / max(trace.retrieved, 1) for k, v in sampler.memory.copy_stats().items()},
    })
    return stats, out


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
        "block_ms_first5": 1e3 * statistics.fmean(trace.block_s[:EDGE_BLOCKS]),
        "block_ms_last5": 1e3 * statistics.fmean(trace.block_s[-EDGE_BLOCKS:]),
        "blocks_with_retrieval": trace.retrieved,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "gpu_growth_mib_per_frame": None if gpu_slope is None else gpu_slope / MIB,
        "host_rss_growth_mib_per_frame": None if rss_slope is None else rss_slope / MIB,
        "host_rss_growth_mib_total": None if rss0 is None else (trace.rss[-1] - rss0) / MIB,
        "stored_kv_gib": stored / GIB,
        "stored_kv_mib_per_frame": stored / MIB / frames,
        "finite": bool(torch.isfinite(out).all()),
        # Exact tiers must reproduce the device tier bit for bit (side-stream races would show here).
        "latents_sha256": hashlib.sha256(out.contiguous().view(torch.uint8).cpu().numpy().tobytes()).hexdigest(),
        "latent_std": float(out.float().std()),
    }


def measure(mode: Mode, frames: int, repeat: int, ctx: dict) -> dict:
    """Run one mode once; errors and skips become the record's status instead of aborting."""
    args, device = ctx["args"], ctx["device"]
    record = {"mode": mode.name, "base_mode": mode.base, "variant": mode.variant, "sdpa_backend": mode.sdpa,
              "rope_cache": mode.rope_cache, "memory_size": mode.memory_size,
              "kv_tier": mode.kv_tier if mode.memory_size else None,
              "frames": frames, "repeat": repeat, "device_type": device.type}
    reason = preflight(mode, frames, ctx["kv_frame"], args, device)
    elapsed = time.perf_counter() - ctx["t0"]
    est = frames / ctx["est_fps"] if ctx.get("est_fps") else 0.0
    if mode.kv_tier in ("host", "int8") and mode.memory_size:
        est += max(frames - args.window, 0) * ring_bytes_per_frame(mode, ctx["kv_frame"]) / GIB / PIN_GIB_PER_S
    if reason is None and args.time_budget and elapsed + est > args.time_budget:
        reason = (f"skipped: estimated {est:.0f} s would pass --time-budget {args.time_budget:.0f} s "
                  f"({elapsed:.0f} s used)")
    if reason is not None:
        log.warning("%s, %d frames: %s", mode.name, frames, reason)
        return {**record, "status": reason}
    log.info("running %s, %d frames (repeat %d)", mode.name, frames, repeat)
    sampler = ctx["samplers"][mode.name]
    apply_knobs(mode, sampler.backbone)
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
        apply_knobs(mode, sampler.backbone)
        sync(device)
        tic = time.perf_counter()
        sampler(make_noise(sampler, args, ctx["context"], args.seed + 1), ctx["context"], frames)
        sync(device)
        best = max(best, frames / (time.perf_counter() - tic))
        release(sampler, device)
    ctx["est_fps"] = best
