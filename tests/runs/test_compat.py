"""Runs stored before the layout move still resume, bit-identically, after it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from lrag.cli import main
from lrag.runs.compat import CLASS_PATHS, migrate_config
from lrag.runs.outputs import RunOutputs

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "store_v0_1"


def test_every_old_class_path_names_an_importable_class() -> None:
    import importlib

    for new in CLASS_PATHS.values():
        module, _, name = new.rpartition(".")
        assert hasattr(importlib.import_module(module), name), new


def test_migration_groups_the_sampler_knobs_and_renames_classes() -> None:
    stored = yaml.safe_load((FIXTURE / "runs" / "old-0" / "config.yaml").read_text())
    args = migrate_config(stored)["model"]["init_args"]
    assert args["sampling"] == {"frames_per_block": 3, "window": 10, "sink": 1, "budget": "replace",
                                "positions": "slot", "memory_position": "zero", "sink_mode": "blank"}
    assert "window" not in args
    assert args["backbone"]["class_path"] == "lrag.nets.camera.CameraConditioned"
    assert args["backbone"]["init_args"]["backbone"]["class_path"] == "lrag.nets.wan.CausalWanModel"


@pytest.mark.slow
def test_a_run_stored_before_the_move_resumes_bit_identically(tmp_path, monkeypatch) -> None:
    shutil.copytree(FIXTURE / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    main(["predict", "--config", str(ROOT / "configs" / "predict" / "demo.yaml"),
          "--model.init_args.num_frames", "24", "--data.init_args.num_frames", "24",
          "--model.init_args.run_name", "old", "--model.init_args.progress", "false",
          "--model.init_args.memory.init_args.store_stride", "1",  # 0.1 kept every frame
          "--trainer.logger", "false", "--trainer.callbacks", "[]", "--resume", "old-0"])
    resumed = RunOutputs(tmp_path / "runs" / "old-0", "old-0", {}, 16, False).read_blocks(8)
    expected = np.load(FIXTURE / "expected_latents.npy")
    assert np.array_equal(resumed.numpy(), expected)


def test_a_knob_added_after_the_run_is_compared_with_its_default() -> None:
    from lrag.runs.compat import fill_defaults

    stored = {"class_path": "lrag.memory.bank.RetrievalMemory", "init_args": {"memory_size": 2}}
    same = {"class_path": "lrag.memory.bank.RetrievalMemory", "init_args": {"memory_size": 2, "diversity": 0.0}}
    other = {"class_path": "lrag.memory.bank.RetrievalMemory", "init_args": {"memory_size": 2, "diversity": 0.3}}
    assert fill_defaults(stored, same) == same  # the old run behaved like the new knob's default
    assert fill_defaults(stored, other) != other  # setting it to something else is still a change
