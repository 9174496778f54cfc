"""Where a block's time goes: a torch-profiler summary per mode for ``predict_wan.py --profile DIR``.

Issue 11 asks that every missed speed target comes with a profile that explains it. This runs
each mode once more, after the timed runs, for enough blocks to fill the window and retrieve,
and profiles a few steady-state blocks. The sampler's and memory's stages are labelled with
``record_function`` by wrapping the *instance's* methods here, so the library carries no
profiling code. Per mode it writes ``DIR/profile_<mode>.txt`` (stage table + top ops by device
time) and returns the stage times in ms per block for the JSON.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

# (object attribute path, label): the stages a block consists of.
STAGES = (
    ("_denoise", "denoise steps"),
    ("_context_pass", "context pass"),
    ("memory.describe", "describe (descriptor)"),
    ("memory.plan", "plan (top-K search)"),
    ("memory.prefetch", "prefetch (start copies)"),
    ("memory.gather", "gather retrieved K/V"),
    ("memory.store", "store evicted K/V"),
)
REBUILD_LABEL = "recompute retrieved K/V"


def _label(obj, attr: str, label: str) -> None:
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        with record_function(label):
            return fn(*a, **kw)

    setattr(obj, attr, wrapped)


def _instrument(sampler) -> None:
    for path, label in STAGES:
        owner, _, attr = path.rpartition(".")
        _label(sampler.memory if owner == "memory" else sampler, attr, label)
    memory = sampler.memory
    original = memory.set_recompute

    def set_recompute(fn):  # the sampler installs the rebuild callback at the start of each call
        if fn is None:
            return original(None)

        def rebuild(frames):
            with record_function(REBUILD_LABEL):
                return fn(frames)

        return original(rebuild)

    memory.set_recompute = set_recompute


def _device_us(evt) -> float:
    return float(getattr(evt, "device_time_total", 0.0) or getattr(evt, "cuda_time_total", 0.0) or 0.0)


def profile_mode(mode, ctx: dict, out_dir: Path, active_blocks: int = 3) -> dict:
    """Profile ``active_blocks`` steady-state blocks of ``mode``; returns ms/block per stage."""
    from predict_wan_measure import release
    from predict_wan_setup import apply_knobs, make_noise, make_sampler

    args: argparse.Namespace = ctx["args"]
    device = ctx["device"]
    sampler = make_sampler(mode, ctx["model"], args, ctx.get("embedder"))
    _instrument(sampler)
    apply_knobs(mode, sampler.backbone)
    # Retrieval starts once evicted frames pass R; profile after that, plus one block of warm-up.
    wait = max(args.window // args.frames_per_block + args.recent_exclude // args.frames_per_block + 2, 1)
    blocks = wait + 1 + active_blocks
    frames = blocks * args.frames_per_block
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=1, active=active_blocks)) as prof:
        sampler(make_noise(sampler, args, ctx["context"], args.seed), ctx["context"], frames,
                on_block=lambda _result: prof.step())
    release(sampler, device)
    events = prof.key_averages()
    use_device = device.type == "cuda"
    labels = {label for _, label in STAGES} | {REBUILD_LABEL}
    stages = {}
    for evt in events:
        if evt.key in labels:
            t = _device_us(evt) if use_device else float(evt.cpu_time_total)
            stages[evt.key] = t / 1e3 / active_blocks
    sort = "device_time_total" if use_device else "cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=20)
    except (AttributeError, KeyError):  # older torch names it cuda_time_total
        table = events.table(sort_by="cuda_time_total" if use_device else sort, row_limit=20)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {mode.name}: {active_blocks} steady blocks after {wait + 1}, {'device' if use_device else 'CPU'} "
             "time per block (stages overlap where copies run on a side stream)", ""]
    lines += [f"{label:<28} {ms:9.2f} ms/block" for label, ms in sorted(stages.items(), key=lambda kv: -kv[1])]
    (out_dir / f"profile_{mode.name}.txt").write_text("\n".join(lines) + "\n\n" + table + "\n")
    return {"mode": mode.name, "active_blocks": active_blocks, "stage_ms_per_block": stages}
