"""CPU smoke test of the full-size GPU benchmark script at the tiny preset."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "predict_wan.py"
TINY = ["--device", "cpu", "--preset", "tiny", "--num-layers", "1", "--height", "8", "--width", "8"]
RUN_FIELDS = (
    "mode", "frames", "wall_s", "frames_per_s", "steady_frames_per_s", "block_ms_median", "block_ms_max",
    "blocks_with_retrieval", "peak_gpu_gib", "gpu_growth_mib_per_frame", "host_rss_growth_mib_per_frame",
    "stored_kv_mib_per_frame", "finite", "status", "throughput_vs_native", "retrieval_overhead_pct",
    "block_ms_first5", "block_ms_last5", "reserve_s", "host_ring_mib_per_frame", "host_mib_per_frame_incl_ring",
    "copied_frames_per_block",
)


@pytest.fixture(scope="module")
def predict_wan():
    spec = importlib.util.spec_from_file_location("predict_wan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["predict_wan"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("predict_wan", None)


@pytest.fixture(scope="module")
def smoke(predict_wan, tmp_path_factory):
    """One run: native + RAG with every KV tier, 7 blocks (retrieval starts at block 6)."""
    out = tmp_path_factory.mktemp("predict_wan") / "sub" / "wan.json"
    rc = predict_wan.main([*TINY, "--frames", "21", "--kv-tier", "device", "host", "int8", "recompute",
                           "--json", str(out)])
    return rc, json.loads(out.read_text())


@pytest.mark.slow  # the shared smoke run takes ~20 s on 2 cores
def test_all_modes_run_and_report_finite_numbers(smoke) -> None:
    rc, result = smoke
    assert rc == 0
    runs = {r["mode"]: r for r in result["runs"]}
    assert set(runs) == {"native", "rag-device", "rag-host", "rag-int8", "rag-recompute"}
    for name, run in runs.items():
        assert set(RUN_FIELDS) <= set(run), f"{name} lacks {set(RUN_FIELDS) - set(run)}"
        assert run["status"] == "ok" and run["finite"] is True
        assert run["frames"] == 21
        for key in ("wall_s", "frames_per_s", "steady_frames_per_s", "block_ms_median", "throughput_vs_native"):
            assert math.isfinite(run[key]) and run[key] > 0, (name, key, run[key])
        assert math.isfinite(run["host_rss_growth_mib_per_frame"])
        assert run["peak_gpu_gib"] is None  # CPU run
    assert runs["native"]["throughput_vs_native"] == pytest.approx(1.0)
    assert runs["native"]["blocks_with_retrieval"] == 0
    assert "native_vs_reference" not in runs["native"]  # the reference number is an H100 number


@pytest.mark.slow
def test_retrieval_and_stored_kv_follow_the_tier(smoke) -> None:
    _, result = smoke
    runs = {r["mode"]: r for r in result["runs"]}
    for name in ("rag-device", "rag-host", "rag-int8", "rag-recompute"):
        assert runs[name]["blocks_with_retrieval"] == 1  # block 6: pool 6, R 5 -> one candidate
    # 21 frames, window 12 -> 9 evicted frames of (1 layer x 16 tokens x 96 dims x K,V x fp32).
    kv_frame = result["config"]["kv_mib_per_frame"]
    assert kv_frame == pytest.approx(1 * 16 * 96 * 2 * 4 / 2**20)
    for name in ("rag-device", "rag-host"):
        assert runs[name]["stored_kv_mib_per_frame"] == pytest.approx(9 * kv_frame / 21)
    assert runs["rag-recompute"]["stored_kv_mib_per_frame"] == 0
    # The ring is reserved for exactly the 9 evicted frames: no rounding, nothing per frame.
    assert runs["rag-host"]["host_ring_vs_logical_kv"] == pytest.approx(1.0)
    assert runs["rag-int8"]["host_ring_vs_logical_kv"] == pytest.approx((1 + 4 / 96) / 4)  # int8 + scale vs fp32
    assert runs["rag-host"]["copied_frames_per_block"] == 1.0 and runs["native"]["copied_frames_per_block"] == 0
    assert runs["rag-host"]["equal_to_device_tier"] is True  # exact tier: bit-identical latents
    assert runs["rag-int8"]["equal_to_device_tier"] is False and "equal_to_device_tier" not in runs["native"]
    assert runs["native"]["stored_kv_mib_per_frame"] == 0


@pytest.mark.slow
def test_environment_and_markdown(predict_wan, smoke) -> None:
    _, result = smoke
    env = result["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["gpu"] is None
    table = predict_wan.markdown(result)
    rows = [line for line in table.splitlines() if line.startswith("| rag-") or line.startswith("| native")]
    assert len(rows) == 5
    header = next(line for line in table.splitlines() if line.startswith("| mode"))
    assert all(row.count("|") == header.count("|") for row in rows)


@pytest.mark.slow
def test_ae_descriptor_and_time_budget_skip(predict_wan, tmp_path, capsys) -> None:
    out = tmp_path / "ae.json"
    rc = predict_wan.main([*TINY, "--frames", "6", "--kv-tier", "device", "--descriptor", "ae",
                           "--time-budget", "1e-6", "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0  # a skip is not a failure
    assert [r["status"].split(":")[0] for r in result["runs"]] == ["skipped", "skipped"]
    assert "--time-budget" in result["runs"][0]["status"]
    assert "| native | 6 |" in capsys.readouterr().out


def test_preflight_names_the_shortfall(predict_wan) -> None:
    args = predict_wan.parse_args([*TINY, "--frames", "30"])
    mode = predict_wan.Mode("rag-host", 6, "host")
    reason = predict_wan.preflight(mode, 30, 2**50, args, predict_wan.torch.device("cpu"))
    assert reason is not None and "18 frames" in reason and "--force" in reason
    assert predict_wan.preflight(mode, 30, 1, args, predict_wan.torch.device("cpu")) is None
    assert predict_wan.preflight(predict_wan.Mode("native", 0, "device"), 30, 2**50, args, "cpu") is None


def test_bad_frames_are_rejected(predict_wan, capsys) -> None:
    with pytest.raises(SystemExit):
        predict_wan.parse_args([*TINY, "--frames", "10"])
    assert "--frames-per-block 3" in capsys.readouterr().err


def test_slope_is_least_squares(predict_wan) -> None:
    assert predict_wan.slope([1, 2, 3], [2, 4, 6]) == pytest.approx(2.0)
    assert predict_wan.slope([1, 2, 3, 4], [0, 1, 0, 1]) == pytest.approx(0.2)
    assert predict_wan.slope([5], [1]) is None


@pytest.mark.slow  # one more tiny run with the profiler, ~20 s on 2 busy cores
def test_profile_labels_every_stage_of_a_block(predict_wan, tmp_path) -> None:
    out = tmp_path / "wan.json"
    rc = predict_wan.main([*TINY, "--frames", "9", "--window", "6", "--memory-size", "2", "--recent-exclude", "2",
                           "--modes", "rag", "--kv-tier", "recompute",
                           "--json", str(out), "--profile", str(tmp_path / "prof")])
    assert rc == 0
    (prof,) = json.loads(out.read_text())["profiles"]
    stages = prof["stage_ms_per_block"]
    # A recompute block runs its denoising steps, a context pass and rebuilds retrieved frames.
    for label in ("denoise steps", "context pass", "recompute retrieved K/V", "plan (top-K search)"):
        assert stages.get(label, 0.0) > 0.0, (label, stages)
    text = (tmp_path / "prof" / "profile_rag-recompute.txt").read_text()
    assert "recompute retrieved K/V" in text and "ms/block" in text


@pytest.mark.slow  # 4 tiny runs, ~15 s on 2 cores
def test_speed_knobs_run_side_by_side_and_rope_cache_keeps_latents(predict_wan, tmp_path) -> None:
    out = tmp_path / "knobs.json"
    rc = predict_wan.main([*TINY, "--frames", "21", "--kv-tier", "device", "--sdpa-backend", "math",
                           "--rope-cache", "on", "off", "--json", str(out)])
    assert rc == 0
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"native[math]", "native[math,no-rope-cache]", "rag-device[math]",
                         "rag-device[math,no-rope-cache]"}
    assert runs["native[math]"]["equal_to_no_rope_cache"] is True
    assert runs["rag-device[math]"]["equal_to_no_rope_cache"] is True
    assert runs["rag-device[math,no-rope-cache]"]["throughput_vs_native"] > 0  # against its own variant's native


def test_compile_with_several_backends_is_refused(predict_wan, capsys) -> None:
    with pytest.raises(SystemExit):
        predict_wan.parse_args([*TINY, "--compile", "--sdpa-backend", "auto", "cudnn"])
    assert "run one process per backend" in capsys.readouterr().err
