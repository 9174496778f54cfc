"""BackboneFitModule checkpoints: `lrag export` to safetensors and strict loading."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lrag.commands.export import main as export_main
from lrag.modules.backbone_fit import BackboneFitModule
from lrag.nets.camera import CameraConditioned
from lrag.checkpoints.backbone_fit import load_backbone_fit, read_backbone_fit
from lrag.nets.conditioning import TinyTextEncoder
from lrag.checkpoints.io import CheckpointError
from lrag.nets.wan import build_tiny
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings


def _lightning_ckpt(tmp_path, camera: str = "motion", record_config: bool = True, **overrides):
    """The dict Lightning saves for a BackboneFitModule (state_dict + hyper-parameters + hooks)."""
    torch.manual_seed(3)
    module = BackboneFitModule(build_tiny("tiny", **overrides), TinyTextEncoder(8, 32), FlowMatchSchedule(5.0),
                               camera=camera, sampling=SamplerSettings(window=10, positions="slot", sink_mode="blank"))
    path = tmp_path / "fit.ckpt"
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"num_worlds": 4, "seed_offset": 10}}
    if record_config:
        module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path, module


def test_export_round_trip_keeps_weights_and_training_knobs(tmp_path, capsys):
    ckpt, module = _lightning_ckpt(tmp_path)
    out = tmp_path / "bb.safetensors"
    export_main([str(ckpt), str(out)])
    assert "backbone_fit" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata()["camera"] == "motion"
    net = CameraConditioned(build_tiny("tiny"), "motion")
    info = load_backbone_fit(net, out)
    for name, tensor in module.net.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], tensor, rtol=0, atol=0)
    assert info.knobs["sink_mode"] == "blank" and info.train_seeds() == [10, 11, 12, 13]
    # The Lightning checkpoint itself loads the same way.
    _, direct = read_backbone_fit(ckpt)
    assert direct.config == info.config


def test_camera_mismatch_and_plain_backbone_are_refused(tmp_path):
    ckpt, _ = _lightning_ckpt(tmp_path)
    with pytest.raises(CheckpointError, match="camera='motion'.*camera='none'"):
        load_backbone_fit(CameraConditioned(build_tiny("tiny"), "none"), ckpt)
    with pytest.raises(CheckpointError, match="CameraConditioned"):
        load_backbone_fit(build_tiny("tiny"), ckpt)


def test_other_safetensors_are_not_taken_for_backbones(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="lrag export"):
        read_backbone_fit(path)


def test_export_records_the_trained_architecture_not_a_preset(tmp_path):
    # 3 heads instead of the tiny preset's 4: same tensor shapes, so only a recorded config can tell.
    ckpt, module = _lightning_ckpt(tmp_path, num_heads=3)
    out = tmp_path / "bb.safetensors"
    export_main([str(ckpt), str(out)])
    _, info = read_backbone_fit(out)
    assert info.config == module.backbone.config and info.config.num_heads == 3
    assert info.knobs["config_source"] == "checkpoint"


def test_checkpoint_without_config_needs_fit_config(tmp_path):
    ckpt, module = _lightning_ckpt(tmp_path, record_config=False, num_layers=1)
    out = tmp_path / "bb.safetensors"
    with pytest.raises(SystemExit, match="--fit_config"):
        export_main([str(ckpt), str(out)])
    fit_yaml = tmp_path / "fit.yaml"
    fit_yaml.write_text(
        "model:\n  init_args:\n    backbone:\n      init_args:\n        config:\n"
        "          {text_len: 16, dim: 96, ffn_dim: 192, freq_dim: 32, text_dim: 32, num_heads: 4, num_layers: 1}\n")
    export_main([str(ckpt), str(out), "--fit_config", str(fit_yaml)])
    _, info = read_backbone_fit(out)
    assert info.config == module.backbone.config
    assert info.knobs["config_source"] == "fit_config:fit.yaml"
    # A YAML of another architecture is caught by the shape check.
    fit_yaml.write_text(fit_yaml.read_text().replace("num_layers: 1", "num_layers: 2"))
    with pytest.raises(SystemExit, match="blocks.1"):
        export_main([str(ckpt), str(out), "--fit_config", str(fit_yaml)])
