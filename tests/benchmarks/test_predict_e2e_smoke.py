"""CPU smoke test of ``benchmarks/predict_e2e.py`` (bare vs ``lrag predict`` sync/async, 24 GB config)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "predict_e2e.py"


@pytest.mark.slow
def test_one_command_measures_bare_sync_async_and_the_memory_config(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("predict_e2e", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["predict_e2e"] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "e2e.json"
        assert module.main(["--tiny", "--frames", "6", "--repeats", "1", "--out", str(tmp_path / "w"),
                            "--json", str(out)]) == 0
    finally:
        sys.modules.pop("predict_e2e", None)
    result = json.loads(out.read_text())
    runs = {r["mode"]: r for r in result["runs"]}
    assert set(runs) == {"bare", "sync", "async"} and all(r["frames"] == 6 for r in runs.values())
    assert runs["sync"]["persist_queue"] == 0 and runs["async"]["persist_queue"] == 2
    for mode in ("sync", "async"):
        assert runs[mode]["loop_frames_per_s"] > 0 and runs[mode]["loop_vs_bare"] > 0
        assert runs[mode]["predict_s"] >= runs[mode]["loop_s"]
    memory = result["memory"]
    assert memory["frames"] == 6 and memory["text_encoder_offload"] is True
    assert memory["codec"] == "WanVAECodec"  # the config's chunked Wan VAE decode, random weights
    printed = capsys.readouterr().out
    assert "loop / bare median" in printed and "self_forcing_24gb.yaml: peak GPU" in printed
