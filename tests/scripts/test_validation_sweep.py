"""scripts/validation_sweep.py: refuses held-out worlds, and evaluates the backbone it is given."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lrag.assets import asset_path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "validation_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("validation_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [1000, 1047, 1099])
def test_held_out_worlds_are_refused(sweep, seed) -> None:
    with pytest.raises(SystemExit, match="held-out"):
        sweep.main(["--seeds", str(seed), "--descriptors", "avg_pool"])


def test_backbone_override_changes_the_generated_videos(sweep, tmp_path) -> None:
    rows = {}
    for name in ("backbone_tiny.safetensors", "backbone_tiny_frozen.safetensors"):
        out = tmp_path / name
        sweep.main(["--seeds", "2000", "--num_frames", "24", "--descriptors", "avg_pool",
                    "--position_descriptors", "--backbone_checkpoint", str(asset_path(name)), "--out", str(out)])
        rows[name] = {r["variant"]: r for r in json.loads((out / "runs.json").read_text())}
        assert str(asset_path(name)) in (out / "validation.md").read_text()
    shipped, frozen = rows["backbone_tiny.safetensors"], rows["backbone_tiny_frozen.safetensors"]
    assert set(shipped) == set(frozen) == {"native", "rag-avg_pool"}
    assert shipped["native"]["scalars"]["revisit_inconsistency"] != frozen["native"]["scalars"]["revisit_inconsistency"]
