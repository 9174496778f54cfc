"""Latency of the quick ``lrag`` commands (fresh interpreter each time): help and memory reads.

    python benchmarks/cli_latency.py --db runs/memory.lancedb --run RUN_ID [--repeats 5]

For each command: median wall time and median CPU time (user + sys of the child) over
``--repeats`` runs. Plain ``lrag fit|predict --help`` come from the help cache
(:mod:`lrag.commands.help_cache`) in a private ``XDG_CACHE_HOME``: the warm-up fills it, the
timed runs read it; the "cache miss" row gets an empty cache every time (the first call after an
install or upgrade). CPU time is what a quiet machine would show as wall time for these
single-threaded start-ups; on a shared machine wall time includes waiting for a core, so both
are reported with the load average. The table goes to stdout and, with ``--write``, replaces the
"CLI latency" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## CLI latency (2-core CPU dev machine)"


#: Rows whose every run starts from an empty help cache.
FRESH_CACHE = ("lrag predict --help (cache miss: renders and stores)",)


def _commands(db: str, run: str) -> list[tuple[str, list[str]]]:
    lrag = [sys.executable, "-m", "lrag.cli"]
    return [
        ("lrag --help", [*lrag, "--help"]),
        ("lrag data --help", [*lrag, "data", "--help"]),
        ("lrag memory --help", [*lrag, "memory", "--help"]),
        ("lrag demo --help", [*lrag, "demo", "--help"]),
        ("lrag memory runs", [*lrag, "memory", "runs", "--db", db]),
        ("lrag memory show RUN", [*lrag, "memory", "show", run, "--db", db]),
        ("lrag memory sql 'select count(*) from frames'",
         [*lrag, "memory", "sql", "--db", db, "select count(*) from frames"]),
        ("lrag eval --help", [*lrag, "eval", "--help"]),
        ("lrag export --help", [*lrag, "export", "--help"]),
        ("lrag fit --help", [*lrag, "fit", "--help"]),
        ("lrag predict --help", [*lrag, "predict", "--help"]),
        (FRESH_CACHE[0], [*lrag, "predict", "--help"]),
        ("python -c 'import lancedb' (what memory reads no longer pay)",
         [sys.executable, "-c", "import lancedb"]),
    ]


def _time(cmd: list[str], cache: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120", "XDG_CACHE_HOME": cache})
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    """Time every command and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="runs/memory.lancedb")
    parser.add_argument("--run", required=True, help="A run id of --db (for memory show).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="Update BENCHMARKS.md.")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lrag-help-cache-") as tmp:
        shared = str(Path(tmp) / "shared")
        for name, cmd in _commands(args.db, args.run):
            _time(cmd, shared)  # warm the file (and help) cache: every row then measures a warm start
            caches = [str(Path(tmp) / f"{name[:4]}-{i}") if name in FRESH_CACHE else shared
                      for i in range(args.repeats)]
            samples = [_time(cmd, cache) for cache in caches]
            rows.append((name, statistics.median(w for w, _ in samples),
                         statistics.median(c for _, c in samples)))
            print(f"{name:<62} wall {rows[-1][1]:6.2f} s   cpu {rows[-1][2]:6.2f} s", flush=True)
    load_after = os.getloadavg()
    lines = [SECTION, "",
             f"`python benchmarks/cli_latency.py --run RUN --repeats {args.repeats}` on the demo store "
             f"(median of {args.repeats} fresh interpreters after one warm-up; load average "
             f"{load[0]:.1f} before, {load_after[0]:.1f} after, on 2 cores shared with other jobs). "
             "CPU = user + sys of the command: its wall time on a quiet machine.", "",
             "| command | wall (s) | CPU (s) |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {wall:.2f} | {cpu:.2f} |" for name, wall, cpu in rows]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text(encoding="utf-8")
        pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n##+ |\Z)", re.S)  # keeps subsections
        text = pattern.sub(table.rstrip("\n"), text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + table
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
