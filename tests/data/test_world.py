"""The procedural world: its ground truth must be what the rendered latents show."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrag.data.ground_truth import conditioning_arrays, landmark_sightings, overlap_matrix, relevant_frames, revisit_pairs, viewport_overlap
from lrag.data.trajectory import make_trajectory
from lrag.data.world import World, generate_world_clip, generate_world_clips
from lrag.data.world_config import WorldConfig

FRAMES = 120
WINDOW = 12  # an attention window in latent frames; revisits must come after longer gaps


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, dict, World]:
    latents, meta = generate_world_clip(7, FRAMES)
    return latents, meta, World.from_seed(7)


def _object_mask(world: World, x: int, y: int, t: int) -> np.ndarray:
    """Cells of the viewport that a moving object changes visibly (beyond float noise)."""
    return np.abs(world.render(x, y, t) - world.render(x, y, t, objects=False)).max(axis=0) > 1e-6


def test_viewport_overlap_known_values() -> None:
    assert viewport_overlap((3, 4), (3, 4), 8, 8) == 1.0
    # Shift by half a width: intersection 32, union 96.
    assert viewport_overlap((0, 0), (4, 0), 8, 8) == pytest.approx(1 / 3)
    assert viewport_overlap((0, 0), (2, 2), 4, 4) == pytest.approx(4 / 28)
    assert viewport_overlap((0, 0), (8, 0), 8, 8) == 0.0
    pos = np.array([[0, 0], [4, 0], [2, 2]])
    mat = overlap_matrix(pos, 4, 4)
    assert mat[0, 2] == pytest.approx(viewport_overlap(pos[0], pos[2], 4, 4))
    assert np.allclose(mat, mat.T) and np.allclose(np.diag(mat), 1.0)


def test_clip_shapes_and_meta_roundtrip_json(clip) -> None:
    latents, meta, _ = clip
    assert latents.shape == (FRAMES, 16, 8, 8) and latents.dtype == np.float32
    assert json.loads(json.dumps(meta)) == meta
    assert meta["layout"] == "TCHW" and len(meta["positions"]) == FRAMES
    assert all(len(meta[k]) == FRAMES for k in ("camera", "visible_landmarks", "objects", "revisits"))


def test_latent_statistics_are_wan_like() -> None:
    world = World.from_seed(3)
    mean, std = world.channel_stats()
    assert np.abs(mean).max() < 0.2 and np.all((std > 0.7) & (std < 1.4))
    latents, _ = generate_world_clip(3, 60)
    assert abs(float(latents.mean())) < 0.6 and 0.5 < float(latents.std()) < 1.5


def test_same_seed_same_clip_different_seed_different_world() -> None:
    a, meta_a = generate_world_clip(11, 30)
    b, meta_b = generate_world_clip(11, 30)
    c, _ = generate_world_clip(12, 30)
    assert np.array_equal(a, b) and meta_a == meta_b
    assert np.abs(World.from_seed(11).static_map - World.from_seed(12).static_map).mean() > 0.5
    assert not np.allclose(a, c)


def test_revisit_pairs_show_the_same_place(clip) -> None:
    latents, meta, world = clip
    pairs = revisit_pairs(meta, min_gap=1)
    assert len(pairs) > 50
    h, w = 8, 8
    for p in pairs:
        xi, yi = meta["positions"][p.earlier]
        xj, yj = meta["positions"][p.later]
        assert (xj - xi, yj - yi) == (p.dx, p.dy) and p.iou >= 0.5
        assert p.earlier in meta["revisits"][p.later]
        # The shared map region, cut from each frame in its own coordinates.
        rows_i, cols_i = slice(max(0, p.dy), h + min(0, p.dy)), slice(max(0, p.dx), w + min(0, p.dx))
        rows_j, cols_j = slice(max(0, -p.dy), h + min(0, -p.dy)), slice(max(0, -p.dx), w + min(0, -p.dx))
        region_i, region_j = latents[p.earlier][:, rows_i, cols_i], latents[p.later][:, rows_j, cols_j]
        # Identical wherever no moving object touches either frame.
        still = ~(_object_mask(world, xi, yi, p.earlier)[rows_i, cols_i]
                  | _object_mask(world, xj, yj, p.later)[rows_j, cols_j])
        assert still.any()
        np.testing.assert_array_equal(region_i[:, still], region_j[:, still])


def test_frames_that_do_not_overlap_differ(clip) -> None:
    latents, meta, _ = clip
    iou = overlap_matrix(np.asarray(meta["positions"]), 8, 8)
    i, j = np.nonzero(iou == 0)
    assert len(i) > 1000
    mse = ((latents[i] - latents[j]) ** 2).mean(axis=(1, 2, 3))
    assert mse.mean() > 1.0 and np.percentile(mse, 5) > 0.3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_revisits_come_back_after_longer_than_a_window(seed: int) -> None:
    _, meta = generate_world_clip(seed, FRAMES)
    pos = np.asarray(meta["positions"])
    iou = overlap_matrix(pos, 8, 8)
    far = revisit_pairs(meta, min_gap=WINDOW + 1)
    assert len(far) >= 10
    # The camera really left: between some far revisit pair there is a frame showing none of it.
    left = [p for p in far if (iou[p.earlier, p.earlier + 1 : p.later] == 0).any()]
    assert len(left) >= 5
    assert all(p.later - p.earlier > WINDOW for p in far)


def test_trajectory_kinds_and_speed() -> None:
    for kind in ("loop", "out_and_back", "mixed"):
        cfg = WorldConfig(trajectory=kind)
        pos = make_trajectory(5, 200, cfg)
        assert pos.shape == (200, 2) and pos.dtype == np.int64
        assert np.abs(np.diff(pos, axis=0)).max() <= cfg.speed
        assert pos.min() >= 0 and pos[:, 0].max() <= cfg.map_width - cfg.frame_width
        assert pos[:, 1].max() <= cfg.map_height - cfg.frame_height
    loop = make_trajectory(5, 200, WorldConfig(trajectory="loop"))
    # A loop returns exactly to its start within the configured revisit period.
    back = [t for t in range(1, 49) if (loop[t] == loop[0]).all()]
    assert back and 16 <= back[0] <= 48


def test_landmark_visibility_matches_positions(clip) -> None:
    latents, meta, world = clip
    sightings = landmark_sightings(meta)
    assert len(sightings) > 0
    lm_by_id = {lm.id: lm for lm in world.landmarks}
    for t, (x, y) in enumerate(meta["positions"]):
        expect = {lm.id for lm in world.landmarks if x <= lm.x < x + 8 and y <= lm.y < y + 8}
        assert set(meta["visible_landmarks"][t]) == expect
    for s in sightings:
        lm = lm_by_id[s.landmark]
        x, y = meta["positions"][s.frame]
        # At its centre cell a landmark shows its identity code exactly (static map).
        np.testing.assert_allclose(world.render(x, y, s.frame, objects=False)[:, s.row, s.col], lm.code,
                                   atol=1e-5)
        np.testing.assert_allclose(meta["landmarks"][s.landmark]["code"], lm.code, atol=1e-5)


def test_objects_move_and_are_recorded(clip) -> None:
    latents, meta, world = clip
    frames_with_objects = [t for t, objs in enumerate(meta["objects"]) if objs]
    assert frames_with_objects
    t = frames_with_objects[0]
    x, y = meta["positions"][t]
    assert _object_mask(world, x, y, t).any()
    (_, x0, y0), (_, x1, y1) = world.object_positions(0)[0], world.object_positions(50)[0]
    assert 0 < np.hypot(x1 - x0, y1 - y0) <= 50 * world.config.object_speed + 1e-6


def test_conditioning_reproduces_positions(clip) -> None:
    _, meta, _ = clip
    cond = conditioning_arrays(meta)
    assert cond["camera"].shape == (FRAMES, 2) and cond["camera"].dtype == np.float32
    pos = np.asarray(meta["positions"])
    np.testing.assert_array_equal(pos[0] + np.cumsum(cond["camera"], axis=0), pos)
    assert (cond["world_id"] == meta["world"]["world_id"]).all() and cond["style_id"].shape == (FRAMES,)


def test_relevant_frames_are_overlapping_candidates(clip) -> None:
    _, meta, _ = clip
    far = revisit_pairs(meta, min_gap=WINDOW + 1)[0]
    got = relevant_frames(meta, [far.later], range(far.later - WINDOW))
    assert far.earlier in got
    pos = meta["positions"]
    for c in range(far.later - WINDOW):
        assert (c in got) == (viewport_overlap(pos[c], pos[far.later], 8, 8) >= 0.5)


def test_generate_world_clips_for_synth() -> None:
    clips = list(generate_world_clips(seed=0, num_clips=3, frames=6, height=16, width=16, channels=4))
    assert len({key for key, _, _ in clips}) == 3
    for key, latents, meta in clips:
        assert latents.shape == (6, 4, 16, 16) and np.isfinite(latents).all()
        assert meta["world"]["frame_height"] == 16 and "." not in key
    assert not np.allclose(clips[0][1], clips[1][1])
    again = next(generate_world_clips(seed=0, num_clips=1, frames=6, height=16, width=16, channels=4))
    assert again[0] == clips[0][0] and np.array_equal(again[1], clips[0][1])


def test_bad_config_and_positions_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="revisit_min"):
        WorldConfig(revisit_min=50, revisit_max=20)
    with pytest.raises(ValueError, match="trajectory"):
        WorldConfig(trajectory="spiral")
    with pytest.raises(ValueError, match="num_landmarks"):
        World.from_seed(0, WorldConfig(num_landmarks=500))
    with pytest.raises(ValueError, match=r"viewport \(x=200"):
        World.from_seed(0).render(200, 0, 0)
