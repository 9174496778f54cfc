"""A procedural latent world with ground truth, for training and evaluating retrieval.

A world is a large ``[C, map_h, map_w]`` latent map: smooth multi-scale structure, a few
persistent *landmarks* (localised blobs whose channel vector is an identity code) and a few
slowly moving *objects*. A clip is a viewport of ``frame_h × frame_w`` cells moving over the map
along a trajectory that leaves places and comes back to them after more frames than an
attention window holds. Because the world is known, every clip carries its ground truth:
viewport position per frame, visible landmarks, moving objects and which earlier frames show
the same place. See ``docs/world.md``.

Positions are integer map cells ``(x, y)`` of the viewport's top-left corner (x = column).
Functions that read ground truth back from ``meta`` live in :mod:`lrag.data.ground_truth`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lrag.data.ground_truth import overlap_matrix
from lrag.data.trajectory import make_trajectory
from lrag.data.world_config import WorldConfig

__all__ = ["Landmark", "MovingObject", "World", "generate_world_clip", "generate_world_clips"]

#: Distinct stream tags so that the map, the trajectory and the objects of one seed are
#: independent random streams (changing the trajectory never changes the map).
_MAP_STREAM, _CLIP_STREAM = 0, 2


@dataclass
class Landmark:
    """A persistent landmark: a blob at integer map cell ``(x, y)`` with an identity code."""

    id: int
    x: int
    y: int
    sigma: float
    code: np.ndarray  # [C]


@dataclass
class MovingObject:
    """An object bouncing inside the map at constant speed; ``position(t)`` is its centre."""

    id: int
    x0: float
    y0: float
    vx: float
    vy: float
    sigma: float
    code: np.ndarray  # [C]

    def position(self, t: float, map_h: int, map_w: int) -> tuple[float, float]:
        """Centre ``(x, y)`` at frame ``t``, reflected at the map borders."""
        return _reflect(self.x0 + self.vx * t, map_w - 1), _reflect(self.y0 + self.vy * t, map_h - 1)


def _reflect(p: float, size: float) -> float:
    p = p % (2 * size)
    return 2 * size - p if p > size else p


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, *more]))


def _smooth_field(rng: np.random.Generator, cfg: WorldConfig, style: int) -> np.ndarray:
    """Multi-scale value noise ``[C, map_h, map_w]``, channels mixed, z-scored per channel."""
    mh, mw, c = cfg.map_height, cfg.map_width, cfg.channels
    base = max(cfg.frame_height, cfg.frame_width)
    # Styles differ in how much energy the coarse scales carry (spectral slope).
    slope = 0.25 * style
    field = np.zeros((c, mh, mw), dtype=np.float32)
    for scale in (2.0 * base, 1.0 * base, 0.5 * base, 0.25 * base):
        cell = max(scale, 1.0)
        grid = rng.standard_normal((1, c, math.ceil(mh / cell) + 2, math.ceil(mw / cell) + 2))
        up = F.interpolate(torch.from_numpy(grid.astype(np.float32)), scale_factor=cell, mode="bicubic",
                           align_corners=False)[0, :, :mh, :mw].numpy()
        field += (cell / base) ** slope * up
    # Wan latent channels are correlated; a random mixing reproduces that.
    mix = rng.standard_normal((c, c)).astype(np.float32) / math.sqrt(c) + np.eye(c, dtype=np.float32)
    field = np.einsum("dc,chw->dhw", mix, field)
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-6
    return field


def _identity_code(rng: np.random.Generator, channels: int, strength: float) -> np.ndarray:
    code = rng.standard_normal(channels).astype(np.float32)
    return code / np.linalg.norm(code) * strength * math.sqrt(channels)


def _blob_weight(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, sigma: float) -> np.ndarray:
    d2 = (xs - cx) ** 2 + (ys[:, None] - cy) ** 2
    # Cut at 3 sigma so a blob changes nothing (bit for bit) outside its footprint.
    return np.where(d2 <= (3 * sigma) ** 2, np.exp(-d2 / (2 * sigma**2)), 0.0).astype(np.float32)


def _place_landmarks(rng: np.random.Generator, cfg: WorldConfig) -> list[Landmark]:
    """Landmarks far enough apart that each frame-local footprint shows exactly one identity."""
    margin = math.ceil(3 * cfg.landmark_sigma)
    min_dist = max(6 * cfg.landmark_sigma, max(cfg.frame_height, cfg.frame_width) / 2)
    landmarks: list[Landmark] = []
    for _attempt in range(50 * max(cfg.num_landmarks, 1)):
        if len(landmarks) == cfg.num_landmarks:
            break
        x = int(rng.integers(margin, cfg.map_width - margin))
        y = int(rng.integers(margin, cfg.map_height - margin))
        if all(math.hypot(x - o.x, y - o.y) >= min_dist for o in landmarks):
            code = _identity_code(rng, cfg.channels, cfg.landmark_strength)
            landmarks.append(Landmark(len(landmarks), x, y, cfg.landmark_sigma, code))
    if len(landmarks) < cfg.num_landmarks:
        raise ValueError(
            f"WorldConfig.num_landmarks={cfg.num_landmarks} do not fit {min_dist:.1f} cells apart on a "
            f"{cfg.map_height}x{cfg.map_width} map; lower num_landmarks or raise map_scale."
        )
    return landmarks


class World:
    """A latent map with landmarks and moving objects; render viewports with :meth:`render`.

    Build one with :meth:`from_seed`; the same seed and config always give the same world.
    """

    def __init__(self, seed: int, config: WorldConfig, style_id: int, static_map: np.ndarray,
                 landmarks: list[Landmark], objects: list[MovingObject]) -> None:
        self.seed = seed
        self.config = config
        self.style_id = style_id
        self.static_map = static_map  # [C, map_h, map_w], landmarks baked in, no objects
        self.landmarks = landmarks
        self.objects = objects

    @classmethod
    def from_seed(cls, seed: int, config: WorldConfig | None = None) -> "World":
        """Build the world of ``seed`` (map, landmarks, objects) deterministically."""
        cfg = config or WorldConfig()
        rng = _rng(seed, _MAP_STREAM)
        style = int(rng.integers(cfg.num_styles))
        field = _smooth_field(rng, cfg, style)
        landmarks = _place_landmarks(rng, cfg)
        xs, ys = np.arange(cfg.map_width), np.arange(cfg.map_height)
        for lm in landmarks:
            w = _blob_weight(xs, ys, lm.x, lm.y, lm.sigma)
            field = (1 - w) * field + w * lm.code[:, None, None]
        objects = []
        for k in range(cfg.num_objects):
            # Objects start in the central half of the map, where trajectories begin.
            x0 = float(rng.uniform(0.25, 0.75) * cfg.map_width)
            y0 = float(rng.uniform(0.25, 0.75) * cfg.map_height)
            angle = float(rng.uniform(0, 2 * math.pi))
            objects.append(MovingObject(k, x0, y0, cfg.object_speed * math.cos(angle),
                                        cfg.object_speed * math.sin(angle), cfg.object_sigma,
                                        _identity_code(rng, cfg.channels, cfg.landmark_strength)))
        return cls(seed, cfg, style, field.astype(np.float32), landmarks, objects)

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std ``([C], [C])`` of the map: reference stats for quality drift."""
        return self.static_map.mean(axis=(1, 2)), self.static_map.std(axis=(1, 2))

    def _check_position(self, x: int, y: int) -> None:
        cfg = self.config
        if not (0 <= x <= cfg.map_width - cfg.frame_width and 0 <= y <= cfg.map_height - cfg.frame_height):
            raise ValueError(
                f"viewport (x={x}, y={y}) leaves the {cfg.map_height}x{cfg.map_width} map; valid x in "
                f"[0, {cfg.map_width - cfg.frame_width}], y in [0, {cfg.map_height - cfg.frame_height}]."
            )

    def object_positions(self, t: float) -> list[tuple[int, float, float]]:
        """``(id, x, y)`` of every object's centre at frame ``t`` in map cells."""
        cfg = self.config
        return [(o.id, *o.position(t, cfg.map_height, cfg.map_width)) for o in self.objects]

    def render(self, x: int, y: int, t: float, objects: bool = True) -> np.ndarray:
        """The viewport with top-left cell ``(x, y)`` at frame ``t``.

        Args:
            x: Column of the viewport's left edge (integer map cell).
            y: Row of the viewport's top edge.
            t: Frame index (only moves the objects).
            objects: Include moving objects; ``False`` gives the static map (ground truth for
                what a revisit must show).

        Returns:
            ``[C, frame_height, frame_width]`` float32.
        """
        x, y = int(x), int(y)
        self._check_position(x, y)
        cfg = self.config
        frame = self.static_map[:, y : y + cfg.frame_height, x : x + cfg.frame_width].copy()
        if objects:
            xs, ys = np.arange(x, x + cfg.frame_width), np.arange(y, y + cfg.frame_height)
            for obj in self.objects:
                w = _blob_weight(xs, ys, *obj.position(t, cfg.map_height, cfg.map_width), obj.sigma)
                frame = (1 - w) * frame + w * obj.code[:, None, None]
        return frame

    def visible_landmarks(self, x: int, y: int) -> list[int]:
        """Ids of landmarks whose centre cell lies inside the viewport at ``(x, y)``."""
        cfg = self.config
        return [lm.id for lm in self.landmarks
                if x <= lm.x < x + cfg.frame_width and y <= lm.y < y + cfg.frame_height]


def _clip_meta(world: World, positions: np.ndarray, traj_seed: int) -> dict[str, Any]:
    cfg = world.config
    iou = overlap_matrix(positions, cfg.frame_height, cfg.frame_width)
    camera = np.diff(positions, axis=0, prepend=positions[:1])
    objects = []
    for t, (x, y) in enumerate(positions):
        reach = 3 * cfg.object_sigma  # beyond 3 sigma an object changes nothing visible
        objects.append([[i, round(ox, 3), round(oy, 3)] for i, ox, oy in world.object_positions(t)
                        if x - reach <= ox < x + cfg.frame_width + reach
                        and y - reach <= oy < y + cfg.frame_height + reach])
    return {
        "source": "world", "prompt": f"world {world.seed} style {world.style_id}",
        "frame_offset": 0, "fps": 16, "layout": "TCHW",
        "world": {"world_id": int(world.seed), "style_id": world.style_id, "trajectory_seed": int(traj_seed),
                  "map_height": cfg.map_height, "map_width": cfg.map_width,
                  "frame_height": cfg.frame_height, "frame_width": cfg.frame_width,
                  "channels": cfg.channels, "config": asdict(cfg)},
        "overlap": {"function": "lrag.data.ground_truth.viewport_overlap", "kind": "viewport_iou",
                    "iou_threshold": cfg.iou_threshold},
        "positions": positions.tolist(),
        "camera": camera.tolist(),
        "visible_landmarks": [world.visible_landmarks(x, y) for x, y in positions],
        "objects": objects,
        "revisits": [np.nonzero(iou[t, :t] >= cfg.iou_threshold)[0].tolist() for t in range(len(positions))],
        "landmarks": [{"id": lm.id, "x": lm.x, "y": lm.y, "sigma": lm.sigma,
                       "code": [round(float(v), 6) for v in lm.code]} for lm in world.landmarks],
    }


def generate_world_clip(seed: int, frames: int, config: WorldConfig | None = None,
                        trajectory_seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one clip of the world ``seed`` along a trajectory.

    Args:
        seed: World seed (map, landmarks, objects); also the world id.
        frames: Latent frames to render.
        config: World and trajectory settings.
        trajectory_seed: Seed of the camera path; defaults to ``seed``.

    Returns:
        ``(latents [T, C, H, W] float32, meta)``; meta is JSON-serialisable ground truth.
    """
    world = World.from_seed(seed, config)
    traj_seed = seed if trajectory_seed is None else trajectory_seed
    positions = make_trajectory(traj_seed, frames, world.config)
    latents = np.stack([world.render(x, y, t) for t, (x, y) in enumerate(positions)])
    return latents.astype(np.float32), _clip_meta(world, positions, traj_seed)


def generate_world_clips(seed: int, num_clips: int, frames: int, height: int, width: int,
                         channels: int = 16) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Clips of distinct worlds for ``lrag data synth --kind world``: ``(key, latents, meta)``.

    Clip ``i`` uses world seed ``SeedSequence([seed, i])``, so clip sets of one seed are
    prefixes of each other. Blob sizes and camera speed scale with the frame width.
    """
    unit = max(width, height) / 8
    cfg = WorldConfig(frame_height=height, frame_width=width, channels=channels,
                      landmark_sigma=max(1.0, unit), object_sigma=max(1.0, unit),
                      object_speed=0.1 * unit, speed=max(1, round(unit)))
    for i in range(num_clips):
        world_seed = int(_rng(seed, _CLIP_STREAM, i).integers(2**31 - 1))
        latents, meta = generate_world_clip(world_seed, frames, cfg)
        yield f"world-{seed}-{i:06d}", latents, meta
