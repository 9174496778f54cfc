"""A/B evaluation on procedural worlds: native vs retrieval, same seeds, worlds and budget.

For every evaluation world the runner generates the video once per *variant* with the same
backbone, noise seed, conditioning (prompt + the world's camera path) and attention window:

* ``native``: ``memory_size 0`` (sliding window only);
* ``rag-<descriptor>-<budget>``: cosine retrieval with a descriptor (``avg_pool``,
  ``ae:<path>`` for an embedder checkpoint, ``gen_keys[:<layers>][:queries]`` for the backbone's
  own pooled keys, e.g. ``gen_keys:0,1``; any of the first two may end in ``+rerank<M>``, a
  shortlist of M re-ranked by the generator keys of ``key_layers``, or ``+fuse<P>``, one stage
  scored P % by those keys (``RetrievalMemory.key_fusion``), and any of them in
  ``+stride<N>``, a pool of every N-th evicted frame) or ``oracle``
  (pose/field-of-view retrieval from the camera path,
  :class:`~lrag.memory.oracle.GroundTruthMemory`).

With ``workers > 1`` the worlds are spread over that many processes (each world's videos are
seeded by the world alone, so the results do not depend on the number of workers).

The generated latents are scored against the world's ground truth with the metrics of
:mod:`lrag.eval.metrics`; :func:`lrag.eval.report.write_report` writes the A/B report.
Generation goes through the same pieces as ``lrag predict``: :class:`SamplerSettings`, the
blank sink block and camera of :mod:`lrag.sampling.prefix`, and :class:`ARSampler`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lrag.data.ground_truth import landmark_sightings, relevant_frames, revisit_pairs
from lrag.data.world_config import WorldConfig
from lrag.data.world import World
from lrag.data.world_datamodule import render_world
from lrag.eval.functional import revisit_errors, revisit_errors_by_gap
from lrag.eval.metrics import LandmarkIdentityDrift, QualityDrift, RetrievalPrecisionRecall, RevisitConsistency
from lrag.eval.report import BASELINE, ReportPaths, RunResult, write_report
from lrag.eval.settings import EvalSettings, descriptor_spec
from lrag.assets import ASSET_PREFIX, resolve_asset
from lrag.checkpoints.backbone_fit import INFERENCE_KNOBS, build_conditioned, load_backbone_fit, read_backbone_fit
from lrag.memory.bank import RetrievalMemory
from lrag.memory.oracle import GroundTruthMemory
from lrag.nets.camera import CameraConditioned
from lrag.nets.conditioning import TinyTextEncoder
from lrag.nets.wan import build_tiny
from lrag.sampling.prefix import blank_block, condition_on_camera
from lrag.sampling.sampler import ARSampler, SeededNoise
from lrag.sampling.schedule import FlowMatchSchedule

log = logging.getLogger(__name__)

__all__ = ["Variant", "candidate_frames", "eval_worlds", "generate_video", "load_conditioned_backbone", "run_eval",
           "variants"]


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: ``descriptor`` None = native."""

    name: str
    descriptor: str | None
    budget: str


def variants(s: EvalSettings) -> list[Variant]:
    """``native`` plus one RAG variant per (descriptor, budget)."""
    out = [Variant(BASELINE, None, s.budgets[0])]
    for budget in s.budgets:
        for desc in s.descriptors:
            base, plus, tail = desc.partition("+")
            label = Path(base[3:].removeprefix(ASSET_PREFIX)).stem if base.startswith("ae:") else base
            label = label.replace(":", "-").replace(",", "_") + (f"+{tail}" if plus else "")
            suffix = f"-{budget}" if len(s.budgets) > 1 else ""
            out.append(Variant(f"rag-{label}{suffix}", desc, budget))
    return out


def load_conditioned_backbone(s: EvalSettings) -> CameraConditioned:
    """The camera-conditioned backbone, from a backbone-fit file if ``backbone_checkpoint`` is set.

    The file (``lrag export`` safetensors, a ``BackboneFitModule`` ``.ckpt`` or an ``asset:``
    name) is read by :func:`lrag.checkpoints.backbone_fit.load_backbone_fit`, so it brings its own
    architecture and is checked for camera mode, keys and shapes. Without a checkpoint the
    weights are the seeded random initialisation of ``backbone_preset`` (tests, smoke runs).
    """
    torch.manual_seed(0)
    if s.backbone_checkpoint is None:
        log.warning("no backbone_checkpoint: evaluating a randomly initialised backbone")
        return CameraConditioned(build_tiny(s.backbone_preset), s.camera).eval()
    path = Path(resolve_asset(s.backbone_checkpoint, "backbone_checkpoint"))
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_checkpoint: {path} does not exist; train one with "
            "`lrag fit --config configs/backbone/demo.yaml` and point to its .ckpt or exported .safetensors."
        )
    _, info = read_backbone_fit(path, fit_config=s.backbone_fit_config)
    if info.camera != s.camera:
        raise ValueError(f"{path} was trained with camera={info.camera!r} but eval has camera={s.camera!r}; "
                         f"pass --camera {info.camera}.")
    net = build_conditioned(info)
    load_backbone_fit(net, path, fit_config=s.backbone_fit_config)
    _check_heldout(s, info.data, path)
    _warn_knobs(s, info.knobs, path)
    return net.eval()


def _warn_knobs(s: EvalSettings, knobs: dict[str, Any], path: Path) -> None:
    # Evaluating with other sampling knobs than training is allowed (ablations), but never silent.
    for name in INFERENCE_KNOBS:
        if name in knobs and hasattr(s, name) and name != "budget" and knobs[name] != getattr(s, name):
            log.warning("%s: %s=%r in eval but %r in training", path, name, getattr(s, name), knobs[name])


def _check_heldout(s: EvalSettings, data_hp: dict[str, Any], path: Path) -> None:
    train = set(s.train_seeds)
    if "num_worlds" in data_hp:
        start = int(data_hp.get("seed_offset", 0))
        train |= set(range(start, start + int(data_hp["num_worlds"])))
    overlap = sorted(train & set(s.seeds))
    if overlap:
        raise ValueError(
            f"seeds {overlap[:5]} were training worlds of {path}; evaluate on held-out worlds "
            "(e.g. seeds >= 1000)."
        )


def _memory(s: EvalSettings, v: Variant) -> RetrievalMemory:
    if v.descriptor is None:
        return RetrievalMemory(0, s.recent_exclude, kv_tier="device")
    if v.descriptor == "oracle":
        return GroundTruthMemory(s.memory_size, s.recent_exclude, s.frames_per_block, (s.height, s.width),
                                 revisit_fraction=1.0, kv_tier="device")
    return RetrievalMemory(s.memory_size, s.recent_exclude, kv_tier="device", diversity=s.diversity,
                           **descriptor_spec(v.descriptor, s))


def _prefix(s: EvalSettings) -> int:
    return s.sampler_settings(s.budgets[0]).prefix


def generate_video(s: EvalSettings, net: CameraConditioned, world: dict[str, Any], v: Variant,
                   seed: int) -> tuple[Tensor, list[dict], float]:
    """Generate one video of ``world`` as variant ``v``, noise seeded by ``seed``.

    Returns:
        ``(latents [1,F,C,H,W] without the blank prefix, retrievals per block, frames/s)``.
    """
    settings, dev = s.sampler_settings(v.budget), torch.device(s.device)
    p = settings.prefix
    memory = _memory(s, v)
    condition_on_camera(net, memory, world["positions"][None], world["camera"][None], p, dev)
    memory.exclude_before(p)
    schedule = FlowMatchSchedule(s.shift, denoising_steps=s.denoising_steps)
    sampler = ARSampler(net, schedule, memory, settings)
    text = TinyTextEncoder(s.text_len, net.backbone.config.text_dim)
    context = text([world["prompt"]]).to(dev)
    noise = SeededNoise(seed, 1, s.channels, s.height, s.width, s.frames_per_block, device=dev)
    resume = _prefix_latents(s).to(dev) if p else None
    retrievals: list[dict] = []

    def on_block(res) -> None:
        if res.retrieval is not None:
            retrievals.append({"block": res.block - p // s.frames_per_block,
                               "query_frame": res.start_frame - p,
                               "frames": [int(f) - p for f in res.retrieval.frames[0]]})

    tic = time.perf_counter()
    out = sampler(noise, context, p + s.num_frames, on_block=on_block, resume_latents=resume)
    fps = s.num_frames / (time.perf_counter() - tic)
    return out[:, p:].cpu(), retrievals, fps


def _prefix_latents(s: EvalSettings) -> Tensor:
    """The blank block before the video; with ``sink_swap`` its sink frames come from another world.

    The sink-swap check puts an unrelated frame (the first frames of world ``sink_swap``) where
    the model expects an empty sink: retrieved frames share the sink's temporal position, so a
    gain that depends on an empty sink disappears here.
    """
    prefix = blank_block(1, _prefix(s), s.channels, s.height, s.width)
    if s.sink_swap is not None:
        wcfg = WorldConfig(frame_height=s.height, frame_width=s.width, channels=s.channels,
                           revisit_min=s.revisit_min, revisit_max=s.revisit_max)
        prefix[0, : s.sink] = render_world(s.sink_swap, s.sink, wcfg)["latents"][: s.sink]
    return prefix


def _check_sink_swap(s: EvalSettings) -> None:
    if s.sink_swap is None:
        return
    if s.sink_mode != "blank":
        raise ValueError(f"sink_swap={s.sink_swap} needs sink_mode: blank (got {s.sink_mode!r}); with "
                         "'first' the sink is the world's own first frame.")
    if s.sink_swap in s.seeds:
        raise ValueError(f"sink_swap={s.sink_swap} is also an evaluated world (seeds {s.seeds}); "
                         "pick an unrelated world seed, e.g. 5000.")


def _series_by_block(video: Tensor, pairs: Tensor, block: int) -> list[float]:
    """Mean revisit MSE of the pairs whose later frame falls in each block (NaN if none)."""
    blocks = video.shape[0] // block
    if pairs.numel() == 0:
        return [math.nan] * blocks
    mse, _ = revisit_errors(video, pairs)
    out = []
    for b in range(blocks):
        sel = (pairs[:, 1] // block) == b
        out.append(float(mse[sel].mean()) if sel.any() else math.nan)
    return out


def _score(s: EvalSettings, world: dict[str, Any], wcfg: WorldConfig, video: Tensor,
           retrievals: list[dict]) -> tuple[dict[str, float], dict[str, list[float]], dict[str, list]]:
    meta = world["meta"]
    pairs = torch.tensor([list(r[:4]) for r in revisit_pairs(meta, min_gap=s.window)], dtype=torch.long)
    rc = RevisitConsistency()
    rc.update(video, pairs.reshape(-1, 4))
    lm = LandmarkIdentityDrift(radius=wcfg.landmark_sigma, bin_frames=12, max_frames=s.num_frames)
    lm.update(video, landmark_sightings(meta))
    mean, std = World.from_seed(meta["world"]["world_id"], wcfg).channel_stats()
    qd = QualityDrift(s.channels, window=min(12, s.num_frames), max_frames=s.num_frames,
                      reference_mean=mean.tolist(), reference_std=std.tolist())
    qd.update(video)
    scalars = {k: float(v) for k, v in {**rc.compute(), **qd.compute()}.items() if v.numel() == 1}
    lm_out = lm.compute()
    scalars["landmark_drift"] = float(lm_out["landmark_drift"])
    scalars.update(_retrieval_scores(s, meta, retrievals))
    series = {"revisit_mse_by_block": _series_by_block(video[0], pairs.reshape(-1, 4), s.frames_per_block),
              "quality_error": qd.compute()["quality_error"].reshape(-1).tolist(),
              "landmark_drift_by_time": lm_out["landmark_drift_by_time"].reshape(-1).tolist()}
    gaps, mse, count = revisit_errors_by_gap(video[0], pairs.reshape(-1, 4))
    by_gap = {"gap": gaps.tolist(), "mse": mse.tolist(), "pairs": count.tolist()}
    return scalars, series, by_gap


def candidate_frames(s: EvalSettings, query_frame: int) -> list[int]:
    """Video frames the memory may return for the block starting at ``query_frame``.

    Frames that left the window (after the sink), minus the ``recent_exclude`` newest of them;
    the blank prefix block is never a candidate (``RetrievalMemory.exclude_before``).
    """
    p = _prefix(s)
    evicted = max(0, query_frame + p - s.window)
    return [f - p for f in range(s.sink, s.sink + max(0, evicted - s.recent_exclude)) if f >= p]


def _retrieval_scores(s: EvalSettings, meta: dict, retrievals: list[dict]) -> dict[str, float]:
    if not retrievals:
        return {"retrieval_precision": math.nan, "retrieval_recall": math.nan}
    metric = RetrievalPrecisionRecall(k=s.memory_size)
    got, relevant = [], []
    for r in retrievals:
        candidates = candidate_frames(s, r["query_frame"])
        block = range(r["query_frame"], r["query_frame"] + s.frames_per_block)
        relevant.append(relevant_frames(meta, block, candidates))
        got.append(r["frames"] + [-1] * (s.memory_size - len(r["frames"])))
    metric.update(got, relevant)
    return {k: float(v) for k, v in metric.compute().items()}


def eval_worlds(s: EvalSettings, seeds: list[int], threads: int | None = None,
                only: list[str] | None = None) -> list[RunResult]:
    """Generate and score every variant (or those named in ``only``) of ``seeds`` in this process.

    One worker's share of :func:`run_eval`; ``threads`` sets the torch threads of a spawned worker.
    """
    if threads is not None:  # a spawned worker: its own thread share and log lines
        torch.set_num_threads(threads)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    net = load_conditioned_backbone(s).to(s.device)
    wcfg = WorldConfig(frame_height=s.height, frame_width=s.width, channels=s.channels,
                       revisit_min=s.revisit_min, revisit_max=s.revisit_max)
    results: list[RunResult] = []
    # One unscored block first, so frames/s of the first variant carries no warm-up cost.
    warm = dataclasses.replace(s, num_frames=s.frames_per_block)
    generate_video(warm, net, render_world(seeds[0], warm.num_frames, wcfg), variants(s)[0], 0)
    for seed in seeds:
        world = render_world(seed, s.num_frames, wcfg)
        for v in variants(s):
            if only is not None and v.name not in only:
                continue
            video, retrievals, fps = generate_video(s, net, world, v, seed)
            scalars, series, by_gap = _score(s, world, wcfg, video, retrievals)
            scalars["frames_per_s"] = fps
            results.append(RunResult(f"world-{seed}", v.name, scalars, series, retrievals, by_gap))
            log.info("world %d %s: revisit %.4g, %.1f frames/s", seed, v.name,
                     scalars["revisit_inconsistency"], fps)
    return results


def run_eval(s: EvalSettings, tb_dir: str | Path | None = None) -> tuple[list[RunResult], ReportPaths]:
    """Generate and score every (world, variant); write the report under ``s.out_dir``."""
    _check_sink_swap(s)
    chunks = [s.seeds[i:: s.workers] for i in range(min(s.workers, len(s.seeds)))]
    if len(chunks) > 1:
        load_conditioned_backbone(s)  # a bad checkpoint fails here, once, not in every worker
        with multiprocessing.get_context("spawn").Pool(len(chunks)) as pool:
            parts = pool.starmap(eval_worlds, [(s, c, max(1, torch.get_num_threads() // len(chunks)))
                                                for c in chunks])
    else:
        parts = [eval_worlds(s, s.seeds)]
    by_world: dict[str, list[RunResult]] = {}
    for part in parts:
        for r in part:
            by_world.setdefault(r.world, []).append(r)
    results = [r for seed in s.seeds for r in by_world[f"world-{seed}"]]  # seed order, as one process
    out = Path(s.out_dir)
    meta = {"settings": s.__dict__, "device": str(s.device)}
    paths = write_report(results, out, tb_dir if tb_dir is not None else out / "tb", meta)
    return results, paths
