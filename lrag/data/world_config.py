"""Sizes and behaviour of a procedural world: shared by the map (:mod:`lrag.data.world`) and the
camera path (:mod:`lrag.data.trajectory`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TRAJECTORY_KINDS", "WorldConfig"]

TRAJECTORY_KINDS = ("mixed", "loop", "out_and_back")


@dataclass
class WorldConfig:
    """Sizes and behaviour of a procedural world and its clips.

    Args:
        frame_height: Latent frame rows (8 for the CPU demo; Wan 480p latents have 60).
        frame_width: Latent frame columns.
        channels: Latent channels (16 like the Wan2.1 VAE).
        map_scale: Map side = ``map_scale`` × frame side; room to leave a place for long.
        num_landmarks: Persistent landmarks, each with its own identity code.
        landmark_sigma: Landmark blob radius (Gaussian sigma) in cells.
        landmark_strength: Per-channel magnitude of identity codes, relative to the unit-std map.
        num_objects: Slowly moving objects (they make revisits differ only where they are).
        object_sigma: Object blob radius in cells.
        object_speed: Object speed in cells per frame; slow, so they are trackable.
        speed: Camera speed in cells per frame (integer, so positions stay on the grid).
        revisit_min: Shortest loop / out-and-back period in frames; above an attention window.
        revisit_max: Longest loop / out-and-back period in frames.
        iou_threshold: Viewport IoU at which two frames count as "the same place".
        num_styles: Number of map styles (spectral slopes); the style id is conditioning.
        trajectory: ``"mixed"`` (loops, out-and-backs, travel, returns), ``"loop"`` or
            ``"out_and_back"``.
    """

    frame_height: int = 8
    frame_width: int = 8
    channels: int = 16
    map_scale: int = 12
    num_landmarks: int = 24
    landmark_sigma: float = 1.0
    landmark_strength: float = 2.0
    num_objects: int = 4
    object_sigma: float = 1.0
    object_speed: float = 0.1
    speed: int = 1
    revisit_min: int = 16
    revisit_max: int = 48
    iou_threshold: float = 0.5
    num_styles: int = 4
    trajectory: str = "mixed"

    def __post_init__(self) -> None:
        for name in ("frame_height", "frame_width", "channels", "map_scale", "speed"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)} must be >= 1.")
        if self.map_scale < 3:
            raise ValueError(f"WorldConfig.map_scale={self.map_scale}: use >= 3 so the camera can leave a place.")
        if not 0 < self.revisit_min <= self.revisit_max:
            raise ValueError(
                f"WorldConfig.revisit_min={self.revisit_min}, revisit_max={self.revisit_max}: "
                "need 0 < revisit_min <= revisit_max."
            )
        if self.trajectory not in TRAJECTORY_KINDS:
            raise ValueError(f"WorldConfig.trajectory={self.trajectory!r}: choose one of {TRAJECTORY_KINDS}.")

    @property
    def map_height(self) -> int:
        """Map rows in cells."""
        return self.map_scale * self.frame_height

    @property
    def map_width(self) -> int:
        """Map columns in cells."""
        return self.map_scale * self.frame_width
