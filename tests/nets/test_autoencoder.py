"""LatentAE against the reference fixtures, and every loading path of ``load_embedder``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lrag.checkpoints.embedder import load_embedder, save_embedder
from lrag.checkpoints.io import CheckpointError
from lrag.golden import within_bar
from lrag.nets.autoencoder import AEConfig, LatentAE, bottleneck_shape, gem_pool

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wan_reference"


@pytest.fixture(scope="module")
def golden(ae_golden) -> dict:
    return ae_golden


@pytest.fixture(scope="module")
def golden_model(ae_golden_model) -> LatentAE:
    return ae_golden_model


def assert_close(actual: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor | None = None) -> None:
    """The fixture README's bar (:func:`lrag.golden.within_bar`); ``exact``: the output in float64."""
    assert actual.shape == ref.shape
    ok, err, rel, note = within_bar(actual.detach(), ref, exact)
    assert ok, (err, rel, note)


def test_default_config_matches_reference_keys_and_param_count() -> None:
    spec = json.loads((FIXTURES / "ae_latent_mem_keys.json").read_text())
    model = LatentAE()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == spec["keys"]
    assert sum(p.numel() for p in model.parameters()) == spec["num_params"] == 30231696
    assert list(bottleneck_shape(model.config)) == spec["encoder_feat_shape"]


def test_default_config_reconstructs_odd_sizes_exactly() -> None:
    model = LatentAE(AEConfig(hidden_dims=[4, 4, 8], latent_dim=16))
    recon, z = model(torch.randn(2, 16, 60, 104))
    assert recon.shape == (2, 16, 60, 104) and z.shape == (2, 16)


def test_outputs_match_golden(golden, golden_model) -> None:
    x = golden["input"].flatten(0, 1)
    recon, z = golden_model(x)
    exact = copy.deepcopy(golden_model).double()  # the same network without float32 rounding
    with torch.no_grad():
        recon_exact, z_exact = exact(x.double())
        decoded_exact = exact.decoder(golden["encoder_output_raw"].double())
        desc_exact = exact.encode(x.double())
    assert_close(z, golden["encoder_output_raw"], z_exact)
    assert_close(z, golden["forward_embed"], z_exact)
    assert_close(recon, golden["decoder_output"], recon_exact)
    assert_close(golden_model.decoder(golden["encoder_output_raw"]), golden["decoder_output"], decoded_exact)
    desc = golden_model.encode(x)
    assert_close(desc, golden["encoder_output_l2norm"], desc_exact)
    assert torch.allclose(desc.norm(dim=-1), torch.ones(len(desc)), atol=1e-6)


def test_reference_pt_and_safetensors_roundtrip(golden, golden_model, tmp_path) -> None:
    ref = tmp_path / "ae_latent_mem.pt"
    torch.save({"model": golden["state_dict"], "config": golden["config"], "epoch": 3}, ref)
    loaded = load_embedder(ref)
    x = golden["input"].flatten(0, 1)
    assert torch.equal(loaded.encode(x), golden_model.encode(x))
    assert loaded.config.hidden_dims == [8, 16] and loaded.config.latent_dim == 32

    out = tmp_path / "emb.safetensors"
    save_embedder(loaded, out)
    again = load_embedder(out)
    assert again.config == loaded.config
    for k, v in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_pickle_only_checkpoint_is_refused_with_a_fix(tmp_path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(2, 2), "config": {}}, path)  # a module, not a state dict
    with pytest.raises(CheckpointError) as err:
        load_embedder(path)
    assert str(path) in str(err.value) and "weights_only" in str(err.value)
    assert "torch.save" in str(err.value)


def test_missing_and_unexpected_keys_are_listed(golden, tmp_path) -> None:
    state = dict(golden["state_dict"])
    del state["encoder.fc.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save({"model": state, "config": golden["config"]}, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys: encoder\.fc\.bias") as err:
        load_embedder(path)
    assert "1 unexpected keys: encoder.extra.weight" in str(err.value)


def test_shape_mismatch_and_unknown_layout(golden, tmp_path) -> None:
    cfg = dict(golden["config"], latent_dim=64)
    path = tmp_path / "mismatch.pt"
    torch.save({"model": golden["state_dict"], "config": cfg}, path)
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*encoder\.fc\.weight \[32, 16\] != \[64, 16\]"):
        load_embedder(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(CheckpointError, match="not an embedder checkpoint"):
        load_embedder(other)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_embedder(tmp_path / "nope.pt")


def test_safetensors_without_metadata_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="lrag export"):
        load_embedder(path)


def test_flatten_pool_keeps_the_layout_and_roundtrips(tmp_path) -> None:
    cfg = AEConfig(in_channels=16, spatial_h=8, spatial_w=8, latent_dim=64, hidden_dims=[16, 32], pool="flatten")
    model = LatentAE(cfg)
    assert model.encoder.fc.in_features == 32 * 2 * 2  # the 2x2 bottleneck, not its mean
    save_embedder(model, tmp_path / "e.safetensors")
    loaded = load_embedder(tmp_path / "e.safetensors")
    assert loaded.config.pool == "flatten"
    x = torch.randn(3, 16, 8, 8)
    assert torch.equal(loaded.encode(x), model.encode(x))


def test_unknown_pool_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="pool='max'"):
        LatentAE(AEConfig(in_channels=16, spatial_h=8, spatial_w=8, latent_dim=8, hidden_dims=[8], pool="max"))
    with pytest.raises(ValueError, match="emb.pt: .*pool"):
        AEConfig.from_dict({"pool": "max"}, "emb.pt")


def test_flatten_pool_reconstructs_small_frames_that_mean_pool_cannot() -> None:
    # Rank-8 frames whose channel means are zero: what tells them apart is where things are,
    # which a mean-pooled 2x2 bottleneck loses (its MSE stays near the frames' variance, ~1.07).
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(8, 16, 8, 8, generator=gen)
    basis = basis - basis.mean(dim=(-2, -1), keepdim=True)
    frames = torch.einsum("nk,kchw->nchw", torch.randn(64, 8, generator=gen), basis) / 8**0.5
    losses = {}
    for pool in ("mean", "flatten"):
        torch.manual_seed(0)
        model = LatentAE(AEConfig(in_channels=16, spatial_h=8, spatial_w=8, latent_dim=64,
                                  hidden_dims=[16, 32], pool=pool))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(80):
            loss = torch.nn.functional.mse_loss(model(frames)[0], frames)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[pool] = loss.item()
    assert losses["mean"] > 0.9 * frames.var().item(), losses
    assert losses["flatten"] < 0.7 * losses["mean"], losses


def test_gem_with_p_one_is_the_mean_and_large_p_approaches_the_max() -> None:
    x = torch.rand(3, 4, 5, 6, dtype=torch.float64) + 0.1  # positive, as the clamp assumes
    assert torch.allclose(gem_pool(x, 1.0), x.mean(dim=(2, 3)), atol=1e-9)
    # mean(x^p)^(1/p) >= max * (1/30)^(1/p): within 2 % of the max at p = 300
    assert torch.allclose(gem_pool(x, 300.0), x.amax(dim=(2, 3)), rtol=0.02)
    mid = gem_pool(x, 3.0)
    assert bool((mid > x.mean(dim=(2, 3))).all() and (mid < x.amax(dim=(2, 3))).all())


def test_gem_pool_embedder_learns_p_and_roundtrips(tmp_path) -> None:
    cfg = AEConfig(in_channels=4, spatial_h=8, spatial_w=8, latent_dim=16, hidden_dims=[8, 8], pool="gem", gem_p=2.0)
    model = LatentAE(cfg)
    x = torch.randn(5, 4, 8, 8)
    recon, z = model(x)
    assert recon.shape == x.shape and z.shape == (5, 16)
    (recon.pow(2).mean() + z.pow(2).mean()).backward()
    assert model.encoder.gem_p.grad is not None  # p is trained
    save_embedder(model, tmp_path / "gem.safetensors")
    again = load_embedder(tmp_path / "gem.safetensors")
    assert again.config.pool == "gem" and torch.allclose(again.encode(x), model.encode(x), atol=1e-6)
    with pytest.raises(ValueError, match="gem_p"):
        AEConfig(pool="gem", gem_p=0.5)
