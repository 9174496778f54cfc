"""The attention step alone: one layer's ``KVCache.attend`` per call, RoPE cache on/off x SDPA backend.

Isolates what ``--rope-cache`` and ``--sdpa-backend`` change in ``predict_wan.py``: a one-layer
``KVCache`` at the full-size attention shapes (1560 tokens/frame, 12 heads x 128, window 12,
sink 1, 3 frames/block, 4 steps + context pass) is driven block after block with random
q/k/v; the steady blocks (window full) are timed, variants interleaved, best of ``--repeats``.
Outputs of the RoPE-cache variants are compared with the uncached ones (bit-identical expected).

    python3 benchmarks/kv_attend.py --device cuda --sdpa-backend auto cudnn flash
    python3 benchmarks/kv_attend.py --device cpu --tokens 104 --heads 4 --dtype float32   # CPU check
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lrag.nets.attention import SDPA_BACKENDS, sdpa_backend
from lrag.nets.kv_cache import KVCache
from lrag.nets.policy import AttentionPolicy

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--tokens", type=int, default=1560, help="tokens per frame (rows x cols; 30x52 at 832x480)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--sink", type=int, default=1)
    p.add_argument("--memory-size", type=int, default=0, help="K retrieved frames (slot positions when > 0)")
    p.add_argument("--frames-per-block", type=int, default=3)
    p.add_argument("--calls", type=int, default=5, help="forwards per block (denoising steps + context pass)")
    p.add_argument("--blocks", type=int, default=12, help="blocks per repeat; those after the window fills are timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sdpa-backend", nargs="+", default=["auto"], choices=list(SDPA_BACKENDS))
    args = p.parse_args(argv)
    if args.tokens % 2:
        p.error(f"--tokens {args.tokens}: must be even (the frame is laid out as a 2-row grid)")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace, rope_cache: bool, backend: str, seed: int) -> tuple[float, torch.Tensor]:
    """Seconds per steady block and the last output of one repeat."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    grid = (2, args.tokens // 2)
    policy = AttentionPolicy(args.window, args.sink, args.memory_size)
    cache = KVCache.empty(policy, 1, 1, grid, args.heads, args.head_dim, dtype, device, rope_cache=rope_cache)
    f, t = args.frames_per_block, args.tokens
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (1, f * t, args.heads, args.head_dim)
    mem = None
    if args.memory_size:
        from lrag.nets.kv_cache import MemoryKV

        mshape = (1, args.memory_size * t, args.heads, args.head_dim)
        mem = MemoryKV([torch.randn(mshape, generator=gen, device=device, dtype=dtype)],
                       [torch.randn(mshape, generator=gen, device=device, dtype=dtype)], args.memory_size)
    first_timed = -(-args.window // f)
    out, tic = None, None
    with torch.no_grad(), sdpa_backend(backend):
        for block in range(args.blocks):
            if block == first_timed:
                _sync(device)
                tic = time.perf_counter()
            q, k, v = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(3))
            for _ in range(args.calls):
                plan = cache.begin(block * f, f, mem)
                out = cache.attend(plan, 0, q, k, v, mem)
                cache.finish()
    _sync(device)
    return (time.perf_counter() - tic) / (args.blocks - first_timed), out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [(backend, rc) for backend in args.sdpa_backend for rc in (True, False)]
    best = {v: float("inf") for v in variants}
    outs = {}
    cpu0 = time.process_time()
    for repeat in range(args.repeats):
        for v in variants if repeat % 2 == 0 else variants[::-1]:
            sec, outs[v] = run(args, v[1], v[0], seed=0)
            best[v] = min(best[v], sec)
    cpu = time.process_time() - cpu0
    print(f"| SDPA backend | RoPE cache | ms/block, one layer (best of {args.repeats}) | cached / uncached | "
          "output = uncached |")
    print("|---|---|---|---|---|")
    for backend, rc in variants:
        ratio = best[(backend, False)] / best[(backend, rc)]
        same = torch.equal(outs[(backend, rc)], outs[(backend, False)]) if rc else None
        print(f"| {backend} | {'on' if rc else 'off'} | {1e3 * best[(backend, rc)]:.2f} | "
              f"{f'{ratio:.2f}x faster' if rc else '-'} | {'-' if same is None else ('yes' if same else '**NO**')} |")
    print(f"\n{args.device}, {args.dtype}, {args.tokens} tokens/frame, {args.heads}x{args.head_dim} heads, window "
          f"{args.window}, sink {args.sink}, K {args.memory_size}, {args.calls} calls/block; "
          f"process CPU time {cpu:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
