"""Tests for lrag.nets.checkpoints: upstream generator formats, strict loading, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lrag.checkpoints.io import CheckpointError, check_state_dict, load_into, normalize_key, normalize_state_dict
from lrag.checkpoints.lora import apply_lora, lora_target_modules, merge_lora, read_lora_state_dict
from lrag.checkpoints.upstream import export_backbone, load_backbone_weights, load_generator_state_dict
from lrag.nets.wan import PRESETS, CausalWanModel

KEYS_JSON = Path(__file__).resolve().parents[1] / "fixtures" / "wan_reference" / "wan_1_3b_keys.json"


def make_model() -> CausalWanModel:
    return CausalWanModel(PRESETS["tiny"]())


def randomized(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def fsdp_ema_key(key: str) -> str:
    """How Self-Forcing's FSDP-saved EMA names a parameter of its WanDiffusionWrapper."""
    if key.startswith("blocks."):
        i, rest = key.split(".", 2)[1:]
        return f"_fsdp_wrapped_module.model.blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
    return f"_fsdp_wrapped_module.model.{key}"


def test_normalize_key_strips_wrappers() -> None:
    assert normalize_key(fsdp_ema_key("blocks.3.self_attn.q.weight")) == "blocks.3.self_attn.q.weight"
    assert normalize_key("module.model.head.head.weight") == "head.head.weight"
    assert normalize_key("_orig_mod.patch_embedding.bias") == "patch_embedding.bias"


@pytest.mark.parametrize("fmt", ["generator", "generator_ema", "model", "bare", "lightning", "safetensors"])
def test_upstream_formats_load_strictly(tmp_path: Path, fmt: str) -> None:
    model = make_model()
    weights = randomized(model)
    wrapped = {f"model.{k}": v for k, v in weights.items()}  # WanDiffusionWrapper.model
    path = tmp_path / "ckpt.pt"
    if fmt == "generator":
        torch.save({"generator": wrapped, "step": 100}, path)
    elif fmt == "generator_ema":
        torch.save({"generator_ema": {fsdp_ema_key(k): v for k, v in weights.items()}}, path)
    elif fmt == "model":
        torch.save({"model": weights}, path)
    elif fmt == "bare":
        torch.save(weights, path)
    elif fmt == "lightning":
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in weights.items()}, "epoch": 1}, path)
    else:
        path = tmp_path / "ckpt.safetensors"
        save_file(weights, path)
    prefix = "backbone." if fmt == "lightning" else None
    load_into(model, load_generator_state_dict(path, strip_prefix=prefix), str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_prefer_ema_picks_the_right_weights(tmp_path: Path) -> None:
    model = make_model()
    plain, ema = randomized(model, 1), randomized(model, 2)
    path = tmp_path / "both.pt"
    torch.save({"generator": plain, "generator_ema": {fsdp_ema_key(k): v for k, v in ema.items()}}, path)
    key = "blocks.0.self_attn.q.weight"
    assert torch.equal(load_generator_state_dict(path, prefer_ema=True)[key], ema[key])
    assert torch.equal(load_generator_state_dict(path, prefer_ema=False)[key], plain[key])


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        ("missing", r"1 missing keys: blocks\.1\.ffn\.2\.bias"),
        ("unexpected", r"1 unexpected keys: blocks\.0\.extra\.weight"),
        ("shape", r"wrong shapes: text_embedding\.0\.weight \[96, 33\] != \[96, 32\]"),
    ],
)
def test_corrupted_checkpoints_name_the_keys(tmp_path: Path, corrupt: str, match: str) -> None:
    model = make_model()
    weights = randomized(model)
    if corrupt == "missing":
        del weights["blocks.1.ffn.2.bias"]
    elif corrupt == "unexpected":
        weights["blocks.0.extra.weight"] = torch.zeros(2)
    else:
        weights["text_embedding.0.weight"] = torch.zeros(96, 33)
    path = tmp_path / f"{corrupt}.pt"
    torch.save({"generator": weights}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=match) as info:
        load_into(model, load_generator_state_dict(path), str(path))
    assert str(path) in str(info.value)
    # A rejected checkpoint changes nothing.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_many_missing_keys_are_counted_not_all_listed(tmp_path: Path) -> None:
    model = make_model()
    weights = {k: v for k, v in randomized(model).items() if not k.startswith("blocks.")}
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\+\d+ more\)"):
        load_into(model, weights, "partial.pt")


class Payload:
    """A custom class: unpickling it needs arbitrary code execution."""


def test_pickle_only_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"generator": randomized(make_model()), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"pickled\.pt.*weights_only=True.*Payload.*Convert"):
        load_generator_state_dict(path)


def test_missing_file_and_no_generator_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_generator_state_dict(tmp_path / "nope.pt")
    path = tmp_path / "odd.pt"
    torch.save({"optimizer": {"lr": 1.0}, "step": 3}, path)
    with pytest.raises(CheckpointError, match=r"no generator weights.*optimizer"):
        load_generator_state_dict(path)


def _lora_file(model: nn.Module, path: Path, rank: int, wrap: bool, seed: int = 3) -> dict[str, torch.Tensor]:
    """Write an adapter with LongLive's key pattern and random (non-zero) A and B."""
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for name in lora_target_modules(model):
        layer = model.get_submodule(name)
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=gen)
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=gen)
    torch.save({"generator_lora": lora} if wrap else lora, path)
    return lora


def test_lora_targets_every_linear_in_blocks() -> None:
    targets = lora_target_modules(make_model())
    per_block = sorted(t.split(".", 2)[2] for t in targets if t.startswith("blocks.0."))
    assert per_block == sorted(
        [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn.0", "ffn.2"]
    )
    assert not any(t.startswith("head") for t in targets)


@pytest.mark.parametrize("wrap", [True, False])
def test_lora_loads_and_merges_to_base_plus_scaled_ba(tmp_path: Path, wrap: bool) -> None:
    base, ckpt, lora_path = make_model(), tmp_path / "base.pt", tmp_path / "lora.pt"
    weights = randomized(base)
    torch.save({"generator": weights}, ckpt)
    rank, alpha = 4, 8.0
    lora = _lora_file(base, lora_path, rank, wrap)
    unmerged = load_backbone_weights(make_model(), ckpt, lora_path, merge=False, lora_alpha=alpha)
    merged = load_backbone_weights(make_model(), ckpt, lora_path, merge=True, lora_alpha=alpha)
    assert type(merged) is CausalWanModel
    assert set(merged.state_dict()) == set(weights)
    name = "blocks.1.cross_attn.k"
    delta = lora[f"base_model.model.{name}.lora_B.weight"] @ lora[f"base_model.model.{name}.lora_A.weight"]
    expected = weights[f"{name}.weight"] + (alpha / rank) * delta
    torch.testing.assert_close(merged.get_submodule(name).weight, expected)
    # The unmerged adapter computes the same function through peft's LoRA layers.
    x = torch.randn(2, 5, 96)
    lora_ffn = unmerged.get_base_model().blocks[0].ffn
    torch.testing.assert_close(lora_ffn(x), merged.blocks[0].ffn(x), rtol=1e-3, atol=1e-3)
    plain = load_backbone_weights(make_model(), ckpt)
    assert not torch.allclose(plain.blocks[0].ffn(x), merged.blocks[0].ffn(x))


def test_lora_with_wrong_targets_or_shapes_is_refused(tmp_path: Path) -> None:
    base = make_model()
    lora = _lora_file(base, tmp_path / "lora.pt", 4, wrap=True)
    lora_state = read_lora_state_dict(tmp_path / "lora.pt")
    assert set(lora_state) == set(lora)
    bad = dict(lora_state)
    bad.pop("base_model.model.blocks.0.ffn.2.lora_B.weight")
    bad["base_model.model.blocks.0.ffn.2.lora_B.weight"] = torch.zeros(96, 5)
    from lrag.checkpoints.lora import load_lora_state_dict

    with pytest.raises(CheckpointError, match=r"wrong shapes: .*ffn\.2\.lora_B"):
        load_lora_state_dict(apply_lora(make_model(), rank=4), bad, "bad_lora.pt")
    torch.save({"generator": randomized(base)}, tmp_path / "base.pt")
    with pytest.raises(CheckpointError, match="not a LoRA adapter"):
        read_lora_state_dict(tmp_path / "base.pt")


def test_merge_lora_needs_a_peft_model() -> None:
    with pytest.raises(TypeError, match="apply_lora"):
        merge_lora(make_model())


def test_full_size_keys_match_reference_without_allocating() -> None:
    """Wan2.1-1.3B on the meta device: an FSDP-EMA checkpoint's keys map onto the model exactly."""
    ref = json.loads(KEYS_JSON.read_text())
    with torch.device("meta"):
        model = CausalWanModel(PRESETS["wan_1_3b"]())
        ema = {fsdp_ema_key(k): torch.empty(shape) for k, shape in ref["keys"].items()}
    state = normalize_state_dict(ema, "meta-ema")
    check_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, "meta-ema")
    load_into(model, state, "meta-ema", assign=True)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


def test_full_size_lora_keys_match_longlive_without_allocating() -> None:
    from peft import get_peft_model_state_dict

    ref = json.loads(KEYS_JSON.read_text())["longlive_lora"]
    with torch.device("meta"):
        peft_model = apply_lora(CausalWanModel(PRESETS["wan_1_3b"]()), rank=ref["adapter"]["rank"])
    shapes = {k: list(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    assert shapes == ref["lora_state_dict_shapes"]
    assert peft_model.peft_config["default"].lora_alpha / peft_model.peft_config["default"].r == 1.0


def test_export_backbone_merges_lora_and_reloads(tmp_path: Path) -> None:
    base = make_model()
    torch.save({"generator_ema": {fsdp_ema_key(k): v for k, v in randomized(base).items()}}, tmp_path / "b.pt")
    _lora_file(base, tmp_path / "lora.pt", rank=4, wrap=True)
    out = export_backbone(tmp_path / "b.pt", tmp_path / "out" / "tiny", lora=tmp_path / "lora.pt",
                          preset="tiny", dtype=torch.float32)
    assert out.name == "tiny.safetensors" and out.is_file()
    expected = load_backbone_weights(make_model(), tmp_path / "b.pt", tmp_path / "lora.pt")
    reloaded = load_into(make_model(), load_generator_state_dict(out), str(out))
    for k, v in expected.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[k], v, rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(out, "pt") as fh:
        meta = fh.metadata()
    assert meta["preset"] == "tiny" and json.loads(meta["config"])["dim"] == 96
    assert set(json.loads(meta["sources_sha256"])) == {"ckpt", "lora"}
