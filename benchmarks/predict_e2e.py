"""``lrag predict`` end to end against the bare sampler, in one process, plus the <= 24 GB config.

Issue 11 targets 4 and 5. One command, random weights (``predict_e2e_setup.py`` says which parts
are stand-ins), on one GPU:

1. the throughput config (default ``configs/predict/self_forcing.yaml``) is built as ``lrag
   predict`` builds it (``LragCLI``); its ``ARSampler`` is then driven directly (**bare**: no
   store, shards, video or logger, exactly the sampler call of ``GeneratorModule``) and through
   ``trainer.predict`` with persistence (block files, shards, video, LanceDB rows, TensorBoard)
   written synchronously (``persist_queue: 0``, **sync**) and by the background writer
   (**async**), interleaved over ``--repeats``, the same backbone object for all;
2. the memory config (default ``configs/predict/self_forcing_24gb.yaml``) once, end to end,
   reporting peak GPU memory (``torch.cuda.max_memory_allocated``) and frames/s.

Loop frames/s = frames / (sampler start .. last block persisted); ``predict`` frames/s also counts
the per-video work around the loop (prompt encoding, consolidated clip, plot, store compaction).
Steady = blocks >= 5. The host ring of the host tier is reserved before any clock starts.

    python benchmarks/predict_e2e.py --json gpu_out/e2e.json          # GPU, full size
    python benchmarks/predict_e2e.py --tiny --frames 24               # CPU plumbing check
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from predict_e2e_setup import (  # noqa: E402
    UMT5_XXL_PARAMS, BallastTextEncoder, build_cli, can_write_video, random_wan_vae, random_weight_config,
    reserve_ring,
)

log = logging.getLogger("predict_e2e")
ROOT = Path(__file__).resolve().parents[1]
GIB = 2.0**30
STEADY_FROM = 5  # blocks that fill the window (and precede retrieval) are left out of "steady"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/predict/self_forcing.yaml"))
    p.add_argument("--memory-config", default=str(ROOT / "configs/predict/self_forcing_24gb.yaml"),
                   help="run once end to end for peak GPU memory; 'none' skips it")
    p.add_argument("--frames", type=int, default=None, help="latent frames per video (default: the config's)")
    p.add_argument("--queue-depth", type=int, default=2, help="persist_queue of the async runs")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of bare / sync / async")
    p.add_argument("--tiny", action="store_true", help="tiny backbone on CPU at 8x8 latents (plumbing check)")
    p.add_argument("--out", default=None, help="folder for runs, store, logs (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def _device(trainer) -> torch.device:
    """The device ``trainer.predict`` runs on (one GPU or the CPU)."""
    return trainer.strategy.root_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _steady(times: list[float], frames_per_block: int) -> float | None:
    """Frames/s over blocks >= STEADY_FROM from per-block completion times (seconds from start)."""
    if len(times) <= STEADY_FROM:
        return None
    return (len(times) - STEADY_FROM) * frames_per_block / (times[-1] - times[STEADY_FROM - 1])


def bare(module, device: torch.device, frames: int, trainer) -> dict:
    """The sampler call of ``GeneratorModule._generate``, without persistence."""
    from lrag.sampling.sampler import ARSampler, SeededNoise

    hp = module.hparams
    sampler = ARSampler(module.backbone, module.schedule, module.memory, module.sampling)
    noise = SeededNoise(0, 1, module.channels, hp.height, hp.width, hp.frames_per_block)
    done: list[float] = []
    events: list = []
    with torch.inference_mode(), trainer.precision_plugin.forward_context():  # as trainer.predict
        context = module.text_encoder(["a lone hiker walks along a ridge"]).to(device)
        _peak_reset(device)
        _sync(device)
        tic = time.perf_counter()
        if device.type == "cuda":
            events.append(torch.cuda.Event(enable_timing=True))
            events[-1].record()

        def on_block(_result) -> None:
            if device.type == "cuda":  # GPU time stamps: no sync, as in production
                events.append(torch.cuda.Event(enable_timing=True))
                events[-1].record()
            else:
                done.append(time.perf_counter() - tic)

        sampler(noise, context, frames + module.sampling.prefix, on_block=on_block)
        _sync(device)
        wall = time.perf_counter() - tic
    if events:
        done = [events[0].elapsed_time(e) / 1e3 for e in events[1:]]
    return {"mode": "bare", "frames": frames, "loop_s": wall, "loop_frames_per_s": frames / wall,
            "steady_frames_per_s": _steady(done, hp.frames_per_block), "peak_gpu_gib": _peak_gib(device)}


def end_to_end(module, trainer, datamodule, device: torch.device, depth: int, label: str) -> dict:
    """One ``trainer.predict`` (one video) with ``persist_queue = depth``."""
    module.hparams.persist_queue = depth
    _peak_reset(device)
    tic = time.perf_counter()
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    wall = time.perf_counter() - tic
    stats = module.run_stats[-1]
    return {"mode": label, "persist_queue": depth, "frames": stats["frames"], "loop_s": stats["seconds"],
            "loop_frames_per_s": stats["frames_per_s"], "predict_s": wall,
            "predict_frames_per_s": stats["frames"] / wall,
            "steady_frames_per_s": _steady(stats["persisted_at"], module.hparams.frames_per_block),
            "peak_gpu_gib": _peak_gib(device), "run_id": stats["run_id"]}


def _warm(module, trainer, datamodule, device: torch.device, depth: int) -> None:
    """Untimed: two blocks through the sampler and through ``predict`` (kernels, store tables)."""
    frames = module.hparams.num_frames
    module.hparams.num_frames = 2 * module.hparams.frames_per_block
    try:
        bare(module, device, module.hparams.num_frames, trainer)
        end_to_end(module, trainer, datamodule, device, depth, "warmup")
    finally:
        module.hparams.num_frames = frames


def throughput(args: argparse.Namespace, out: Path) -> list[dict]:
    """Bare, sync and async runs of ``--config``, interleaved."""
    cli = build_cli(random_weight_config(args.config, out, args.frames, args.tiny, None), out)
    module, trainer, dm = cli.model, cli.trainer, cli.datamodule
    device = _device(trainer)
    dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
    module.to(device=device, dtype=dtype)  # what trainer.predict does for bf16-true
    frames = module.hparams.num_frames
    reserve_ring(module, frames, device, dtype)
    _warm(module, trainer, dm, device, args.queue_depth)
    runs = []
    for repeat in range(args.repeats):
        order = ["bare", "sync", "async"]
        for mode in order if repeat % 2 == 0 else order[::-1]:
            log.info("repeat %d: %s", repeat, mode)
            if mode == "bare":
                module.to(device)  # trainer.predict's teardown moved it back to the CPU
                run = bare(module, device, frames, trainer)
            else:
                run = end_to_end(module, trainer, dm, device, 0 if mode == "sync" else args.queue_depth, mode)
            runs.append({**run, "repeat": repeat})
            log.info("%s: %.3f latent frames/s (loop)", mode, run["loop_frames_per_s"])
    module.to("cpu")
    module.memory.release_storage()  # the memory config's peak must not count this model's leftovers
    del cli, module, trainer, dm
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for run in runs:
        base = next(r for r in runs if r["mode"] == "bare" and r["repeat"] == run["repeat"])
        run["loop_vs_bare"] = run["loop_frames_per_s"] / base["loop_frames_per_s"]
        if run.get("predict_frames_per_s"):
            run["predict_vs_bare"] = run["predict_frames_per_s"] / base["loop_frames_per_s"]
        if run["steady_frames_per_s"] and base["steady_frames_per_s"]:
            run["steady_vs_bare"] = run["steady_frames_per_s"] / base["steady_frames_per_s"]
    return runs


def memory_run(args: argparse.Namespace, out: Path) -> dict:
    """The <= 24 GB config once, end to end (async persistence), with its peak GPU memory."""
    vae = random_wan_vae(out / "wan_random", args.tiny)
    cli = build_cli(random_weight_config(args.memory_config, out, args.frames, args.tiny, vae), out)
    module, trainer, dm = cli.model, cli.trainer, cli.datamodule
    encoder = module.text_encoder
    module.text_encoder = BallastTextEncoder(encoder.text_len, encoder.text_dim,
                                             params=1_000_000 if args.tiny else UMT5_XXL_PARAMS)
    device = _device(trainer)
    dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
    reserve_ring(module, module.hparams.num_frames, device, dtype)  # pinned before the clock, as above
    before = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
    run = end_to_end(module, trainer, dm, device, module.hparams.persist_queue, "24gb-config")
    return {**run, "allocated_before_gib": before, "config": args.memory_config, "codec": type(module.codec).__name__,
            "text_encoder": "TinyTextEncoder + umT5-XXL-sized ballast (11.4 GB bf16)",
            "text_encoder_offload": bool(module.hparams.text_encoder_offload)}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"### predict_e2e: `lrag predict` vs the bare sampler ({Path(result['config']).name}, random weights)",
             "", f"Device: {env['device']}, torch {env['torch']}, {result['frames']} latent frames, "
             f"async queue depth {result['queue_depth']}; persisted per block: block files, shards, LanceDB rows, "
             f"TensorBoard scalars, {'video.mp4' if result['video'] else 'no video (PyAV absent)'}; "
             "loop = sampler start .. last block persisted.", "",
             "| repeat | mode | loop frames/s | vs bare | steady frames/s | steady vs bare | predict frames/s "
             "| predict vs bare | peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|"]

    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    for r in result["runs"]:
        lines.append(f"| {r['repeat']} | {r['mode']} | {f(r['loop_frames_per_s'])} | {f(r.get('loop_vs_bare'))} | "
                     f"{f(r['steady_frames_per_s'])} | {f(r.get('steady_vs_bare'))} | "
                     f"{f(r.get('predict_frames_per_s'))} | {f(r.get('predict_vs_bare'))} | {f(r['peak_gpu_gib'], '.2f')} |")
    for mode in ("sync", "async"):
        ratios = [r["loop_vs_bare"] for r in result["runs"] if r["mode"] == mode]
        if ratios:
            lines.append(f"\n{mode}: loop / bare median {statistics.median(ratios):.3f} (target >= 0.95)")
    if result.get("memory"):
        m = result["memory"]
        lines += ["", f"{Path(m['config']).name}: peak GPU {f(m['peak_gpu_gib'], '.2f')} GiB (target <= 24 GB = "
                  f"22.35 GiB), {m['loop_frames_per_s']:.3f} latent frames/s (loop), codec {m['codec']}, "
                  f"text encoder {m['text_encoder']}, offload {m['text_encoder_offload']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="lrag-e2e-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        runs = throughput(args, out / "throughput")
        result = {"config": args.config, "frames": runs[0]["frames"], "queue_depth": args.queue_depth,
                  "video": can_write_video(),
                  "environment": {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)
                                  if torch.cuda.is_available() and not args.tiny else "cpu"},
                  "runs": runs}
        if args.memory_config != "none":
            result["memory"] = memory_run(args, out / "memory")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
