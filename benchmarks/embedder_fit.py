"""Throughput of ``lrag fit`` (Lightning) vs a plain PyTorch loop for the frame embedder.

Both loops train the same ``EmbedderModule`` config (same initial weights, optimiser, batch
size, precision and gradient clipping) on the same latent shards through the same
``LatentShardDataModule``. Per repeat, the first ``--warmup`` steps are excluded; the table
reports the median samples/s over ``--repeats`` and the ratio lightning / plain (target >= 0.95).

    python benchmarks/embedder_fit.py --config configs/embedder/demo.yaml --steps 50
    python benchmarks/embedder_fit.py --device cuda --config configs/embedder/wan.yaml --write

Without ``--data`` it writes synthetic shards of the config's latent size into a temp folder.
``--cached`` feeds both loops from batches held in memory (framework overhead only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import numpy as np
import torch
from einops import rearrange

from lrag.commands.lightning_cli import LragCLI
from lrag.data.shards import ShardWriter

log = logging.getLogger("embedder_fit")


class StepTimer(L.Callback):
    """Wall time of training steps ``warmup .. warmup+steps`` (device synchronised)."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, None, None

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:  # noqa: D102
        if trainer.global_step == self.warmup and self.start is None:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:  # noqa: D102
        self._sync()
        self.end = time.perf_counter()


def build(config: str, data_dir: str, device: str, total_steps: int, seed: int, samples: int) -> LragCLI:
    """Model, datamodule and trainer from the YAML, with checkpointing and validation off."""
    args = [
        "--config", config, "--data.init_args.data_dir", data_dir, "--seed_everything", str(seed),
        "--trainer.accelerator", "gpu" if device == "cuda" else "cpu", "--trainer.devices", "1",
        "--trainer.max_steps", str(total_steps), "--trainer.max_epochs", "-1",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(Path(tempfile.mkdtemp()) / "runs"),
        "--data.init_args.samples_per_epoch", str(samples),  # one epoch: no epoch-end cost timed
    ]  # fmt: skip
    return LragCLI(model_class=None, datamodule_class=None, subclass_mode_model=True,
                   subclass_mode_data=True, run=False, args=args, save_config_callback=None)


class CachedBatches:
    """An iterable of in-memory batches (a bare list would be read by Lightning as several loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def cycle(loader: Iterable) -> Iterable:
    while True:
        yield from loader


def run_lightning(cli: LragCLI, device: str, warmup: int, steps: int, batches: CachedBatches | None) -> float:
    timer = StepTimer(warmup, device)
    cli.trainer.callbacks.append(timer)
    if batches is None:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    else:
        cli.trainer.fit(cli.model, train_dataloaders=batches)
    return steps / (timer.end - timer.start)


def run_plain(cli: LragCLI, device: str, warmup: int, steps: int, batches: CachedBatches | None) -> float:
    """The same step written as a plain loop: forward, loss, backward, clip, optimiser step."""
    module, trainer = cli.model, cli.trainer
    net, criterion = module.net.to(device).train(), module.criterion
    optimizer = module.optimizer(net.parameters())
    clip = trainer.gradient_clip_val
    precision = str(trainer.precision)
    amp_dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    use_amp = "mixed" in precision
    scaler = torch.amp.GradScaler(device, enabled=use_amp and amp_dtype == torch.float16)
    if batches is None:
        cli.datamodule.setup("fit")
        batches = cli.datamodule.train_dataloader()
    stream = cycle(batches)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        latents = next(stream)["latents"].to(device, non_blocking=True)
        frames = rearrange(latents, "b t c h w -> (b t) c h w")
        with torch.autocast(device, dtype=amp_dtype, enabled=use_amp):
            recon, z = net(frames)
            out = criterion(recon, frames, rearrange(z, "(b t) d -> b t d", b=latents.shape[0]))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def synth_shards(out: Path, cli: LragCLI, samples: int, seed: int, max_bytes: float = 2e9) -> None:
    """Drifting random clips of the config's latent size, enough for ``samples`` training windows
    (capped at ``max_bytes``; past the cap the loader starts new epochs inside the timed steps)."""
    cfg, dm = cli.model.net.config, cli.datamodule
    rng = np.random.default_rng(seed)
    shape = (dm.seq_len, cfg.in_channels, cfg.spatial_h, cfg.spatial_w)
    per_shard = max(8, dm.batch_size // 2)
    clips = int(np.ceil(samples / (1.0 - dm.val_fraction))) + 2 * per_shard
    cap = int(max_bytes // (2 * np.prod(shape)))
    if clips > cap:
        log.warning("capping synthetic data at %d clips (%.1f GB); use --cached for steady timing", cap, max_bytes / 1e9)
    with ShardWriter(out, max_clips_per_shard=per_shard) as writer:
        for i in range(min(clips, cap)):
            clip = rng.standard_normal(shape[1:]) + np.cumsum(0.1 * rng.standard_normal(shape), axis=0)
            writer.write(f"clip{i:05d}", clip.astype(np.float16), {"source": "benchmark"})


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = f"{names[0]} ({len(names)} threads)" if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    return f"CPU {cpu}; GPU {gpu}; torch {torch.__version__}; lightning {L.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--config", default="configs/embedder/demo.yaml")
    parser.add_argument("--data", default=None, help="shard folder (default: synthetic shards)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cached", action="store_true", help="feed batches from memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    total = args.warmup + args.steps
    data = args.data or tempfile.mkdtemp(prefix="lrag-bench-shards-")
    probe = build(args.config, data, args.device, total, args.seed, 1)
    samples = total * probe.datamodule.batch_size
    make = lambda d: build(args.config, d, args.device, total, args.seed, samples)  # noqa: E731
    if args.data is None:
        synth_shards(Path(data), probe, samples, args.seed)
    batches = None
    if args.cached:
        probe = make(data)
        probe.datamodule.setup("fit")
        # A few distinct batches, referenced repeatedly: full-size runs would not fit otherwise.
        distinct = [b for b, _ in zip(cycle(probe.datamodule.train_dataloader()), range(min(total, 8)))]
        batches = CachedBatches([distinct[i % len(distinct)] for i in range(total)])
    rates: dict[str, list[float]] = {"lightning": [], "plain": []}
    for rep in range(args.repeats):
        order = ("lightning", "plain") if rep % 2 == 0 else ("plain", "lightning")
        for name in order:
            runner = run_lightning if name == "lightning" else run_plain
            rates[name].append(runner(make(data), args.device, args.warmup, args.steps, batches))
            log.info("repeat %d %s: %.2f steps/s", rep, name, rates[name][-1])
    report(args, make(data), rates)


def report(args: argparse.Namespace, cli: LragCLI, rates: dict[str, list[float]]) -> None:
    batch = cli.datamodule.batch_size
    med = {k: statistics.median(v) * batch for k, v in rates.items()}
    ratio = med["lightning"] / med["plain"]
    cfg = cli.model.net.config
    lines = [
        f"## Embedder fit throughput ({dt.date.today().isoformat()})", "",
        f"Machine: {machine(args.device)}", "",
        f"Config `{args.config}`: batch {batch} clips x {cli.datamodule.seq_len} frames of "
        f"{cfg.in_channels}x{cfg.spatial_h}x{cfg.spatial_w}, hidden {cfg.hidden_dims}, latent "
        f"{cfg.latent_dim}, precision {cli.trainer.precision}, data "
        f"{'in memory' if args.cached else 'shards via LatentShardDataModule'}; "
        f"{args.steps} timed steps after {args.warmup} warm-up, median of {args.repeats}.", "",
        "| loop | samples/s (median) | runs |", "|---|---|---|",
        *[f"| {k} | {med[k]:.1f} | {', '.join(f'{r * batch:.1f}' for r in rates[k])} |" for k in rates],
        "", f"Ratio lightning / plain: **{ratio:.3f}** (target >= 0.95).", "",
    ]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open("BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
