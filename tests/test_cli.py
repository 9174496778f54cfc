"""The ``lrag`` command: overview, LightningCLI config handling, and an end-to-end embedder fit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lrag.cli import main
from lrag.commands.lightning_cli import run_lightning
from lrag.data.shards import ShardWriter
from lrag.checkpoints.embedder import load_embedder

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "embedder" / "demo.yaml")


def write_drifting_shards(out: Path, clips: int = 32, frames: int = 12, seed: int = 0) -> None:
    """Clips whose consecutive frames are close, so the untrained embedder's WTD term is > 0."""
    rng = np.random.default_rng(seed)
    with ShardWriter(out, max_clips_per_shard=4) as writer:
        for i in range(clips):
            base = rng.standard_normal((1, 16, 8, 8))
            drift = np.cumsum(0.15 * rng.standard_normal((frames, 16, 8, 8)), axis=0)
            writer.write(f"clip{i:03d}", (base + drift).astype(np.float32), {"source": "test"})


def fit_args(data: Path, logs: Path, *extra: str) -> list[str]:
    return ["fit", "--config", DEMO, "--data.init_args.data_dir", str(data),
            "--trainer.logger.init_args.save_dir", str(logs), *extra]


def scalars(log_dir: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [event.value for event in acc.Scalars(tag)]


def test_overview_lists_commands(capsys) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    for name in ("fit", "predict", "data", "memory", "export", "eval"):
        assert f"  {name} " in out, name


def test_unknown_command_is_named() -> None:
    with pytest.raises(SystemExit, match="unknown command 'fitt'"):
        main(["fitt"])


def test_print_config_of_demo(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "lrag.modules.embedder.EmbedderModule" in out and "delta_window: 3" in out
    assert "lrag.data.datamodule.LatentShardDataModule" in out


def test_unknown_key_names_key_file_and_fix(tmp_path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text(Path(DEMO).read_text().replace("delta_window:", "delta_windw:"))
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(bad), "--print_config"])
    message = str(err.value.code)
    assert "unknown config key 'delta_windw'" in message
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "delta_windw" in text)
    assert f"{bad}:{line}" in message and "did you mean 'delta_window'" in message

    trainer_typo = tmp_path / "trainer.yaml"
    trainer_typo.write_text(Path(DEMO).read_text().replace("max_epochs:", "max_epoch:"))
    with pytest.raises(SystemExit, match="did you mean 'max_epochs'"):
        main(["fit", "--config", str(trainer_typo)])


def test_bad_value_names_the_key_and_file(tmp_path) -> None:
    bad = tmp_path / "value.yaml"
    text = re.sub(r"max_epochs: \d+", "max_epochs: many", Path(DEMO).read_text())
    assert "max_epochs: many" in text
    bad.write_text(text)
    with pytest.raises(SystemExit, match=r"invalid configuration \(config files: .*value\.yaml\)"
                                         r"[\s\S]*trainer\.max_epochs"):
        main(["fit", "--config", str(bad)])


@pytest.mark.slow
def test_override_and_resume_from_checkpoint(tmp_path) -> None:
    write_drifting_shards(tmp_path / "shards", clips=12)
    short = ("--data.init_args.samples_per_epoch", "8", "--data.init_args.batch_size", "4")
    cli = run_lightning(fit_args(tmp_path / "shards", tmp_path / "runs", "--trainer.max_epochs", "2", *short))
    assert cli.trainer.max_epochs == 2 and cli.trainer.current_epoch == 2
    assert cli.trainer.global_step == 4
    last = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert last.is_file() and load_embedder(last).config.latent_dim == 64

    resumed = run_lightning(fit_args(tmp_path / "shards", tmp_path / "runs", "--trainer.max_epochs", "3",
                                     *short, "--ckpt_path", str(last)))
    assert resumed.trainer.current_epoch == 3
    assert resumed.trainer.global_step == 6  # continued from step 4, not restarted


@pytest.mark.slow
def test_demo_fit_logs_scalars_and_wtd_falls(tmp_path) -> None:
    write_drifting_shards(tmp_path / "shards")
    small = ("--data.init_args.batch_size", "4", "--data.init_args.seq_len", "4",
             "--data.init_args.samples_per_epoch", "32")  # 8 steps per epoch
    main(fit_args(tmp_path / "shards", tmp_path / "runs", "--trainer.max_epochs", "10", *small))
    log_dir = next((tmp_path / "runs" / "embedder_demo").glob("version_*"))
    for stage in ("train", "val"):
        for term in ("loss", "recon", "wtd", "smooth", "cos_offset_1", "cos_offset_3"):
            assert scalars(log_dir, f"{stage}/{term}"), f"{stage}/{term}"
    assert scalars(log_dir, "lr-AdamW")[0] == pytest.approx(3e-3)
    wtd = scalars(log_dir, "val/wtd")
    assert len(wtd) == 10 and wtd[0] > 0.1
    assert wtd[-1] < 0.5 * wtd[0], wtd
    assert scalars(log_dir, "train/wtd")[-1] < scalars(log_dir, "train/wtd")[0]
    assert (log_dir / "checkpoints" / "last.ckpt").is_file()
