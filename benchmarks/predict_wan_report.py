"""Results of ``predict_wan.py``: throughput ratios, the Markdown table and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE_NATIVE_FPS = 6.0  # DESIGN.md: the reference's native 1.3B bf16 throughput on one H100
# Dynamo shares one graph between blocks and models and does not guard on SDPA's backend flags:
# the compiled cross-attention keeps the kernel of the first traced call.
COMPILE_ONE_BACKEND = ("--compile with several --sdpa-backend values: a compiled graph keeps the SDPA kernel it was "
                       "traced with; run one process per backend")


def add_ratios(runs: list[dict]) -> None:
    """Throughput of each run relative to the native run of the same repeat, length and knobs.

    Also: exact RAG tiers against the device tier, and (GPU evidence of exactness) each run
    with the RoPE cache against its twin without it (same mode, backend, repeat, length).
    """
    ok = [r for r in runs if r["status"] == "ok"]

    def key(r: dict, *extra) -> tuple:
        return (r.get("repeat"), r.get("frames"), r.get("variant", ""), *extra)

    native = {key(r): r["frames_per_s"] for r in ok if r.get("base_mode", r["mode"]) == "native"}
    device = {key(r): r.get("latents_sha256") for r in ok if r.get("base_mode", r["mode"]) == "rag-device"}
    uncached = {(r.get("repeat"), r.get("frames"), r.get("base_mode"), r.get("sdpa_backend")): r.get("latents_sha256")
                for r in ok if r.get("rope_cache") is False}
    for r in ok:
        base_mode = r.get("base_mode", r["mode"])
        ref = device.get(key(r))
        if ref and base_mode.startswith("rag-"):
            r["equal_to_device_tier"] = r.get("latents_sha256") == ref
        twin = uncached.get((r.get("repeat"), r.get("frames"), base_mode, r.get("sdpa_backend")))
        if twin and r.get("rope_cache"):
            r["equal_to_no_rope_cache"] = r.get("latents_sha256") == twin
        base = native.get(key(r))
        if base:
            r["throughput_vs_native"] = r["frames_per_s"] / base
            r["retrieval_overhead_pct"] = 100.0 * (1.0 - r["throughput_vs_native"])
            if base_mode == "native" and r.get("device_type") == "cuda":
                r["native_vs_reference"] = r["frames_per_s"] / REFERENCE_NATIVE_FPS


# (header, run key, format) of the Markdown table's columns.
COLUMNS = [("mode", "mode", "s"), ("frames", "frames", "d"), ("latent frames/s", "frames_per_s", ".2f"),
           ("steady frames/s (blocks >= 5)", "steady_frames_per_s", ".2f"), ("vs native", "throughput_vs_native", ".3f"),
           ("retrieval overhead %", "retrieval_overhead_pct", ".1f"), ("ms/block (median)", "block_ms_median", ".0f"),
           ("ms/block first 5", "block_ms_first5", ".0f"), ("ms/block last 5", "block_ms_last5", ".0f"),
           ("peak GPU GiB", "peak_gpu_gib", ".2f"), ("GPU MiB/frame", "gpu_growth_mib_per_frame", ".1f"),
           ("host RSS MiB/frame", "host_rss_growth_mib_per_frame", ".1f"),
           ("host MiB/frame incl. ring", "host_mib_per_frame_incl_ring", ".1f"),
           ("ring / logical KV", "host_ring_vs_logical_kv", ".3f"), ("ring reserve s", "reserve_s", ".1f"),
           ("frames copied/block", "copied_frames_per_block", ".2f"),
           ("stored KV MiB/frame", "stored_kv_mib_per_frame", ".1f"), ("finite", "finite", ""),
           ("latents = device tier", "equal_to_device_tier", ""),
           ("latents = no RoPE cache", "equal_to_no_rope_cache", ""), ("status", "status", "s")]


def fmt(value, spec: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The results as a Markdown section (heading, environment line, one row per run)."""
    env, cfg = result["environment"], result["config"]
    lines = [
        f"### predict_wan: `{cfg['preset']}` ({cfg['num_layers']} layers), {cfg['height']}x{cfg['width']} latents, "
        f"steps {cfg['steps']}, window {cfg['window']}, sink {cfg['sink']}, K {cfg['memory_size']}, "
        f"R {cfg['recent_exclude']}, descriptor `{cfg['descriptor']}`",
        "",
        f"Device: {env['gpu'] or env['device']}, torch {env['torch']}, CUDA {env['cuda']}, dtype {env['dtype']}, "
        f"SDPA backends enabled {'/'.join(env.get('sdpa_enabled') or ['-'])}; "
        f"random weights; {cfg['warmup_blocks']} untimed warmup block(s) per mode.",
        "",
        "| " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(fmt(r.get(key), spec) for _, key, spec in COLUMNS) + " |" for r in result["runs"]]
    natives = [r["native_vs_reference"] for r in result["runs"] if "native_vs_reference" in r]
    if natives:
        lines += ["", f"Native vs the reference's ~{REFERENCE_NATIVE_FPS:g} latent frames/s: "
                  f"{', '.join(f'{x:.2f}x' for x in natives)} (target >= 1.2x on an H100)."]
    lines += ["", "Targets: exact tiers >= 0.98x native; a bounded tier with GPU + host growth <= 30 MiB per "
              "generated frame at >= 0.95x native; host ring <= 1.05x the logical KV per frame. Block times are "
              "CUDA-event stamps (no per-block sync); the ring is reserved before the clock starts ('ring "
              "reserve s'), and 'host MiB/frame incl. ring' counts it.", ""]
    return "\n".join(lines)


def write_json(path: str | None, result: dict) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)  # atomic: a timeout never leaves half a file
