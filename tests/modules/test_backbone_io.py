"""BackboneFitModule checkpoints: `lrag export` to safetensors and strict loading."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lrag.commands.export import main as export_main
from lrag.modules.backbone_fit import BackboneFitModule, CameraConditioned
from lrag.modules.backbone_io import load_backbone_fit, read_backbone_fit
from lrag.modules.conditioning import TinyTextEncoder
from lrag.modules.nets.checkpoints import CheckpointError
from lrag.modules.nets.tiny import build_tiny
from lrag.modules.schedule import FlowMatchSchedule


def _lightning_ckpt(tmp_path, camera: str = "motion"):
    """The dict Lightning saves for a BackboneFitModule (state_dict + hyper-parameters)."""
    torch.manual_seed(3)
    module = BackboneFitModule(build_tiny("tiny"), TinyTextEncoder(8, 32), FlowMatchSchedule(5.0),
                               camera=camera, sink_mode="blank")
    path = tmp_path / "fit.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"num_worlds": 4, "seed_offset": 10}}, path)
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
