"""``lrag fit`` of the embedder under 2-process DDP (CPU, gloo); its checkpoint on 1 process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrag.cli import main
from lrag.commands.lightning_cli import run_lightning

from .test_predict_ddp import DDP, _env

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "embedder" / "demo.yaml")


def _args(root: Path, epochs: int) -> list[str]:
    # 5 shards of 4 clips: 1 validation + 4 training shards (2 per rank); 16 windows per epoch
    # at a global batch of 8 are 2 steps per epoch on any number of devices.
    return ["--config", CONFIG, f"--data.init_args.data_dir={root / 'data'}",
            "--data.init_args.samples_per_epoch=16", f"--trainer.max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={root / 'runs'}",
            "--trainer.logger.init_args.version=v", "--trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory) -> Path:
    """One epoch of the demo embedder fit on 2 ranks; returns the folder."""
    root = tmp_path_factory.mktemp("fit")
    main(["data", "synth", str(root / "data"), "--clips", "20", "--frames", "12", "--height", "8",
          "--width", "8", "--shard-size", "4"])
    proc = subprocess.run([sys.executable, "-m", "lrag.cli", "fit", *_args(root, 1), *DDP],
                          cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def _ckpt(root: Path) -> Path:
    return root / "runs" / "embedder_demo" / "v" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_two_rank_validation_loss_equals_the_one_device_value(ddp_fit):
    ckpt = torch.load(_ckpt(ddp_fit), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # 16 windows / global batch 8, split over 2 ranks
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    synced = float(state["best_model_score"])
    # The same weights validated by one process: the 2-rank val/loss was not one rank's share.
    cli = run_lightning(["validate", *_args(ddp_fit, 1), "--trainer.devices=1",
                         f"--ckpt_path={_ckpt(ddp_fit)}"])
    assert float(cli.trainer.callback_metrics["val/loss"]) == pytest.approx(synced, rel=1e-5)


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_device(ddp_fit):
    cli = run_lightning(["fit", *_args(ddp_fit, 2), "--trainer.devices=1",
                         f"--ckpt_path={_ckpt(ddp_fit)}"])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 4
    resumed = torch.load(_ckpt(ddp_fit), map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 4
