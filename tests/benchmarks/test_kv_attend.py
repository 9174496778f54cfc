"""CPU smoke test of the attention-step benchmark: every variant runs and the RoPE cache keeps outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kv_attend  # noqa: E402


@pytest.mark.parametrize("memory_size", [0, 2])
def test_variants_run_and_cached_outputs_are_equal(capsys, memory_size: int) -> None:
    args = ["--device", "cpu", "--dtype", "float32", "--tokens", "8", "--heads", "2", "--head-dim", "16",
            "--window", "6", "--blocks", "5", "--repeats", "1", "--sdpa-backend", "auto", "math",
            "--memory-size", str(memory_size)]
    assert kv_attend.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| auto") or
            line.startswith("| math")]
    assert len(rows) == 4
    assert all(row.endswith("| yes |") for row in rows if "| on |" in row)


def test_odd_token_count_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        kv_attend.parse_args(["--tokens", "7"])
    assert "--tokens 7: must be even" in capsys.readouterr().err
