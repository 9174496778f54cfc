"""Training a small causal backbone on world clips: block-wise flow matching with memory exposure.

One training sample is built exactly as :class:`lrag.sampling.sampler.ARSampler` would see it
at inference: the clean frames before a target block are replayed through the backbone's own
KV cache (context passes, no grad; frames leaving the window are handed to a
:class:`GroundTruthMemory`), then the target block is noised at one of the schedule's timesteps
and one forward with grad predicts the flow ``noise - x0`` against
``[sink | memory | local window]``. Positions, budget and eviction are the sampler's, because
it is the same cache code.

*Memory exposure* is what makes a model use retrieved frames: a model trained only on
contiguous windows learns to ignore them (they share the sink's temporal position 0). For a
fraction ``memory_exposure`` of batches the memory slots hold far-past frames of the same
clip: with probability ``revisit_fraction`` per slot a frame showing the same place as the
target block (ground truth viewport overlap), otherwise a random evicted frame. The other
batches train the native layout (``memory_size 0``), so one model serves both arms of the
A/B evaluation. See ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrag.memory.oracle import GroundTruthMemory
from lrag.nets.camera import CameraConditioned
from lrag.nets.policy import AttentionPolicy
from lrag.sampling.prefix import prefixed_camera, with_blank_prefix
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings

log = logging.getLogger(__name__)

__all__ = ["FIT_SAMPLING", "BackboneFitModule"]

#: Sampler settings of ``sampling: null``: the tiny backbone's recipe (docs/training.md).
FIT_SAMPLING = SamplerSettings(window=10, positions="slot", sink_mode="blank")


class BackboneFitModule(L.LightningModule):
    """Fits a small causal backbone with the block-wise objective (module docstring).

    Args:
        backbone: Causal DiT (``lrag.nets.wan.CausalWanModel``, e.g. the tiny preset).
        text_encoder: ``prompts -> [B, L, text_dim]`` (``TinyTextEncoder``); L plus
            ``frames_per_block`` camera tokens must fit the backbone's ``text_len``.
        schedule: Flow-matching schedule; its warped denoising timesteps are the training
            timesteps with ``timestep_sampling: steps``.
        sampling: Block size, window, sink, budget, position rules and sink mode, exactly as
            the predict config will use them (:class:`lrag.sampling.settings.SamplerSettings`);
            ``None``: window 10, ``positions: slot``, ``sink_mode: blank`` and the other defaults.
            ``sink_mode: blank`` puts one block of zero frames before the clip, so the sink holds
            no information about the world (revisit gains cannot come from the sink).
        memory_size: K retrieved frames in exposed batches (as in the RAG predict config).
        recent_exclude: R newest evicted frames never retrieved.
        memory_exposure: Fraction of batches whose memory slots hold far-past frames.
        revisit_fraction: In exposed batches, chance per slot of a frame showing the same place.
        camera: ``"none"``, ``"motion"`` (per-frame camera displacement tokens) or
            ``"position"`` (motion tokens + every context frame's camera position as a
            spatial RoPE offset; see :class:`CameraConditioned`).
        timestep_sampling: ``"steps"`` (the schedule's denoising timesteps, uniformly) or
            ``"continuous"`` (uniform ``s`` through the schedule's shift).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        backbone: nn.Module,
        text_encoder: nn.Module,
        schedule: FlowMatchSchedule,
        sampling: SamplerSettings | None = None,
        memory_size: int = 2,
        recent_exclude: int = 1,
        memory_exposure: float = 0.6,
        revisit_fraction: float = 0.8,
        camera: Literal["none", "motion", "position"] = "motion",
        timestep_sampling: Literal["steps", "continuous"] = "steps",
        lr: float = 3e-4,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "text_encoder", "schedule", "sampling"])
        self.sampling = sampling if sampling is not None else FIT_SAMPLING
        # Flat knobs in hparams: checkpoints record them as plain values (loadable with
        # weights_only=True) and sampling reads them back by name (INFERENCE_KNOBS).
        self.hparams.update(dataclasses.asdict(self.sampling))
        for name, value in (("memory_exposure", memory_exposure), ("revisit_fraction", revisit_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"BackboneFitModule.{name}={value} must be in [0, 1].")
        if timestep_sampling not in ("steps", "continuous"):
            raise ValueError(f"BackboneFitModule.timestep_sampling={timestep_sampling!r}: 'steps' or 'continuous'.")
        # Both layouts must be valid, or the native half of training would fail mid-run.
        self.sampling.policy(memory_size)
        self.net = CameraConditioned(backbone, camera)
        self.text_encoder, self.schedule = text_encoder, schedule
        # Seeded from the global seed (LightningCLI seed_everything) so runs are reproducible.
        # The CPU generator draws per-batch choices (layout, target block); tensors are drawn
        # on the training device by a generator there, so a step needs no host round trip.
        self.seed = torch.initial_seed() % 2**63
        self.generator = torch.Generator().manual_seed(self.seed)
        self._device_gens: dict[str, torch.Generator] = {}
        self._context_memo: dict[str, Tensor] = {}
        self._tic: float | None = None

    def device_generator(self, device: torch.device) -> torch.Generator:
        """The random source of tensors drawn on ``device`` (created on first use)."""
        key = str(device)
        if key not in self._device_gens:
            self._device_gens[key] = torch.Generator(device=device).manual_seed(self.seed + 1)
        return self._device_gens[key]

    def encode_prompts(self, prompts: list[str], device: torch.device) -> Tensor:
        """Text context ``[B, L, D]``; each distinct prompt is encoded once if the encoder is frozen."""
        if any(p.requires_grad for p in self.text_encoder.parameters()):
            return self.text_encoder(prompts).to(device)
        missing = sorted(set(prompts) - self._context_memo.keys())
        if missing:
            for prompt, ctx in zip(missing, self.text_encoder(missing).to(device)):
                self._context_memo[prompt] = ctx
        uniq = sorted(set(prompts))
        table = torch.stack([self._context_memo[p].to(device) for p in uniq])
        index = torch.tensor([uniq.index(p) for p in prompts], dtype=torch.long).to(device, non_blocking=True)
        return table[index]

    @property
    def backbone(self) -> nn.Module:
        """The wrapped causal DiT."""
        return self.net.backbone

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the backbone's ``WanConfig`` (``backbone_config``) so export needs no guess."""
        config = getattr(self.backbone, "config", None)
        if dataclasses.is_dataclass(config):
            checkpoint["backbone_config"] = dataclasses.asdict(config)

    def policy(self, exposed: bool) -> AttentionPolicy:
        """The attention policy of an exposed (RAG layout) or native batch."""
        return self.sampling.policy(self.hparams.memory_size if exposed else 0)

    def _sequence(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Latents, positions and camera of the sequence the sampler would see (blank prefix)."""
        x, pos, cam = batch["latents"].float(), batch["positions"].float(), batch["camera"].float()
        p = self.sampling.prefix
        return (with_blank_prefix(x, p), *prefixed_camera(pos, cam, p))

    def _first_block(self, exposed: bool) -> int:
        """First block with an eligible memory candidate (exposed), else block 1."""
        hp = self.hparams
        if not exposed:
            return 1
        return -(-(hp.window + hp.recent_exclude + 1) // hp.frames_per_block)

    def _timesteps(self, batch: int, device: torch.device) -> Tensor:
        gen = self.device_generator(device)
        if self.hparams.timestep_sampling == "steps":
            steps = self.schedule.timesteps.to(device)
            return steps[torch.randint(len(steps), (batch,), generator=gen, device=device)].float()
        s = torch.rand(batch, generator=gen, device=device)
        shift = self.schedule.shift
        return 1000.0 * shift * s / (1 + (shift - 1) * s)

    def block_loss(self, batch: dict[str, Any], exposed: bool, target: int | None = None) -> Tensor:
        """Flow-matching MSE of one target block after a teacher-forced replay of its past.

        Everything runs batched on the batch's device; the only host-side randomness is the
        per-batch target block.

        Args:
            batch: ``latents [B,T,C,H,W]``, ``positions [B,T,2]``, ``camera [B,T,2]``, ``prompt``.
            exposed: Use the RAG layout with ground-truth memory selection.
            target: Target block index in the (prefixed) sequence; random if None.
        """
        hp = self.hparams
        x, pos, cam = self._sequence(batch)
        f, (b, n), dev = hp.frames_per_block, x.shape[:2], x.device
        blocks, first = n // f, self._first_block(exposed)
        if blocks <= first:
            raise ValueError(
                f"training window of {n} frames has {blocks} blocks; exposure needs > {first}: raise window_frames."
            )
        if target is None:
            target = int(torch.randint(first, blocks, (), generator=self.generator))
        gen = self.device_generator(dev)
        memory = GroundTruthMemory(hp.memory_size if exposed else 0, hp.recent_exclude, f, x.shape[-2:],
                                   hp.revisit_fraction, gen, kv_tier="device")
        memory.set_positions(pos)
        self.net.set_camera(cam, pos)
        cache = self.net.new_cache(self.policy(exposed), b, *x.shape[-2:], dtype=x.dtype, device=dev,
                                   on_evict=memory.store)
        context = self.encode_prompts(list(batch["prompt"]), dev).to(x.dtype)
        t_ctx = torch.full((b, f), self.schedule.context_noise, device=dev)
        with torch.no_grad():
            for j in range(target):
                mem = memory.gather(memory.retrieve(j * f), dev)
                self.net(x[:, j * f : (j + 1) * f], t_ctx, context, cache, j * f, mem)
        mem = memory.gather(memory.retrieve(target * f), dev)
        x0 = x[:, target * f : (target + 1) * f]
        t = self._timesteps(b, dev)[:, None].expand(b, f)
        noise = torch.randn(x0.shape, generator=gen, device=dev, dtype=x0.dtype)
        flow = self.net(self.schedule.add_noise(x0, noise, t), t, context, cache, target * f, mem)
        return F.mse_loss(flow, noise - x0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: D102
        exposed = float(torch.rand((), generator=self.generator)) < self.hparams.memory_exposure
        loss = self.block_loss(batch, exposed)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["latents"].shape[0])
        self.log(f"train/loss_{'exposed' if exposed else 'native'}", loss, batch_size=batch["latents"].shape[0])
        self._throughput(batch["latents"].shape[0])
        return loss

    def _throughput(self, batch: int, every: int = 50) -> None:
        """Log steps/s and samples/s every ``every`` steps (wall clock; queued work included)."""
        step = self.global_step
        if step % every:
            return
        now = time.perf_counter()
        if self._tic is not None and step:
            rate = every / (now - self._tic)
            rank_zero_info(f"step {step}: {rate:.2f} it/s, {rate * batch:.0f} samples/s")
            self.log("train/it_per_s", rate, batch_size=batch)
        self._tic = now

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
