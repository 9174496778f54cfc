"""``lrag export`` of upstream generator checkpoints (kind ``generator``), with a LoRA merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lrag.cli import main as lrag_main
from lrag.commands.export import build_parser, export, select_exporter
from lrag.checkpoints.io import CheckpointError
from lrag.checkpoints.lora import lora_target_modules
from lrag.checkpoints.export_options import EXPORT_OPTIONS, GENERATOR_DTYPES
from lrag.checkpoints.exporters import EXPORTERS, is_generator_checkpoint
from lrag.nets.wan import PRESETS, CausalWanModel


def tiny_weights(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = CausalWanModel(PRESETS["tiny"]())
    return {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def write_lora(path: Path, rank: int, seed: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = CausalWanModel(PRESETS["tiny"]())
    lora = {}
    for name in lora_target_modules(model):
        layer = model.get_submodule(name)
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=gen)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=gen)
    torch.save({"generator_lora": lora}, path)
    return lora


@pytest.fixture()
def upstream(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LongLive-style checkpoint: wrapper-prefixed generator and (different) EMA weights."""
    base, ema = tiny_weights(1), tiny_weights(2)
    ckpt = tmp_path / "longlive_base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in base.items()},
                "generator_ema": {f"_fsdp_wrapped_module.model.{k}": v for k, v in ema.items()},
                "step": 3}, ckpt)
    return ckpt, base, ema


def test_cli_export_merges_lora_into_base_and_loads_strictly(tmp_path, upstream, capsys) -> None:
    ckpt, base, ema = upstream
    rank, alpha = 4, 8.0
    lora = write_lora(tmp_path / "lora.pt", rank)
    out = tmp_path / "merged.safetensors"
    lrag_main(["export", str(ckpt), str(out), "--lora", str(tmp_path / "lora.pt"), "--preset", "tiny",
               "--dtype", "float32", "--lora_alpha", str(alpha), "--prefer_ema", "false"])
    assert "generator: 'generator' weights" in capsys.readouterr().out
    state = load_file(out)
    model = CausalWanModel(PRESETS["tiny"]())
    model.load_state_dict(state, strict=True)
    targets = set(lora_target_modules(model))
    for key, value in state.items():
        module = key.rsplit(".", 1)[0]
        if module in targets and key.endswith(".weight"):
            delta = lora[f"base_model.model.{module}.lora_B.weight"] @ lora[f"base_model.model.{module}.lora_A.weight"]
            torch.testing.assert_close(value, base[key] + (alpha / rank) * delta, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(value, base[key]), key  # biases, norms, embeddings, head untouched


def test_default_export_takes_ema_in_bf16_without_lora(tmp_path, upstream) -> None:
    ckpt, _, ema = upstream
    out = tmp_path / "sf.safetensors"
    options = build_parser().parse_args([str(ckpt), str(out), "--preset", "tiny"])
    summary = export(ckpt, out, options=options)
    assert "'generator_ema'" in summary and "bfloat16" in summary and "LoRA" not in summary
    state = load_file(out)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    assert set(state) == set(ema)
    for key, value in state.items():
        assert torch.equal(value, ema[key].to(torch.bfloat16)), key


def test_detection_and_errors(tmp_path, upstream) -> None:
    ckpt, base, _ = upstream
    assert is_generator_checkpoint({"model": base})
    assert not is_generator_checkpoint({"model": {"encoder.conv_stack.0.weight": torch.zeros(1)}})
    assert not is_generator_checkpoint({"state_dict": {f"net.backbone.{k}": v for k, v in base.items()}})
    assert select_exporter({"generator": base}, ckpt).kind == "generator"
    with pytest.raises(CheckpointError, match="--preset: .*'nope'"):
        export(ckpt, tmp_path / "x.safetensors", options=build_parser().parse_args(
            [str(ckpt), str(tmp_path / "x.safetensors"), "--preset", "nope"]))
    with pytest.raises(CheckpointError, match="--dtype 'int8'"):
        export(ckpt, tmp_path / "x.safetensors", options=build_parser().parse_args(
            [str(ckpt), str(tmp_path / "x.safetensors"), "--preset", "tiny", "--dtype", "int8"]))
    # The base checkpoint as --lora is refused, naming the file.
    with pytest.raises(SystemExit, match="longlive_base.pt is not a LoRA adapter"):
        lrag_main(["export", str(ckpt), str(tmp_path / "y.safetensors"), "--preset", "tiny",
                   "--lora", str(ckpt)])
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_the_option_table_names_every_exporter_preset_and_dtype() -> None:
    assert tuple(e.kind for e in EXPORTERS) == tuple(EXPORT_OPTIONS)
    backbone_preset = next(o for o in EXPORT_OPTIONS["backbone_fit"] if o.name == "preset")
    assert all(name in backbone_preset.help for name in PRESETS)
    assert all(hasattr(torch, name) and isinstance(getattr(torch, name), torch.dtype) for name in GENERATOR_DTYPES)
