"""`asset:` paths: the shipped weights are found from anywhere, missing ones say how to make them."""

from __future__ import annotations

import pytest

from lrag.assets import ASSETS, AssetMissingError, asset_path, resolve_asset


def test_shipped_files_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ASSETS:
        path = resolve_asset(f"asset:{name}")
        assert path == str(asset_path(name)) and asset_path(name).stat().st_size > 1000


def test_plain_paths_pass_through():
    assert resolve_asset("runs/x.safetensors") == "runs/x.safetensors"


def test_missing_asset_names_file_place_and_make_target():
    with pytest.raises(AssetMissingError) as err:
        resolve_asset("asset:backbone_huge.safetensors", "model.init_args.backbone_checkpoint")
    message = str(err.value)
    assert "model.init_args.backbone_checkpoint" in message
    assert str(asset_path("backbone_huge.safetensors")) in message
    assert "make assets" in message and "scripts/make_assets.sh" in message


def test_frozen_backbone_differs_from_the_shipped_one_only_in_memory_exposure():
    from lrag.checkpoints.backbone_fit import read_backbone_fit

    _, shipped = read_backbone_fit(asset_path("backbone_tiny.safetensors"))
    tensors, frozen = read_backbone_fit(asset_path("backbone_tiny_frozen.safetensors"))
    assert frozen.config == shipped.config and frozen.camera == shipped.camera
    assert frozen.knobs["memory_exposure"] == 0.0 and shipped.knobs["memory_exposure"] > 0
    differ = {k for k in set(frozen.knobs) | set(shipped.knobs) if frozen.knobs.get(k) != shipped.knobs.get(k)}
    assert differ == {"memory_exposure", "config_source"}  # config_source: where the architecture was read
    assert len(tensors) > 0
