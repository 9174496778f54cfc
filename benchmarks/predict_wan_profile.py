"""Where a block's time goes: a torch-profiler summary per mode for ``predict_wan.py --profile DIR``.

Issue 11 asks that every missed speed target comes with a profile that explains it. This runs
each mode once more, after the timed runs, for enough blocks to fill the window and retrieve,
and times a few steady-state blocks stage by stage. The sampler's and memory's stages are
wrapped here (on the *instance*, so the library carries no profiling code) with CUDA events on
the compute stream (host clocks on CPU): cheap and exact for GPU time. With ``torch_profiler``
the same blocks also run under ``torch.profiler`` (labels via ``record_function``) for a top-ops
table; that is much slower at full size. Per mode it writes ``DIR/profile_<mode>.txt`` and returns
the stage times in ms per block for the JSON.
"""

from __future__ import annotations

import argparse
import functools
import time
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


class _StageClock:
    """Per-label time of the stages of the blocks from ``start_block`` on (CUDA events or host clock)."""

    def __init__(self, device: torch.device, start_block: int) -> None:
        self.cuda = device.type == "cuda"
        self.start_block, self.block = start_block, 0
        self.spans: list[tuple[str, object, object]] = []

    def wrap(self, label: str, fn):
        @functools.wraps(fn)
        def wrapped(*a, **kw):
            if self.block < self.start_block:
                return fn(*a, **kw)
            begin = torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter()
            if self.cuda:
                begin.record()
            with record_function(label):
                out = fn(*a, **kw)
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
            else:
                end = time.perf_counter()
            self.spans.append((label, begin, end))
            return out

        return wrapped

    def totals_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for label, begin, end in self.spans:
            ms = begin.elapsed_time(end) if self.cuda else (end - begin) * 1e3
            out[label] = out.get(label, 0.0) + ms
        return out


def _instrument(sampler, clock: _StageClock) -> None:
    for path, label in STAGES:
        owner, _, attr = path.rpartition(".")
        obj = sampler.memory if owner == "memory" else sampler
        setattr(obj, attr, clock.wrap(label, getattr(obj, attr)))
    memory = sampler.memory
    original = memory.set_recompute

    def set_recompute(fn):  # the sampler installs the rebuild callback at the start of each call
        return original(None if fn is None else clock.wrap(REBUILD_LABEL, fn))

    memory.set_recompute = set_recompute


def profile_mode(mode, ctx: dict, out_dir: Path, active_blocks: int = 3, torch_profiler: bool = False) -> dict:
    """Time ``active_blocks`` steady-state blocks of ``mode`` per stage; returns ms/block per stage."""
    from predict_wan_measure import release
    from predict_wan_setup import apply_knobs, make_noise, make_sampler

    args: argparse.Namespace = ctx["args"]
    device = ctx["device"]
    sampler = make_sampler(mode, ctx["model"], args, ctx.get("embedder"))
    # Retrieval starts once evicted frames pass R; time after that, plus one block of warm-up.
    wait = max(args.window // args.frames_per_block + args.recent_exclude // args.frames_per_block + 2, 1)
    clock = _StageClock(device, wait + 1)
    _instrument(sampler, clock)
    apply_knobs(mode, sampler.backbone)
    blocks = wait + 1 + active_blocks
    frames = blocks * args.frames_per_block
    block_marks: list = []

    def on_block(_result) -> None:
        clock.block += 1
        if clock.block >= clock.start_block:
            if clock.cuda:
                block_marks.append(torch.cuda.Event(enable_timing=True))
                block_marks[-1].record()
            else:
                block_marks.append(time.perf_counter())
        if prof is not None:
            prof.step()

    prof = None
    noise = make_noise(sampler, args, ctx["context"], args.seed)
    if torch_profiler:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities,
                     schedule=schedule(wait=wait, warmup=1, active=active_blocks, repeat=1)) as prof:
            sampler(noise, ctx["context"], frames, on_block=on_block)
    else:
        sampler(noise, ctx["context"], frames, on_block=on_block)
    stages = {k: v / active_blocks for k, v in clock.totals_ms().items()}
    spans = list(zip(block_marks, block_marks[1:]))
    block_ms = [a.elapsed_time(b) if clock.cuda else (b - a) * 1e3 for a, b in spans]
    release(sampler, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {mode.name}: {active_blocks} steady blocks after {wait + 1}; "
             f"{'GPU (CUDA events on the compute stream)' if clock.cuda else 'host'} time per block",
             f"block: {sum(block_ms) / max(len(block_ms), 1):.1f} ms (block ends {len(block_ms)} measured); "
             "nested stages (recompute inside gather) are also counted in their parent", ""]
    lines += [f"{label:<28} {ms:9.2f} ms/block" for label, ms in sorted(stages.items(), key=lambda kv: -kv[1])]
    text = "\n".join(lines) + "\n"
    if prof is not None:
        events = prof.key_averages()
        sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
        try:
            text += "\n" + events.table(sort_by=sort, row_limit=20) + "\n"
        except (AttributeError, KeyError):  # older torch names it cuda_time_total
            text += "\n" + events.table(sort_by="cuda_time_total", row_limit=20) + "\n"
    (out_dir / f"profile_{mode.name}.txt").write_text(text)
    return {"mode": mode.name, "active_blocks": active_blocks, "stage_ms_per_block": stages,
            "block_ms": sum(block_ms) / max(len(block_ms), 1) if block_ms else None}
