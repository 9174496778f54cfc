"""Procedural "moving patterns" latent clips: smooth motion with scene cuts and scene returns.

Each clip draws a small pool of scenes. A scene is a sum of travelling plane waves plus a
per-channel offset, so frames within a scene change smoothly and different scenes differ in
their average-pooled descriptor. The clip cuts between scenes of the pool and comes back to
earlier ones, which gives retrieval something to find. Scenes keep moving while off screen
(waves are functions of the clip's frame index), so a return is similar but not identical.

Everything is a pure function of ``(seed, clip index)``: the same arguments give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from einops import rearrange

KINDS = ("patterns", "world")
#: Latent frames per second recorded in the metadata (the world generator uses the same).
SYNTH_FPS = 16


@dataclass(frozen=True)
class PatternConfig:
    """Knobs of the moving-pattern generator.

    Args:
        num_scenes: Scenes in a clip's pool (returns happen when the pool is smaller than the
            number of cuts).
        scene_length: Mean frames between cuts.
        waves: Plane waves per scene; more waves give richer texture.
        max_speed: Largest phase change per frame (radians); small keeps motion smooth.
        offset_std: Std of a scene's per-channel offset, what tells scenes apart when pooled.
    """

    num_scenes: int = 3
    scene_length: int = 8
    waves: int = 4
    max_speed: float = 0.4
    offset_std: float = 0.5


def scene_schedule(num_frames: int, rng: np.random.Generator, cfg: PatternConfig) -> np.ndarray:
    """Scene id per frame: segments of about ``scene_length`` frames, never the same id twice
    in a row (a cut must be visible).

    Returns:
        int64 ``[num_frames]``.
    """
    ids = np.empty(num_frames, dtype=np.int64)
    t, scene = 0, int(rng.integers(cfg.num_scenes))
    low, high = max(2, cfg.scene_length // 2), max(3, (3 * cfg.scene_length) // 2)
    while t < num_frames:
        length = int(rng.integers(low, high + 1))
        ids[t:t + length] = scene
        t += length
        if cfg.num_scenes > 1:
            scene = (scene + int(rng.integers(1, cfg.num_scenes))) % cfg.num_scenes
    return ids


def _render_scene(rng: np.random.Generator, frames: np.ndarray, channels: int, height: int,
                  width: int, cfg: PatternConfig) -> np.ndarray:
    """One scene rendered at the given global frame indices: ``[len(frames), C, H, W]``."""
    angle = rng.uniform(0, 2 * math.pi, cfg.waves)
    freq = rng.uniform(0.3, 1.2, cfg.waves)  # radians per cell: smooth at 8x8 and larger
    speed = rng.uniform(-cfg.max_speed, cfg.max_speed, cfg.waves)
    phase = rng.uniform(0, 2 * math.pi, cfg.waves)
    # Unit variance per channel: sin has variance 1/2 and the weights sum in squares to ~1.
    mix = rng.standard_normal((cfg.waves, channels)) * math.sqrt(2.0 / cfg.waves)
    offset = rng.standard_normal(channels) * cfg.offset_std
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    proj = np.cos(angle)[:, None, None] * xs + np.sin(angle)[:, None, None] * ys  # (K, H, W)
    arg = (freq[None, :, None, None] * proj[None]
           + speed[None, :, None, None] * frames[:, None, None, None] + phase[None, :, None, None])
    waves = np.sin(arg)  # (T, K, H, W)
    out = np.einsum("tkhw,kc->tchw", waves, mix)
    return out + offset[None, :, None, None]


def moving_patterns(num_frames: int, channels: int, height: int, width: int,
                    rng: np.random.Generator, config: PatternConfig | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One clip of moving patterns with scene cuts and returns.

    Args:
        num_frames: Latent frames ``T``.
        channels: Latent channels ``C``.
        height: Latent rows ``H``.
        width: Latent columns ``W``.
        rng: Source of all randomness (seed it for reproducibility).
        config: Generator knobs (defaults: :class:`PatternConfig`).

    Returns:
        ``(latents float32 [T, C, H, W], scene_ids int64 [T])``.
    """
    cfg = config or PatternConfig()
    if min(num_frames, channels, height, width) < 1:
        raise ValueError(f"moving_patterns: sizes must be >= 1, got T={num_frames}, "
                         f"C={channels}, H={height}, W={width}.")
    ids = scene_schedule(num_frames, rng, cfg)
    t = np.arange(num_frames, dtype=np.float64)
    scenes = np.stack([_render_scene(rng, t, channels, height, width, cfg)
                       for _ in range(cfg.num_scenes)])  # (S, T, C, H, W)
    latents = scenes[ids, np.arange(num_frames)]
    return latents.astype(np.float32), ids


def synth_clips(kind: str, num_clips: int, frames: int, channels: int, height: int, width: int,
                seed: int) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Deterministic ``(key, latents [T,C,H,W], meta)`` clips for ``lrag data synth``.

    Args:
        kind: ``"patterns"`` (this module) or ``"world"`` (:mod:`lrag.data.world`).
        num_clips: Number of clips.
        frames: Latent frames per clip.
        channels: Latent channels.
        height: Latent rows.
        width: Latent columns.
        seed: Clip ``i`` depends only on ``(seed, i)``, so smaller sets are prefixes of larger.
    """
    if kind == "world":
        from lrag.data.world import generate_world_clips

        yield from generate_world_clips(seed, num_clips, frames, height, width, channels)
        return
    if kind != "patterns":
        raise ValueError(f"synth kind {kind!r}: choose one of {', '.join(KINDS)}.")
    for i in range(num_clips):
        rng = np.random.default_rng([seed, i])
        latents, ids = moving_patterns(frames, channels, height, width, rng)
        meta = {"source": "synth:patterns", "prompt": f"moving patterns {seed}-{i}",
                "frame_offset": 0, "fps": SYNTH_FPS, "seed": seed, "clip_index": i,
                "scene_ids": ids.tolist()}
        yield f"patterns-{seed}-{i:06d}", latents, meta


def frame_similarity(latents: np.ndarray) -> np.ndarray:
    """Cosine similarity of average-pooled frames, ``[T, T]`` (a quick retrieval sanity check)."""
    pooled = rearrange(latents, "t c h w -> t c (h w)").mean(-1)
    pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-8)
    return pooled @ pooled.T
