"""Procedural moving-pattern clips: determinism, shapes, smoothness, cuts and scene returns."""

from __future__ import annotations

import numpy as np
import pytest

from lrag.data.synthetic import (
    PatternConfig,
    frame_similarity,
    moving_patterns,
    scene_schedule,
    synth_clips,
)


def test_same_seed_same_clips_and_prefix_property():
    a = list(synth_clips("patterns", 3, 12, 4, 6, 5, seed=11))
    b = list(synth_clips("patterns", 2, 12, 4, 6, 5, seed=11))
    for (ka, la, ma), (kb, lb, mb) in zip(a, b):
        assert ka == kb and ma == mb
        np.testing.assert_array_equal(la, lb)
    c = list(synth_clips("patterns", 1, 12, 4, 6, 5, seed=12))
    assert not np.allclose(a[0][1], c[0][1])
    assert len({k for k, _, _ in a}) == 3


def test_shapes_dtype_and_scale():
    latents, ids = moving_patterns(40, 16, 8, 8, np.random.default_rng(0))
    assert latents.shape == (40, 16, 8, 8) and latents.dtype == np.float32
    assert ids.shape == (40,)
    assert np.isfinite(latents).all()
    assert 0.5 < latents.std() < 2.0  # roughly unit scale, like normalised VAE latents


def test_motion_is_smooth_within_scenes_and_jumps_at_cuts():
    latents, ids = moving_patterns(60, 8, 8, 8, np.random.default_rng(3))
    step = np.abs(np.diff(latents, axis=0)).mean(axis=(1, 2, 3))
    cut = ids[1:] != ids[:-1]
    assert cut.any() and (~cut).any()
    assert step[~cut].max() < step[cut].min()
    assert step[~cut].min() > 0  # it does move


def test_scenes_return_and_pooled_descriptors_find_them():
    cfg = PatternConfig(num_scenes=3, scene_length=6)
    latents, ids = moving_patterns(80, 16, 8, 8, np.random.default_rng(5), cfg)
    segments = [ids[0]] + [s for prev, s in zip(ids[:-1], ids[1:]) if s != prev]
    assert len(segments) > len(set(segments))  # some scene comes back
    sim = frame_similarity(latents)
    same = ids[:, None] == ids[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.2


def test_schedule_never_repeats_a_scene_across_a_cut():
    ids = scene_schedule(200, np.random.default_rng(1), PatternConfig(num_scenes=2))
    segments = [ids[0]] + [s for p, s in zip(ids[:-1], ids[1:]) if s != p]
    assert all(a != b for a, b in zip(segments[:-1], segments[1:])) and len(segments) > 10


def test_bad_kind_and_sizes_raise():
    with pytest.raises(ValueError, match="choose one of"):
        list(synth_clips("noise", 1, 4, 4, 4, 4, 0))
    with pytest.raises(ValueError, match="T=0"):
        moving_patterns(0, 4, 4, 4, np.random.default_rng(0))


def test_world_kind_produces_valid_clips():
    ((key, latents, meta),) = list(synth_clips("world", 1, 6, 4, 8, 8, seed=0))
    assert latents.shape == (6, 4, 8, 8) and np.isfinite(latents).all()
    assert isinstance(key, str) and "source" in meta
