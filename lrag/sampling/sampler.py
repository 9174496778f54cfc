"""The autoregressive block sampler: inference only, one ``__call__``.

Per block of ``frames_per_block`` latent frames (README of
``tests/fixtures/wan_reference``, "The AR loop"):

1. retrieval (top-K older frames) and one copy of their K/V to the device;
2. few-step denoising with re-noise between steps;
3. the final x0 is the block's output; descriptors are computed from it;
4. a context pass at ``t = context_noise`` writes the clean block into the KV cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from einops import rearrange
from torch import Tensor

from lrag.memory.bank import RetrievalMemory, RetrievalRecord
from lrag.nets.kv_cache import KVCache, MemoryKV
from lrag.nets.policy import AttentionPolicy
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings

__all__ = ["ARSampler", "BlockResult", "NoiseSource", "RecordedNoise", "SeededNoise"]

log = logging.getLogger(__name__)


class NoiseSource(Protocol):
    """Where a block's Gaussian draws come from."""

    def initial(self, block: int) -> Tensor:
        """Initial noise of a block, ``[B, f, C, H, W]``."""

    def renoise(self, block: int, step: int) -> Tensor:
        """Noise added after denoising step ``step``, ``[B*f, C, H, W]`` (batch-major)."""


class SeededNoise:
    """Per-block generators seeded from ``(seed, block, draw)``, so any block can be drawn alone.

    A resumed run therefore draws exactly the noise an uninterrupted one would.

    Args:
        seed: Run seed.
        batch, channels, height, width: Latent shape of one frame batch.
        frames_per_block: Frames per block.
        device: Device of the returned tensors (draws happen on CPU for portability).
        dtype: dtype of the returned tensors.
    """

    def __init__(
        self,
        seed: int,
        batch: int,
        channels: int,
        height: int,
        width: int,
        frames_per_block: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.seed, self.batch, self.frames_per_block = int(seed), batch, frames_per_block
        self.frame_shape = (channels, height, width)
        self.device, self.dtype = device, dtype

    def _draw(self, block: int, draw: int, shape: tuple[int, ...]) -> Tensor:
        # A fixed integer mix (not Python's salted hash) keeps draws stable across processes.
        key = (self.seed * 1_000_003 + block) * 1_009 + draw
        gen = torch.Generator().manual_seed(key % (2**63 - 1))
        draw = torch.randn(shape, generator=gen).to(self.dtype)
        if torch.device(self.device).type == "cuda":  # a pageable copy would wait for the GPU to drain
            return draw.pin_memory().to(self.device, non_blocking=True)
        return draw.to(self.device)

    def initial(self, block: int) -> Tensor:
        return self._draw(block, 0, (self.batch, self.frames_per_block, *self.frame_shape))

    def renoise(self, block: int, step: int) -> Tensor:
        return self._draw(block, step + 1, (self.batch * self.frames_per_block, *self.frame_shape))


class RecordedNoise:
    """Replays recorded draws (a fixture's ``initial_noise`` and ``renoise`` list).

    Args:
        initial_noise: ``[B, F, C, H, W]`` for the whole video.
        renoise: Draws in call order: ``steps_per_block - 1`` per block.
        frames_per_block: Frames per block.
        steps_per_block: Denoising steps per block (re-noise happens after all but the last).
    """

    def __init__(self, initial_noise: Tensor, renoise: list[Tensor], frames_per_block: int, steps_per_block: int) -> None:
        self.initial_noise, self.draws = initial_noise, list(renoise)
        self.frames_per_block, self.per_block = frames_per_block, steps_per_block - 1

    def initial(self, block: int) -> Tensor:
        f = self.frames_per_block
        if (block + 1) * f > self.initial_noise.shape[1]:
            raise IndexError(f"RecordedNoise: no initial noise for block {block}")
        return self.initial_noise[:, block * f : (block + 1) * f]

    def renoise(self, block: int, step: int) -> Tensor:
        i = block * self.per_block + step
        if not 0 <= step < self.per_block or i >= len(self.draws):
            raise IndexError(f"RecordedNoise: no re-noise draw for block {block} step {step}")
        return self.draws[i]


@dataclass
class BlockResult:
    """A finished block, handed to ``on_block``.

    Attributes:
        block: Block index.
        start_frame: Global index of its first frame.
        latents: Clean latents ``[B, f, C, H, W]``.
        descriptors: ``[B, f, D]`` retrieval descriptors of these frames.
        retrieval: What the block retrieved, or None.
        seconds: Wall time of the block.
    """

    block: int
    start_frame: int
    latents: Tensor
    descriptors: Tensor | None
    retrieval: RetrievalRecord | None
    seconds: float


# (block, call index 0..steps, timestep [B, f], x0 [B, f, C, H, W]) -> None
StepCallback = Callable[[int, int, Tensor, Tensor], None]


class ARSampler:
    """Autoregressive block sampler over a cached causal backbone.

    Args:
        backbone: ``CausalWanModel`` (or anything with its ``forward`` and ``new_cache``).
        schedule: Flow-matching schedule (denoising timesteps, x0 conversion, re-noise).
        memory: Retrieval memory; ``memory_size: 0`` gives the native baseline.
        settings: Block size, window, sink, budget and position rules (:class:`SamplerSettings`).
        reference_cpu_alias: Store evicted frames the way the reference does on CPU
            (the K/V of the frames rolled into the evicted slots, not the evicted
            frames themselves). Only for reproducing its CPU golden fixture; keep False.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        schedule: FlowMatchSchedule,
        memory: RetrievalMemory,
        settings: SamplerSettings,
        reference_cpu_alias: bool = False,
    ) -> None:
        self.backbone, self.schedule, self.memory = backbone, schedule, memory
        self.settings = settings
        self.frames_per_block = settings.frames_per_block
        self.policy = settings.policy(memory.memory_size)
        self.reference_cpu_alias = reference_cpu_alias
        self.step_callback: StepCallback | None = None  # debugging / golden comparison hook

    # -- one forward -------------------------------------------------------------------------
    def _call(self, cache: KVCache, x: Tensor, t: float, context: Tensor, start: int, mem: MemoryKV | None) -> Tensor:
        tt = torch.full(x.shape[:2], float(t), dtype=torch.float32, device=x.device)
        flow = self.backbone(x, tt, context, cache, start, mem)
        return self.schedule.x0_from_flow(x, flow, tt)

    def _denoise(self, cache: KVCache, noise: Tensor, context: Tensor, start: int, block: int,
                 source: NoiseSource, mem: MemoryKV | None) -> Tensor:
        steps = self.schedule.timesteps.tolist()
        x = noise
        for i, t in enumerate(steps):
            x0 = self._call(cache, x, t, context, start, mem)
            self._report(block, i, t, x0)
            if i + 1 < len(steps):
                eps = source.renoise(block, i).to(x0.device, x0.dtype)
                x = self.schedule.add_noise(x0.flatten(0, 1), eps, steps[i + 1]).unflatten(0, x0.shape[:2])
        return x0

    def _context_pass(self, cache: KVCache, x0: Tensor, context: Tensor, start: int, block: int,
                      mem: MemoryKV | None) -> None:
        t = self.schedule.context_noise
        out = self._call(cache, x0, t, context, start, mem)
        self._report(block, len(self.schedule.timesteps), t, out)

    def _report(self, block: int, call: int, t: float, x0: Tensor) -> None:
        if self.step_callback is not None:
            self.step_callback(block, call, torch.full(x0.shape[:2], float(t)), x0)

    # -- the loop --------------------------------------------------------------------------
    def _new_cache(self, batch: int, height: int, width: int, context: Tensor) -> KVCache:
        self.memory.reset()
        return self.backbone.new_cache(
            self.policy, batch, height, width, dtype=context.dtype, device=context.device, on_evict=self.memory.store,
            reference_cpu_alias=self.reference_cpu_alias,
        )

    def _block(self, cache: KVCache, block: int, x: Tensor | None, context: Tensor,
               source: NoiseSource, last: bool = False) -> tuple[Tensor, Tensor, RetrievalRecord | None]:
        """Run one block; with ``x`` given (resume) only its context pass is replayed.

        Unless it is the ``last`` block, the next block's retrieval is planned before the
        context pass and its K/V copies are started right after enqueueing it.
        """
        start = block * self.frames_per_block
        record = self.memory.take(start)
        mem = self.memory.gather(record, context.device)
        generated = x is None
        if generated:
            x = self._denoise(cache, source.initial(block).to(context.device, context.dtype),
                              context, start, block, source, mem)
        descriptors = self.memory.describe(x)
        if generated and not last:  # the context pass evicts nothing: the next retrieval is known now
            self.memory.plan(start + self.frames_per_block)
        self._context_pass(cache, x, context, start, block, mem)
        self.memory.prefetch(context.device)  # its K/V copies overlap the context pass
        return x, descriptors, record

    @torch.no_grad()
    def __call__(
        self,
        noise: NoiseSource,
        context: Tensor,
        num_frames: int,
        on_block: Callable[[BlockResult], None] | None = None,
        resume_latents: Tensor | None = None,
        context_schedule: Callable[[int], Tensor] | None = None,
    ) -> Tensor:
        """Generate ``num_frames`` latent frames.

        Args:
            noise: Source of every Gaussian draw.
            context: Text embeddings ``[B, L, text_dim]`` on the compute device.
            num_frames: Frames to generate (a multiple of ``frames_per_block``).
            on_block: Called after every newly generated block (not for replayed ones).
            resume_latents: ``[B, F_done, C, H, W]`` clean latents of finished blocks; their
                context passes are replayed to rebuild cache, memory and descriptors.
            context_schedule: Optional prompt switching: ``frame -> context`` queried at
                every block start. When the context changes, the frames in the KV window
                are re-encoded with the new context (see :meth:`_recache`); the retrieval
                memory is kept.

        Returns:
            Latents ``[B, num_frames, C, H, W]``.
        """
        f = self.frames_per_block
        if num_frames <= 0 or num_frames % f:
            raise ValueError(f"num_frames ({num_frames}) must be a positive multiple of frames_per_block ({f})")
        first = noise.initial(0)
        b, _, c, h, w = first.shape
        done = self._check_resume(resume_latents, (b, c, h, w), num_frames)
        cache = self._new_cache(b, h, w, context)
        self._reserve(cache, num_frames)
        out = torch.empty(b, num_frames, c, h, w, dtype=context.dtype, device=context.device)
        self._install_recompute(out, lambda: context)
        for block in range(num_frames // f):
            tic = time.perf_counter()
            if context_schedule is not None:
                new = context_schedule(block * f).to(context)
                if not torch.equal(new, context):
                    self._recache(cache, out, new)
                context = new
            given = resume_latents[:, block * f : (block + 1) * f].to(out) if block < done else None
            x0, desc, record = self._block(cache, block, given, context, noise, last=(block + 1) * f == num_frames)
            out[:, block * f : (block + 1) * f] = x0
            if given is None and on_block is not None:
                on_block(BlockResult(block, block * f, x0, desc, record, time.perf_counter() - tic))
        return out

    def _reserve(self, cache: KVCache, num_frames: int) -> None:
        """Reserve the host ring (host/int8 tiers) for every frame this video can evict, now:
        growing it later would page-lock memory inside the block loop (a stall)."""
        k = cache.layers[0].k
        shape = (k.shape[0], len(cache.layers), cache.tokens_per_frame, k.shape[2], k.shape[3])
        self.memory.reserve(max(num_frames - self.policy.window, 0), shape, k.dtype, k.device)

    def _recache(self, cache: KVCache, out: Tensor, context: Tensor) -> None:
        """Prompt switch: re-encode the non-sink frames of the KV window with ``context``.

        Like LongLive's re-cache after a switch, the window's clean latents are run once
        more at ``t = context_noise`` under the new prompt, overwriting their K/V in
        place (one forward over the whole window, full attention among those frames);
        the sink keeps the old prompt's K/V and the retrieval pool is untouched.
        """
        self.memory.forget_recomputed()  # rebuilt K/V of retrieved frames belong to the old prompt
        sink = min(self.policy.sink, cache.num_filled)
        if cache.num_filled <= sink:
            return
        start = cache.slot_frames[sink]
        frames = out[:, start : cache.global_end]
        t = torch.full(frames.shape[:2], self.schedule.context_noise, dtype=torch.float32, device=frames.device)
        self.backbone(frames, t, context, cache, start, None)

    def _install_recompute(self, out: Tensor, context: Callable[[], Tensor]) -> None:
        """For ``kv_tier: recompute``: rebuild stored frames' K/V from their clean latents.

        Each frame is re-encoded alone (attending only to itself) at ``t = context_noise``,
        so the K/V approximate, and are not bit-identical to, the ones it had when it
        was evicted (then it also attended to its sink and local window). All frames of a
        call go through one forward, as a batch of ``frames x B`` one-frame videos.
        """
        if self.memory.kv_tier != "recompute":
            return
        h, w = out.shape[-2:]

        def rebuild(frames: list[int]) -> tuple[list[Tensor], list[Tensor]]:
            n, b = len(frames), out.shape[0]
            x = rearrange(out[:, frames], "b n c h w -> (n b) 1 c h w")
            cache = self.backbone.new_cache(AttentionPolicy(1, 0), n * b, h, w, dtype=out.dtype, device=out.device)
            t = torch.full(x.shape[:2], self.schedule.context_noise, dtype=torch.float32, device=x.device)
            self.backbone(x, t, context().repeat(n, 1, 1), cache, 0, None)  # alone: position irrelevant
            ks = [rearrange(layer.k, "(n b) t h d -> b n t h d", n=n) for layer in cache.layers]
            vs = [rearrange(layer.v, "(n b) t h d -> b n t h d", n=n) for layer in cache.layers]
            return ks, vs

        self.memory.set_recompute(rebuild)

    def _check_resume(self, resume: Tensor | None, frame: tuple[int, int, int, int], num_frames: int) -> int:
        if resume is None:
            return 0
        b, c, h, w = frame
        f = self.frames_per_block
        if resume.ndim != 5 or (resume.shape[0], *resume.shape[2:]) != (b, c, h, w) or resume.shape[1] % f:
            raise ValueError(
                f"resume_latents must be [B={b}, F_done (multiple of {f}), {c}, {h}, {w}], got {tuple(resume.shape)}"
            )
        if resume.shape[1] > num_frames:
            raise ValueError(f"resume_latents has {resume.shape[1]} frames, more than num_frames={num_frames}")
        if not torch.isfinite(resume).all():
            raise ValueError("resume_latents contains NaN/inf; the saved run state is corrupt")
        return resume.shape[1] // f
