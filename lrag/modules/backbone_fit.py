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

import logging
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrag.data.ground_truth import overlap_matrix
from lrag.memory.bank import RetrievalMemory, RetrievalRecord
from lrag.memory.retrieval import num_eligible
from lrag.modules.nets.attention import AttentionPolicy, KVCache, MemoryKV
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
        """Viewport positions ``[B, F, 2]`` (x, y) of every global frame; NaN = no place (blank)."""
        h, w = self.frame_hw
        self.iou = torch.stack([torch.from_numpy(overlap_matrix(p.cpu().numpy(), h, w)).float()
                                for p in positions]).nan_to_num(0.0)  # (B, F, F)

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _pick(self, scores: Tensor, eligible: list[int], k: int) -> list[int]:
        order = [eligible[i] for i in torch.sort(scores, descending=True, stable=True).indices.tolist()]
        relevant = [f for f, s in zip(order, scores.sort(descending=True, stable=True).values) if s > 0]
        picked: list[int] = []
        while len(picked) < k:
            rest_rel = [f for f in relevant if f not in picked]
            if rest_rel and self._rand() < self.revisit_fraction:
                picked.append(rest_rel[0])
            elif self.revisit_fraction >= 1.0:  # oracle: fill with the next best overlap
                picked.append(next(f for f in order if f not in picked))
            else:
                rest = [f for f in eligible if f not in picked]
                picked.append(rest[int(torch.randint(len(rest), (), generator=self.generator))])
        return picked

    def retrieve(self, query_frame: int) -> RetrievalRecord | None:  # noqa: D102
        if self.memory_size == 0:
            return None
        if self.iou is None:
            raise RuntimeError("GroundTruthMemory: call set_positions() before sampling.")
        eligible = self._pool_frames[: num_eligible(len(self._pool), self.recent_exclude)]
        if not eligible:
            return None
        block = list(range(query_frame, min(query_frame + self.frames_per_block, self.iou.shape[1])))
        k = min(self.memory_size, len(eligible))
        frames, scores = [], []
        for iou in self.iou:
            best = iou[block][:, eligible].amax(dim=0)  # relevance of each candidate
            picked = self._pick(best, eligible, k)
            frames.append(picked)
            scores.append([float(best[eligible.index(f)]) for f in picked])
        record = RetrievalRecord(query_frame, torch.tensor(frames), torch.tensor(scores))
        self.records.append(record)
        return record


class CameraConditioned(nn.Module):
    """A causal backbone whose per-block context gets camera tokens appended.

    The backbone has no camera input; its cross-attention context is recomputed for every
    forward, so the smallest faithful adapter is ``context = [text | one token per frame of
    the block]`` with a token made from the frame's camera displacement (dx, dy) by a small
    MLP. ``camera="none"`` passes the context through unchanged.

    Args:
        backbone: ``CausalWanModel`` (``forward(x, t, context, cache, start_frame, memory)``).
        camera: ``"none"`` or ``"motion"`` (per-frame displacement tokens).
        text_dim: Context width (the backbone's ``text_dim``).
    """

    def __init__(self, backbone: nn.Module, camera: Literal["none", "motion"] = "motion",
                 text_dim: int | None = None) -> None:
        super().__init__()
        if camera not in ("none", "motion"):
            raise ValueError(f"camera must be 'none' or 'motion', got {camera!r}.")
        self.backbone, self.camera = backbone, camera
        dim = text_dim or backbone.config.text_dim
        self.camera_mlp = nn.Sequential(nn.Linear(2, dim), nn.SiLU(), nn.Linear(dim, dim)) if camera != "none" else None
        self.path: Tensor | None = None

    def set_camera(self, path: Tensor | None) -> None:
        """Camera displacement ``[B, F_total, 2]`` of every global frame of the video."""
        self.path = path

    def new_cache(self, *args: Any, **kwargs: Any) -> KVCache:  # noqa: D102
        return self.backbone.new_cache(*args, **kwargs)

    def forward(self, x: Tensor, t: Tensor, context: Tensor, cache: KVCache, start_frame: int,
                memory: MemoryKV | None = None) -> Tensor:
        """Backbone forward with camera tokens of frames ``start_frame .. start_frame+F-1``."""
        if self.camera_mlp is not None:
            if self.path is None or self.path.shape[1] < start_frame + x.shape[1]:
                raise RuntimeError(
                    f"CameraConditioned: no camera path for frames up to {start_frame + x.shape[1]}; "
                    "call set_camera() with the video's displacements first."
                )
            cam = self.path[:, start_frame : start_frame + x.shape[1]].to(context)
            context = torch.cat([context, self.camera_mlp(cam)], dim=1)
        return self.backbone(x, t, context, cache, start_frame, memory)


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
        camera: ``"none"`` or ``"motion"``: per-frame camera displacement tokens.
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
        camera: Literal["none", "motion"] = "motion",
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
        self.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

    @property
    def backbone(self) -> nn.Module:
        """The wrapped causal DiT."""
        return self.net.backbone

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

    def _timesteps(self, batch: int) -> Tensor:
        if self.hparams.timestep_sampling == "steps":
            steps = self.schedule.timesteps
            return steps[torch.randint(len(steps), (batch,), generator=self.generator)].float()
        s = torch.rand(batch, generator=self.generator)
        shift = self.schedule.shift
        return 1000.0 * shift * s / (1 + (shift - 1) * s)

    def block_loss(self, batch: dict[str, Any], exposed: bool, target: int | None = None) -> Tensor:
        """Flow-matching MSE of one target block after a teacher-forced replay of its past.

        Args:
            batch: ``latents [B,T,C,H,W]``, ``positions [B,T,2]``, ``camera [B,T,2]``, ``prompt``.
            exposed: Use the RAG layout with ground-truth memory selection.
            target: Target block index in the (prefixed) sequence; random if None.
        """
        hp = self.hparams
        x, pos, cam = self._sequence(batch)
        f, (b, n) = hp.frames_per_block, x.shape[:2]
        blocks = n // f
        first = self._first_block(exposed)
        if blocks <= first:
            raise ValueError(
                f"training window of {n} frames has {blocks} blocks; exposure needs > {first}: raise window_frames."
            )
        if target is None:
            target = int(torch.randint(first, blocks, (), generator=self.generator))
        memory = GroundTruthMemory(hp.memory_size if exposed else 0, hp.recent_exclude, f, x.shape[-2:],
                                   hp.revisit_fraction, self.generator, kv_tier="device")
        memory.set_positions(pos)
        self.net.set_camera(cam)
        cache = self.net.new_cache(self.policy(exposed), b, *x.shape[-2:], dtype=x.dtype, device=x.device,
                                   on_evict=memory.store)
        context = self.text_encoder(list(batch["prompt"])).to(x)
        with torch.no_grad():
            for j in range(target):
                mem = memory.gather(memory.retrieve(j * f), x.device)
                clean = x[:, j * f : (j + 1) * f]
                memory.describe(clean)
                t_ctx = torch.full((b, f), self.schedule.context_noise, device=x.device)
                self.net(clean, t_ctx, context, cache, j * f, mem)
        mem = memory.gather(memory.retrieve(target * f), x.device)
        x0 = x[:, target * f : (target + 1) * f]
        t = self._timesteps(b).to(x.device)[:, None].expand(b, f)
        noise = torch.randn(x0.shape, generator=self.generator).to(x0)
        flow = self.net(self.schedule.add_noise(x0, noise, t), t, context, cache, target * f, mem)
        return F.mse_loss(flow, noise - x0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:  # noqa: D102
        exposed = float(torch.rand((), generator=self.generator)) < self.hparams.memory_exposure
        loss = self.block_loss(batch, exposed)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["latents"].shape[0])
        self.log(f"train/loss_{'exposed' if exposed else 'native'}", loss, batch_size=batch["latents"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
