"""``GeneratorModule``: long-video sampling under ``lrag predict``.

The module is glue: the AR block loop is :class:`lrag.sampling.sampler.ARSampler`; the network,
memory, text encoder, codec and schedule are injected by ``class_path`` from YAML. What lives
here is the run's life: every finished block is handed to a background writer
(:mod:`lrag.runs.writer`, :mod:`lrag.runs.persist`) that puts it on disk (shard + float32 state),
in the LanceDB store (frames + retrievals rows) and in TensorBoard, in order, while the GPU goes
on with the next block; a finished or interrupted run loses no handed-over block and ``lrag
predict ... --resume RUN_ID`` continues it bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch import Tensor, nn

from lrag.assets import resolve_asset
from lrag.checkpoints.embedder import load_embedder
from lrag.checkpoints.generator import load_generator_weights
from lrag.checkpoints.io import checkpoint_hash
from lrag.data.prompts import WorldSpec
from lrag.memory.bank import RetrievalMemory
from lrag.memory.schema import RunInfo
from lrag.memory.store import MemoryStore
from lrag.runs.lifecycle import (check_new_run_folder, claim_run_folder, compact_after_run, mark_failed,
                                 open_resumed_run)
from lrag.runs.outputs import RunOutputs, preload_plotting
from lrag.runs.persist import BlockPersister, hand_over
from lrag.runs.progress import progress_bar
from lrag.runs.resume import VideoRun
from lrag.runs.rows import descriptor_tag, shift_result
from lrag.runs.truth import check_world, truncate_meta, truth_digest
from lrag.runs.writer import BlockWriter
from lrag.sampling.prefix import blank_block, condition_on_camera
from lrag.sampling.prompts import context_schedule, effective_schedule
from lrag.sampling.sampler import ARSampler, BlockResult, SeededNoise
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SAMPLER_KNOBS, SamplerSettings

log = logging.getLogger(__name__)

__all__ = ["GeneratorModule"]

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class GeneratorModule(L.LightningModule):
    """Samples long videos with retrieval-augmented AR diffusion and persists every block.

    Args:
        backbone: Causal video DiT (``CausalWanModel`` or the tiny preset) predicting flow,
            optionally wrapped in ``lrag.nets.camera.CameraConditioned`` (then the data
            must give each video a world: ``WorldPromptDataModule``).
        memory: Retrieval memory; ``memory_size: 0`` is the native sliding-window baseline.
        text_encoder: ``prompts -> [B, L, text_dim]`` context (``TinyTextEncoder``, umT5).
        codec: Latent -> uint8 video decoder with ``decode(latents [B,F,C,H,W])``.
        schedule: Flow-matching schedule (denoising steps, shift, context noise).
        sampling: Block size, window, sink, budget, position rules and sink mode of the AR
            loop (:class:`lrag.sampling.settings.SamplerSettings`); use the backbone's training
            values. ``None`` takes the defaults.
        num_frames: Latent frames per video; a multiple of ``sampling.frames_per_block``.
        channels: Latent channels C; ``None`` takes the codec's ``channels``.
        height: Latent height H.
        width: Latent width W.
        out_dir: Parent folder of the run directories ``<out_dir>/<run_id>/``.
        store_uri: LanceDB run memory (``runs``, ``frames``, ``retrievals`` tables).
        run_name: Run ids become ``<run_name>-<i>`` (i = video index of this process);
            ``None`` gives unique ``<date>-<time>-<shortid>`` ids.
        fps: Frames per second of ``video.mp4`` (and the shards' ``fps`` field).
        write_video: Decode through the codec and write ``video.mp4``.
        backbone_checkpoint: Local weights for the backbone (safetensors, Lightning ``.ckpt``
            or an upstream generator checkpoint), loaded strictly; ``None`` keeps the
            initialisation (seeded by ``seed_everything``). A ``CameraConditioned`` backbone
            takes a ``BackboneFitModule`` ``.ckpt`` or its ``lrag export``. ``asset:<file>``
            names a shipped file of ``lrag/assets``.
        embedder_checkpoint: Frame embedder for ``descriptor: ae`` memories (``asset:<file>``
            allowed); ``None`` leaves the memory's own ``embedder_path``.
        progress: Show a per-video progress bar (blocks done, frames/s) on stderr.
        persist_queue: Finished blocks that may wait for the background writer (block files,
            video, store rows) while the GPU samples on; the sampler waits only when the queue
            is full. ``0`` persists every block synchronously inside the loop (debugging,
            comparing outputs: both modes write the same bytes). A writer failure stops the run
            at the next block with one error naming the file or table.
        text_encoder_offload: Keep the text encoder on the CPU except while it encodes a video's
            prompts (then moved to the GPU and back, and the GPU cache emptied): umT5-XXL's
            ~11 GB are not resident while sampling (the <= 24 GB config).
    """

    def __init__(
        self,
        backbone: nn.Module,
        memory: RetrievalMemory,
        text_encoder: nn.Module,
        codec: nn.Module,
        schedule: FlowMatchSchedule,
        sampling: SamplerSettings | None = None,
        num_frames: int = 120,
        channels: int | None = None,
        height: int = 8,
        width: int = 8,
        out_dir: str = "runs",
        store_uri: str = "runs/memory.lancedb",
        run_name: str | None = None,
        fps: float = 16.0,
        write_video: bool = True,
        backbone_checkpoint: str | None = None,
        embedder_checkpoint: str | None = None,
        progress: bool = True,
        persist_queue: int = 2,
        text_encoder_offload: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "memory", "text_encoder", "codec",
                                          "schedule", "sampling"])
        self.sampling = sampling if sampling is not None else SamplerSettings()
        # Flat knobs in hparams, as training checkpoints record them (no dataclass pickled).
        self.hparams.update(dataclasses.asdict(self.sampling))
        self.sampling.check_length(num_frames, "GeneratorModule.num_frames")
        self.sampling.policy(memory.memory_size)  # a window too small for K fails here, not mid-run
        if not isinstance(persist_queue, int) or persist_queue < 0:
            raise ValueError(f"GeneratorModule: persist_queue={persist_queue!r}; use an int >= 0 "
                             "(blocks waiting for the writer; 0 = write synchronously).")
        if run_name is not None and not _RUN_NAME.match(run_name):
            raise ValueError(f"GeneratorModule: run_name={run_name!r}; use letters, digits, '_' "
                             "and '-' only (it becomes a directory and a shard key).")
        self.backbone, self.memory = backbone, memory
        self.text_encoder, self.codec, self.schedule = text_encoder, codec, schedule
        self.channels = channels if channels is not None else getattr(codec, "channels", None)
        if self.channels is None:
            raise ValueError("GeneratorModule: set `channels` (the codec has no `channels`).")
        self._hashes: dict[str, str] = {}
        #: Training knobs of a loaded ``BackboneFitModule`` checkpoint (None otherwise).
        self.backbone_info = None
        if backbone_checkpoint is not None:
            self._load_backbone(backbone_checkpoint)
        if embedder_checkpoint is not None:
            self._load_embedder(embedder_checkpoint)
        self._resume_id: str | None = None
        self._video_index = 0
        self._store: MemoryStore | None = None
        #: Per-run ``{"run_id", "frames", "seconds", "frames_per_s"}`` of this process (benchmarks).
        self.run_stats: list[dict[str, Any]] = []

    # -- set-up ----------------------------------------------------------------------------
    def _load_backbone(self, path: str) -> None:
        if not path.startswith("asset:") and not Path(path).is_file():
            raise FileNotFoundError(
                f"model.init_args.backbone_checkpoint: {path} does not exist. Put the weights of "
                f"the {type(self.backbone).__name__} backbone (.safetensors, Lightning .ckpt or "
                f"an upstream generator .pt) at {Path(path).resolve()}, or set "
                "backbone_checkpoint: null to sample from the seeded random initialisation."
            )
        self._hashes["backbone_checkpoint"], self.backbone_info = load_generator_weights(
            self.backbone, path, "model.init_args.backbone_checkpoint", dict(self.hparams))

    def _load_embedder(self, path: str) -> None:
        path = resolve_asset(path, "model.init_args.embedder_checkpoint")
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.init_args.embedder_checkpoint: {path} does not exist; "
                                    "export one with `lrag export <EmbedderModule .ckpt> OUT.safetensors`.")
        self.memory.set_embedder(load_embedder(path))
        self._hashes["embedder"] = checkpoint_hash(path)

    def checkpoint_hashes(self) -> dict[str, str]:
        """Hashes identifying the weights (file hash and a digest of the backbone tensors)."""
        if "backbone_weights" not in self._hashes:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.backbone.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._hashes["backbone_weights"] = digest.hexdigest()
        embedder = getattr(self.memory, "embedder_path", None)
        if embedder and Path(embedder).is_file() and "embedder" not in self._hashes:
            self._hashes["embedder"] = checkpoint_hash(embedder)
        return dict(self._hashes)

    def set_resume(self, run_id: str) -> None:
        """Continue the interrupted run ``run_id`` instead of starting new ones.

        The prompt, seed and finished blocks come from the store and the run directory; the
        batches of the datamodule are then ignored.
        """
        self._resume_id = run_id

    def on_predict_start(self) -> None:  # noqa: D102
        self._store = MemoryStore(self.hparams.store_uri)
        self._video_index = 0
        if self.hparams.text_encoder_offload:
            self.text_encoder.to("cpu")  # Lightning moved it to the GPU with the module

    def _encode(self, schedule: list[dict]) -> tuple[Tensor, Any]:
        """Contexts of a video's prompts; with ``text_encoder_offload`` the encoder visits the GPU
        only for this call."""
        offload = self.hparams.text_encoder_offload and self.device.type == "cuda"
        if offload:
            self.text_encoder.to(self.device)
        try:
            return context_schedule(schedule, self.text_encoder, self.prefix, self.device)
        finally:
            if offload:
                self.text_encoder.to("cpu")
                torch.cuda.empty_cache()  # hand the encoder's blocks back before sampling

    def _config_yaml(self) -> str:
        """The resolved config of this process (LightningCLI's), else the module's knobs."""
        from lightning.pytorch.cli import SaveConfigCallback

        trainer = self._trainer
        for callback in trainer.callbacks if trainer is not None else []:
            if isinstance(callback, SaveConfigCallback):
                return callback.parser.dump(callback.config, skip_none=False)
        knobs = {k: v for k, v in self.hparams.items() if k not in SAMPLER_KNOBS}
        knobs["sampling"] = dataclasses.asdict(self.sampling)
        for name in ("backbone", "memory", "text_encoder", "codec", "schedule"):
            obj = getattr(self, name)
            knobs[name] = {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}"}
        return yaml.safe_dump({"model": knobs}, sort_keys=False)

    def _new_run_id(self) -> str:
        index = self._video_index
        self._video_index += 1
        if self.trainer.world_size > 1:
            index = f"r{self.global_rank}-{index}"  # ranks see disjoint prompt subsets
        if self.hparams.run_name is not None:
            return f"{self.hparams.run_name}-{index}"
        return f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"

    def _outputs(self, run_id: str, prompt: str, seed: int) -> RunOutputs:
        meta = {"prompt": prompt, "fps": self.hparams.fps, "seed": seed, "run_id": run_id,
                "producer": "lrag predict"}
        return RunOutputs(Path(self.hparams.out_dir) / run_id, run_id, meta, self.hparams.fps,
                          self.hparams.write_video)

    # -- predict ---------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0) -> dict[str, list]:
        """Generate one video per prompt of ``batch`` (or continue the ``--resume`` run).

        Args:
            batch: ``{"prompts": list[str], "seeds": list[int]}`` and, from
                ``WorldPromptDataModule``, ``"worlds": list[WorldSpec]``; optional
                ``"schedules"``: per video a prompt schedule ``[{"frame", "prompt"}]`` or None.
            batch_idx: Index of the batch.

        Returns:
            ``{"run_ids": [...], "dirs": [...]}`` of the runs written.
        """
        if self._resume_id is not None:
            if batch_idx > 0:
                return {"run_ids": [], "dirs": []}  # a resume continues exactly one run
            makers = [functools.partial(self._resumed_run, self._resume_id)]
        else:
            if len(batch["prompts"]) != len(batch["seeds"]):
                raise ValueError(f"batch {batch_idx}: {len(batch['prompts'])} prompts but "
                                 f"{len(batch['seeds'])} seeds; give one seed per prompt.")
            worlds = batch.get("worlds") or [None] * len(batch["prompts"])
            schedules = batch.get("schedules") or [None] * len(batch["prompts"])
            # Registered one at a time, just before generating: a failure of one video leaves
            # no later video registered but never started (a "running 0/N" ghost).
            makers = [functools.partial(self._new_run, p, int(s), w, sched)
                      for p, s, w, sched in zip(batch["prompts"], batch["seeds"], worlds, schedules)]
        runs = []
        for make in makers:
            runs.append(make())
            self._generate(runs[-1])
        return {"run_ids": [r.run_id for r in runs],
                "dirs": [str(r.outputs.dir) for r in runs]}

    def _new_run(self, prompt: str, seed: int, world: WorldSpec | None = None,
                 schedule: list[dict] | None = None) -> VideoRun:
        hp = self.hparams
        schedule = effective_schedule(prompt, schedule, hp.frames_per_block, hp.num_frames)
        prompt = schedule[0]["prompt"] if schedule else prompt
        run_id = self._new_run_id()
        # Everything that can refuse the run is checked before it is registered ...
        self._check_world(world)
        ARSampler(self.backbone, self.schedule, self.memory, self.sampling)
        check_new_run_folder(self._store, Path(hp.out_dir) / run_id, run_id)
        config = self._config_yaml()
        truth = truncate_meta(world.meta, hp.num_frames) if world is not None else None
        hashes = self.checkpoint_hashes()
        if truth is not None:
            hashes["world_json"] = truth_digest(truth)  # resume refuses a changed world.json
        # ... and the id is claimed in the store before anything goes into its folder: a reused
        # run_name is refused here and leaves the existing run untouched.
        self._store.start_run(RunInfo(
            run_id=run_id, config_yaml=config, backbone=_class_path(self.backbone),
            checkpoint_hashes=hashes, seed=seed, frames_planned=hp.num_frames,
            prompts=list(dict.fromkeys(e["prompt"] for e in schedule)) or [prompt],
            prompt_schedule=schedule,
        ))
        outputs = self._outputs(run_id, prompt, seed)
        lease = claim_run_folder(self._store, outputs, config, truth)
        return VideoRun(run_id=run_id, prompt=prompt, seed=seed, outputs=outputs, world=world,
                        schedule=schedule, lease=lease)

    def _resumed_run(self, run_id: str) -> VideoRun:
        return open_resumed_run(self._store, run_id, self.hparams.out_dir, self._config_yaml(),
                                lambda: self.checkpoint_hashes()["backbone_weights"], self._outputs,
                                self.device)

    @property
    def prefix(self) -> int:
        """Blank frames in front of every video (``sink_mode: blank``), never persisted."""
        return self.sampling.prefix

    def _check_world(self, world: WorldSpec | None) -> None:
        check_world(world, getattr(self.backbone, "camera", "none"), self.hparams.num_frames)

    def _set_world(self, world: WorldSpec | None) -> None:
        """Give the backbone (and a ground-truth memory) the camera of every frame of the video."""
        self._check_world(world)
        if world is None:
            return
        n = self.hparams.num_frames
        condition_on_camera(self.backbone, self.memory, world.positions[:n][None], world.camera[:n][None],
                            self.prefix, self.device)

    def _sampler_start(self, run: VideoRun) -> Tensor | None:
        """Latents the sampler treats as finished: the blank prefix, then resumed blocks."""
        hp, p = self.hparams, self.prefix
        self._set_world(run.world)
        self.memory.exclude_before(p)
        if run.resume_latents is not None:
            run.outputs.write_video_frames(self.codec.decode(run.resume_latents)[0].cpu().numpy())
        if not p:
            return run.resume_latents
        blank = blank_block(1, p, self.channels, hp.height, hp.width, self.device)
        return blank if run.resume_latents is None else torch.cat([blank, run.resume_latents], 1)

    def _generate(self, run: VideoRun) -> Tensor:
        store, hp, p = self._store, self.hparams, self.prefix
        writer: BlockWriter | None = None
        try:
            preload_plotting()  # imported while the GPU samples, not after the last block
            sampler = ARSampler(self.backbone, self.schedule, self.memory, self.sampling)
            noise = SeededNoise(run.seed, 1, self.channels, hp.height, hp.width, hp.frames_per_block)
            context, switch = self._encode(run.schedule or [{"frame": 0, "prompt": run.prompt}])
            start = self._sampler_start(run)
            with progress_bar(hp.progress) as bar:
                run.progress = bar
                run.task = bar.add_task(run.run_id, total=hp.num_frames // hp.frames_per_block,
                                        completed=run.done_blocks, fps=0.0)
                persister = self._persister(run)
                writer = BlockWriter(persister, hp.persist_queue, name=f"lrag-writer-{run.run_id}")
                latents = sampler(noise, context, p + hp.num_frames,
                                  on_block=lambda result: self._on_block(run, result, writer),
                                  resume_latents=start, context_schedule=switch)[:, p:]
                writer.flush()  # the last blocks are durable (or their failure is raised) here
            wall = time.perf_counter() - persister.started
            retrievals = store.retrievals(run.run_id).to_pydict()
            # Every block row is written: merge the store's fragments while the clip and plot
            # are written (compaction commits like any write, retried on conflicts).
            compaction = threading.Thread(target=compact_after_run, args=(store,), name="lrag-compact")
            compaction.start()
            try:
                run.outputs.finish(latents[0], retrievals, hp.num_frames // hp.frames_per_block,
                                   hp.frames_per_block)
            finally:
                compaction.join()
            store.set_status(run.run_id, "complete")
        except BaseException:  # KeyboardInterrupt too: no run stays "running" without a writer
            try:
                if writer is not None:
                    writer.close()  # every block handed over is written before the run is failed
                run.outputs.abort()
            finally:
                mark_failed(store, run.run_id)
            raise
        finally:
            if writer is not None:
                writer.close()
            if run.lease is not None:
                run.lease.release()
        self.run_stats.append({"run_id": run.run_id, "frames": run.frames_done, "seconds": wall,
                               "frames_per_s": run.frames_done / max(wall, 1e-9),
                               "persisted_at": [t - persister.started for t in persister.done_at]})
        return latents

    def _persister(self, run: VideoRun) -> BlockPersister:
        """The writer's sink for ``run`` (descriptor tag and logger taken here, in the main thread)."""
        log_metrics = None
        if self.logger is not None:
            log_metrics = lambda metrics, step: self.logger.log_metrics(metrics, step=step)  # noqa: E731
        return BlockPersister(run, self._store, descriptor_tag(self.memory, self.checkpoint_hashes()),
                              log_metrics)

    # -- per block -------------------------------------------------------------------------
    def _on_block(self, run: VideoRun, result: BlockResult, writer: BlockWriter) -> None:
        """Decode the block on the device and hand it to the writer; no device sync here (the
        NaN/Inf check runs in the writer, before anything of the block is written)."""
        result = shift_result(result, self.prefix, self.hparams.frames_per_block)
        if result.block < run.done_blocks:
            return  # the blank prefix or a replayed block that is already on disk
        frames = self.codec.decode(result.latents, check_finite=False)
        writer.submit(hand_over(result, frames, self.memory.pool_size, self.memory.stored_bytes()))


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
