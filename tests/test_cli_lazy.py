"""``lrag --help`` and the quick commands import no torch / Lightning (fresh interpreters).

Asserted on ``sys.modules``, not on time: timings live in BENCHMARKS.md (benchmarks/cli_latency.py).
Plain ``lrag fit|predict --help`` come from the help cache: tests/commands/test_help_cache.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "lancedb")

#: Runs ``lrag.cli.main(ARGS)`` and prints which heavy packages got imported.
PROBE = """
import json, sys
from lrag.cli import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit as err:
    if err.code not in (None, 0):
        raise
print("HEAVY=" + json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def _heavy_after(args: list[str], cwd: Path = ROOT) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("HEAVY=")][-1]
    return json.loads(line.removeprefix("HEAVY="))


def test_importing_the_cli_imports_no_torch_lightning_or_lancedb() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lrag.cli"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "lrag.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
    total_us = [int(line.split("|")[1]) for line in proc.stderr.splitlines()
                if line.split("|")[-1].strip() == "lrag.cli"][0]
    print(f"import lrag.cli: {total_us / 1e3:.1f} ms cumulative (python -X importtime)")


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["memory", "--help"],
                                  ["memory", "sql", "--help"], ["demo", "--help"],
                                  ["demo", "compare", "--help"], ["eval", "run", "--help"],
                                  ["eval", "--help"], ["export", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    assert _heavy_after(args) == []


@pytest.mark.slow
def test_memory_runs_show_sql_read_without_torch_or_lancedb(tmp_path) -> None:
    from lrag.memory.schema import FrameRow, RetrievalRow, RunInfo
    from lrag.memory.store import MemoryStore

    db = tmp_path / "memory.lancedb"
    store = MemoryStore(db, embedding_capacity=8)
    store.start_run(RunInfo(run_id="r1", config_yaml="", backbone="b", checkpoint_hashes={},
                            seed=0, frames_planned=2, prompts=["p"]))
    frames = [FrameRow("r1", i, 0, np.ones(8, np.float32), "s", "k") for i in range(2)]
    store.add_block("r1", 0, frames, [RetrievalRow("r1", 0, 1, 0, 0, 0.5)])
    assert _heavy_after(["memory", "runs", "--db", str(db)]) == []
    assert _heavy_after(["memory", "show", "r1", "--db", str(db)]) == []
    assert _heavy_after(["memory", "sql", "--db", str(db), "SELECT count(*) FROM frames"]) == []
