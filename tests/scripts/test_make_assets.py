"""scripts/make_assets.sh end to end at toy size: every shipped file is rebuilt, and reproducibly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lrag.checkpoints.backbone_fit import read_backbone_fit

REPO = Path(__file__).resolve().parents[2]
TOY = {"BACKBONE_STEPS": "2", "BACKBONE_BATCH": "2", "PREDICT_WORLDS": "2", "PREDICT_FRAMES": "24",
       "EMBEDDER_EPOCHS": "1", "INSTALL": "0", "ABLATION": "0", "FROZEN": "1"}


def _make_assets(work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **TOY, "WORK": str(work), "LRAG": str(Path(sys.executable).with_name("lrag")),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "scripts/make_assets.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_make_assets_rebuilds_every_shipped_file_reproducibly(tmp_path) -> None:
    first = _make_assets(tmp_path / "a")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    names = ("backbone_tiny.safetensors", "backbone_tiny_frozen.safetensors", "embedder_tiny.safetensors")
    assert all((tmp_path / "a" / n).is_file() for n in names)
    _, exposed = read_backbone_fit(tmp_path / "a" / names[0])
    _, frozen = read_backbone_fit(tmp_path / "a" / names[1])
    assert exposed.knobs["memory_exposure"] > 0 and frozen.knobs["memory_exposure"] == 0.0
    assert frozen.config == exposed.config
    second = _make_assets(tmp_path / "b")  # seeded: the same tensors again
    assert second.returncode == 0, second.stderr[-3000:]
    for name in names:
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
