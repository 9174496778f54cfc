"""Training a small causal backbone on world clips: block-wise flow matching with memory exposure.

One training sample is built exactly as :class:`lrag.modules.sampler.ARSampler` would see it
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

from lrag.memory.bank import RetrievalMemory, RetrievalRecord
from lrag.memory.retrieval import num_eligible
from lrag.modules.nets.attention import AttentionPolicy
from lrag.modules.nets.kv_cache import KVCache, MemoryKV
from lrag.modules.schedule import FlowMatchSchedule

log = logging.getLogger(__name__)

__all__ = ["BackboneFitModule", "CameraConditioned", "GroundTruthMemory"]


class GroundTruthMemory(RetrievalMemory):
    """A :class:`RetrievalMemory` whose selection comes from the camera path, not descriptors.

    Used for memory exposure in training (``revisit_fraction < 1``: some slots random) and as
    the pose/field-of-view *oracle* in evaluation (``revisit_fraction = 1``). A candidate's
    relevance is its best viewport IoU with any frame of the block being generated.

    Args:
        memory_size: K.
        recent_exclude: R, newest evicted frames that are never candidates.
        frames_per_block: Frames of the block a retrieval serves.
        frame_hw: ``(height, width)`` of a viewport in map cells (the latent frame size).
        revisit_fraction: Chance per slot of taking the next most-overlapping frame instead
            of a random eligible one.
        generator: Random source for the random slots (seeded for reproducible training).
        **kwargs: Passed to :class:`RetrievalMemory` (``descriptor``, ``kv_tier``, ...).
    """

    def __init__(self, memory_size: int, recent_exclude: int, frames_per_block: int,
                 frame_hw: tuple[int, int], revisit_fraction: float = 1.0,
                 generator: torch.Generator | None = None, **kwargs: Any) -> None:
        super().__init__(memory_size, recent_exclude, **kwargs)
        if not 0.0 <= revisit_fraction <= 1.0:
            raise ValueError(f"GroundTruthMemory.revisit_fraction={revisit_fraction} must be in [0, 1].")
        self.frames_per_block, self.frame_hw = frames_per_block, tuple(frame_hw)
        self.revisit_fraction, self.generator = revisit_fraction, generator
        self.iou: Tensor | None = None

    def set_positions(self, positions: Tensor) -> None:
        """Viewport positions ``[B, F, 2]`` (x, y) of every global frame; NaN = no place (blank).

        The IoU matrix is built on the positions' device (no host round trip).
        """
        h, w = self.frame_hw
        p = positions.to(torch.float64)
        ix = (w - (p[:, :, None, 0] - p[:, None, :, 0]).abs()).clamp(min=0)
        iy = (h - (p[:, :, None, 1] - p[:, None, :, 1]).abs()).clamp(min=0)
        inter = ix * iy
        self.iou = (inter / (2 * h * w - inter)).float().nan_to_num(0.0)  # (B, F, F)

    def _rand(self, *shape: int) -> Tensor:
        gen = self.generator
        if gen is not None and gen.device != self.iou.device:
            raise ValueError(f"GroundTruthMemory.generator is on {gen.device} but positions are on "
                             f"{self.iou.device}; pass a generator of the positions' device.")
        return torch.rand(shape, generator=gen, device=self.iou.device)

    def _pick(self, best: Tensor, k: int) -> Tensor:
        """Slot-by-slot choice over candidates ``best [B, E]`` -> indices ``[B, k]``, batched."""
        if self.revisit_fraction >= 1.0:  # oracle: best overlaps first, ties by age
            return torch.sort(best, dim=1, descending=True, stable=True).indices[:, :k]
        b, e = best.shape
        u, r = self._rand(b, k), self._rand(b, k, e)
        taken = torch.zeros(b, e, dtype=torch.bool, device=best.device)
        picks = []
        for j in range(k):
            rel = best.masked_fill(taken, -1.0)
            top = rel.argmax(dim=1)  # first maximum: oldest among equal overlaps
            revisit = (rel.gather(1, top[:, None])[:, 0] > 0) & (u[:, j] < self.revisit_fraction)
            pick = torch.where(revisit, top, r[:, j].masked_fill(taken, -1.0).argmax(dim=1))
            taken[torch.arange(b, device=best.device), pick] = True
            picks.append(pick)
        return torch.stack(picks, dim=1)

    def retrieve(self, query_frame: int) -> RetrievalRecord | None:  # noqa: D102
        if self.memory_size == 0:
            return None
        if self.iou is None:
            raise RuntimeError("GroundTruthMemory: call set_positions() before sampling.")
        eligible = self._pool_frames[: num_eligible(len(self._pool), self.recent_exclude)]
        if not eligible:
            return None
        cand = torch.tensor(eligible, dtype=torch.long, device=self.iou.device)
        block = self.iou[:, query_frame : min(query_frame + self.frames_per_block, self.iou.shape[1])]
        best = block.index_select(2, cand).amax(dim=1)  # (B, E): relevance of each candidate
        idx = self._pick(best, min(self.memory_size, len(eligible)))
        record = RetrievalRecord(query_frame, cand[idx], best.gather(1, idx))
        self.records.append(record)
        return record


CAMERA_MODES = ("none", "motion", "position")


class CameraConditioned(nn.Module):
    """A causal backbone with camera conditioning per frame.

    ``"motion"``: the backbone has no camera input; its cross-attention context is recomputed
    for every forward, so the smallest adapter is ``context = [text | one token per frame of
    the block]`` with a token made from the frame's camera displacement (dx, dy) by a small
    MLP. ``"position"``: the motion tokens plus every frame's camera position as a spatial
    RoPE offset (``KVCache.begin`` offsets: world position / patch size, in token units), so
    q.k of the block against every cached sink / memory / local frame sees their relative
    world displacement (no new parameters). ``"none"`` passes the context through.

    Args:
        backbone: ``CausalWanModel`` (``forward(x, t, context, cache, start_frame, memory, offsets)``).
        camera: ``"none"``, ``"motion"`` or ``"position"``.
        text_dim: Context width (the backbone's ``text_dim``).
    """

    def __init__(self, backbone: nn.Module, camera: Literal["none", "motion", "position"] = "motion",
                 text_dim: int | None = None) -> None:
        super().__init__()
        if camera not in CAMERA_MODES:
            raise ValueError(f"camera must be one of {CAMERA_MODES}, got {camera!r}.")
        self.backbone, self.camera = backbone, camera
        dim = text_dim or backbone.config.text_dim
        self.camera_mlp = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim)) if camera != "none" else None
        self.path: Tensor | None = None
        self.offsets: Tensor | None = None

    def set_camera(self, path: Tensor | None, positions: Tensor | None = None) -> None:
        """Camera of every global frame of the video.

        Args:
            path: Displacement ``[B, F_total, 2]`` (dx, dy) per frame.
            positions: Viewport position ``[B, F_total, 2]`` (x, y) in latent cells, NaN for
                frames with no place (blank sink); needed by ``camera="position"``.
        """
        self.path = path
        self.offsets = None
        if self.camera == "position" and positions is not None:
            _, ph, pw = self.backbone.config.patch_size
            # (x, y) cells -> (row, col) tokens; blank frames sit at the origin.
            pos = positions.float().nan_to_num(0.0)
            self.offsets = torch.stack([pos[..., 1] / ph, pos[..., 0] / pw], dim=-1)

    def new_cache(self, *args: Any, **kwargs: Any) -> KVCache:  # noqa: D102
        return self.backbone.new_cache(*args, **kwargs)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, cache: KVCache, start_frame: int,
                memory: MemoryKV | None = None) -> Tensor:
        """Backbone forward with the camera of frames ``start_frame .. start_frame+F-1``."""
        end = start_frame + x.shape[1]
        if self.camera_mlp is not None:
            if self.path is None or self.path.shape[1] < end:
                raise RuntimeError(
                    f"CameraConditioned: no camera path for frames up to {end}; "
                    "call set_camera() with the video's displacements first."
                )
            cam = self.path[:, start_frame:end].to(context)
            context = torch.cat([context, self.camera_mlp(cam)], dim=1)
        offsets = None
        if self.camera == "position":
            if self.offsets is None or self.offsets.shape[1] < end:
                raise RuntimeError(
                    f"CameraConditioned(camera='position'): no positions for frames up to {end}; "
                    "call set_camera(path, positions) with the video's viewport positions first."
                )
            offsets = self.offsets[:, start_frame:end].to(x.device)
        return self.backbone(x, t, context, cache, start_frame, memory, offsets)


class BackboneFitModule(L.LightningModule):
    """Fits a small causal backbone with the block-wise objective (module docstring).

    Args:
        backbone: Causal DiT (``lrag.modules.nets.wan.CausalWanModel``, e.g. the tiny preset).
        text_encoder: ``prompts -> [B, L, text_dim]`` (``TinyTextEncoder``); L plus
            ``frames_per_block`` camera tokens must fit the backbone's ``text_len``.
        schedule: Flow-matching schedule; its warped denoising timesteps are the training
            timesteps with ``timestep_sampling: steps``.
        frames_per_block: Latent frames per block (as in the predict config).
        window: KV window in frames, sink included (as in the predict config).
        sink: Sink frames.
        memory_size: K retrieved frames in exposed batches (as in the RAG predict config).
        recent_exclude: R newest evicted frames never retrieved.
        budget: ``"replace"`` or ``"add"`` (see ``AttentionPolicy``).
        positions: Temporal RoPE rule of sink/local frames, ``"auto" | "absolute" | "slot"``;
            use the same value at inference.
        memory_position: RoPE position of retrieved frames, ``"zero"`` (reference) or ``"slot"``.
        memory_exposure: Fraction of batches whose memory slots hold far-past frames.
        revisit_fraction: In exposed batches, chance per slot of a frame showing the same place.
        sink_mode: ``"blank"``: one block of zero frames precedes the clip, so the sink holds
            no information about the world (revisit gains cannot come from the sink);
            ``"first"``: the clip's first frame is the sink (confounds revisits of the start).
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
        frames_per_block: int = 3,
        window: int = 10,
        sink: int = 1,
        memory_size: int = 2,
        recent_exclude: int = 1,
        budget: Literal["replace", "add"] = "replace",
        positions: Literal["auto", "absolute", "slot"] = "slot",
        memory_position: Literal["zero", "slot"] = "zero",
        memory_exposure: float = 0.6,
        revisit_fraction: float = 0.8,
        sink_mode: Literal["blank", "first"] = "blank",
        camera: Literal["none", "motion", "position"] = "motion",
        timestep_sampling: Literal["steps", "continuous"] = "steps",
        lr: float = 3e-4,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "text_encoder", "schedule"])
        for name, value in (("memory_exposure", memory_exposure), ("revisit_fraction", revisit_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"BackboneFitModule.{name}={value} must be in [0, 1].")
        if sink_mode not in ("blank", "first"):
            raise ValueError(f"BackboneFitModule.sink_mode={sink_mode!r}: choose 'blank' or 'first'.")
        if timestep_sampling not in ("steps", "continuous"):
            raise ValueError(f"BackboneFitModule.timestep_sampling={timestep_sampling!r}: 'steps' or 'continuous'.")
        # Both layouts must be valid, or the native half of training would fail mid-run.
        AttentionPolicy(window, sink, memory_size, budget, positions, memory_position)
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
        hp = self.hparams
        return AttentionPolicy(hp.window, hp.sink, hp.memory_size if exposed else 0, hp.budget,
                               hp.positions, hp.memory_position)

    def _sequence(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Latents, positions and camera of the sequence the sampler would see (blank prefix)."""
        x, pos, cam = batch["latents"].float(), batch["positions"].float(), batch["camera"].float()
        if self.hparams.sink_mode == "blank":
            f = self.hparams.frames_per_block
            x = torch.cat([x.new_zeros(x.shape[0], f, *x.shape[2:]), x], dim=1)
            pos = torch.cat([pos.new_full((pos.shape[0], f, 2), float("nan")), pos], dim=1)
            cam = torch.cat([cam.new_zeros(cam.shape[0], f, 2), cam], dim=1)
        return x, pos, cam

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
