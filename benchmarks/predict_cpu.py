"""CPU predict benchmark: retrieval (RAG) vs native sliding window, measured in one run.

Each measurement is a fresh subprocess running ``lrag predict`` on the demo config, so its peak
RSS (``ru_maxrss``) belongs to that mode alone; RAG and native alternate (interleaved repeats)
so that drift of the machine (thermal, other load) hits both equally. Throughput is latent
frames per second of the AR loop (sum of per-block sampler seconds; video/store I/O excluded),
plus the end-to-end wall time of the process's predict call.

    python benchmarks/predict_cpu.py                 # 120 latent frames, 3 repeats
    python benchmarks/predict_cpu.py --write         # also append the table to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"rag": None, "native": 0}  # memory_size override (None keeps the config's)
TARGET_RATIO = 0.95


def _worker(mode: str, config: str, frames: int, out_dir: str) -> dict:
    """Run one predict in this process and return its measurements."""
    import torch

    from lrag.commands.lightning_cli import run_lightning

    args = ["predict", "--config", config,
            f"--model.init_args.num_frames={frames}",
            f"--model.init_args.out_dir={out_dir}",
            f"--model.init_args.store_uri={out_dir}/memory.lancedb",
            f"--model.init_args.run_name={mode}",
            "--model.init_args.write_video=false",
            "--model.init_args.progress=false",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            # without a logger Lightning saves config.yaml to default_root_dir: keep it in tmp
            f"--trainer.default_root_dir={out_dir}"]
    if MODES[mode] is not None:
        args.append(f"--model.init_args.memory.init_args.memory_size={MODES[mode]}")
    start = time.perf_counter()
    cli = run_lightning(args)
    wall = time.perf_counter() - start
    stats = cli.model.run_stats
    frames_done = sum(s["frames"] for s in stats)
    seconds = sum(s["seconds"] for s in stats)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"mode": mode, "frames": frames_done, "sampler_s": seconds,
            "frames_per_s": frames_done / seconds, "wall_s": wall,
            "peak_rss_mib": rss_kib / 1024, "threads": torch.get_num_threads()}


def _measure(mode: str, config: str, frames: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"lrag-bench-{mode}-") as tmp:
        cmd = [sys.executable, __file__, "--worker", mode, "--config", config,
               "--frames", str(frames), "--out", tmp]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker ({mode}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def _table(results: list[dict], frames: int, repeats: int, config: str) -> str:
    by_mode = {m: [r for r in results if r["mode"] == m] for m in MODES}
    fps = {m: statistics.median(r["frames_per_s"] for r in rs) for m, rs in by_mode.items()}
    ratio = fps["rag"] / fps["native"]
    lines = [
        f"### predict on CPU, {frames} latent frames ({date.today().isoformat()})",
        "",
        f"Machine: {_machine()}, {results[0]['threads']} torch threads. Config `{config}`, "
        f"{repeats} interleaved repeats per mode (median), each in its own process.",
        "",
        "| mode | latent frames/s (AR loop) | wall s (predict call) | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    for mode, rs in by_mode.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        rss = max(r["peak_rss_mib"] for r in rs)
        lines.append(f"| {mode} | {fps[mode]:.2f} | {wall:.1f} | {rss:.0f} |")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    lines += ["", f"RAG / native throughput: **{ratio:.3f}** ({verdict} the "
              f"{TARGET_RATIO} target).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run the benchmark (or one worker measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/predict/demo_random.yaml")
    parser.add_argument("--frames", type=int, default=120, help="latent frames per video")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode, interleaved")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.config, args.frames, args.out)))
        return
    results = []
    for repeat in range(args.repeats):
        for mode in (("rag", "native") if repeat % 2 == 0 else ("native", "rag")):
            results.append(_measure(mode, args.config, args.frames))
            print(f"  {mode:>6}: {results[-1]['frames_per_s']:.2f} frames/s, "
                  f"{results[-1]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    table = _table(results, args.frames, args.repeats, args.config)
    print(table)
    if args.write:
        with open(ROOT / "BENCHMARKS.md", "a", encoding="utf-8") as fh:
            fh.write("\n" + table)


if __name__ == "__main__":
    main()
