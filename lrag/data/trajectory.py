"""Camera paths over a procedural world that leave places and come back to them.

A trajectory is ``[T, 2]`` integer viewport positions ``(x, y)`` (top-left cell, x = column)
built from segments: loops and out-and-backs that return to their start after
``revisit_min``–``revisit_max`` frames, travel to new places, and returns to old waypoints.
"""

from __future__ import annotations

import math
import numpy as np

from lrag.data.world_config import WorldConfig

#: Stream tag of the trajectory's random numbers (the map uses others), so one seed gives
#: independent map and camera path.
_TRAJ_STREAM = 1


def _line(start: np.ndarray, end: np.ndarray, speed: int) -> list[np.ndarray]:
    """Grid points from ``start`` (excluded) to ``end`` at ``speed`` cells per frame."""
    steps = math.ceil(np.abs(end - start).max() / speed)
    return [np.rint(start + (end - start) * k / steps).astype(np.int64) for k in range(1, steps + 1)]


def _segment(rng: np.random.Generator, cfg: WorldConfig, kind: str, cur: np.ndarray,
             history: list[np.ndarray]) -> list[np.ndarray]:
    """Waypoints of one trajectory segment starting at ``cur``."""
    hi = np.array([cfg.map_width - cfg.frame_width, cfg.map_height - cfg.frame_height])
    fw, fh, sp = cfg.frame_width, cfg.frame_height, cfg.speed

    def period(shortest_cells: int) -> int:  # frames for the round trip, within revisit limits
        lo = max(cfg.revisit_min, math.ceil(shortest_cells / sp))
        return int(rng.integers(lo, max(lo, cfg.revisit_max) + 1))

    def towards_room(length: np.ndarray) -> np.ndarray:  # go where the map has room
        room_plus = hi - cur >= length
        room_minus = cur >= length
        coin = rng.random(2) < 0.5
        return np.where(room_plus & (coin | ~room_minus), 1, -1)

    if kind == "loop":
        half = period(2 * (fw + fh)) * sp // 2
        a = int(rng.integers(fw, max(fw, half - fh) + 1))
        side = np.array([a, max(half - a, fh)])
        s = towards_room(side) * side
        points = [cur + [s[0], 0], cur + s, cur + [0, s[1]], cur.copy()]
    elif kind == "out_and_back":
        length = period(2 * max(fw, fh)) * sp // 2
        d = np.array([[1, 0], [0, 1], [1, 1], [1, -1]][int(rng.integers(4))])
        points = [cur + towards_room(np.abs(d) * length) * d * length, cur.copy()]
    elif kind == "return" and history:
        points = [history[int(rng.integers(len(history)))].copy()]
    else:  # travel somewhere new
        angle = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(1, 3) * max(fw, fh)
        points = [cur + np.rint(dist * np.array([math.cos(angle), math.sin(angle)])).astype(np.int64)]
    return [np.clip(p, 0, hi) for p in points]


def make_trajectory(seed: int, frames: int, config: WorldConfig | None = None) -> np.ndarray:
    """Viewport positions ``[frames, 2]`` int64 ``(x, y)`` that leave places and come back.

    Loops and out-and-backs return to their start after ``revisit_min``–``revisit_max``
    frames; ``"mixed"`` adds travel to new places and returns to old waypoints.
    """
    cfg = config or WorldConfig()
    if frames < 1:
        raise ValueError(f"make_trajectory: frames={frames} must be >= 1.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TRAJ_STREAM]))
    cur = np.array([cfg.map_width - cfg.frame_width, cfg.map_height - cfg.frame_height]) // 2
    points, waypoints = [cur], []
    kinds, probs = ("loop", "out_and_back", "travel", "return"), (0.35, 0.3, 0.2, 0.15)
    while len(points) < frames:
        before = len(points)
        kind = cfg.trajectory if cfg.trajectory != "mixed" else kinds[rng.choice(4, p=probs)]
        # Returns target only waypoints old enough to be outside any attention window.
        old = [p for p, t in waypoints if len(points) - t >= cfg.revisit_min]
        for target in _segment(rng, cfg, kind, cur, old):
            points.extend(_line(cur, target, cfg.speed) if (target != cur).any() else [])
            cur = target
            waypoints.append((cur, len(points) - 1))
        if len(points) == before:  # every waypoint clipped onto cur: pause one frame
            points.append(cur.copy())
    return np.stack(points[:frames])
