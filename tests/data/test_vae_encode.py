"""WanVideoEncoder: streaming causal encoding equals diffusers' one-shot encode, bounded input."""

from __future__ import annotations

import pytest
import torch

from lrag.data.vae_encode import VAELoadError, WanVideoEncoder


@pytest.fixture(scope="module")
def encoder(tiny_vae_dir) -> WanVideoEncoder:
    return WanVideoEncoder.from_folder(tiny_vae_dir, device="cpu")


def test_streaming_equals_one_shot_encode_and_pulls_one_group_at_a_time(encoder):
    torch.manual_seed(1)
    video = torch.rand(11, 3, 16, 24) * 2 - 1  # 11 = 1 + 4 + 4 + 2 trailing frames
    pulled, pulled_at_yield, dropped = [0], [], []

    def frames():
        for frame in video:
            pulled[0] += 1
            yield frame

    latents = []
    for latent in encoder.iter_latents(frames(), on_drop=dropped.append):
        pulled_at_yield.append(pulled[0])
        latents.append(latent)
    # Latent j is produced as soon as its group is in: never more than one group held.
    assert pulled_at_yield == [1, 5, 9] and dropped == [2]
    ours = torch.stack(latents)  # (F, C, h, w)
    with torch.no_grad():
        mu = encoder.vae.encode(video[:9].permute(1, 0, 2, 3)[None]).latent_dist.mode()
    reference = ((mu - encoder.mean) / encoder.std)[0].permute(1, 0, 2, 3)
    assert ours.shape == (3, 16, 2, 3)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_vae_folder_errors_name_the_folder(tmp_path, tiny_vae_dir):
    with pytest.raises(VAELoadError, match="not a folder"):
        WanVideoEncoder.from_folder(tmp_path / "missing")
    with pytest.raises(VAELoadError, match="no config.json"):
        WanVideoEncoder.from_folder(tmp_path)
    broken = tmp_path / "broken" / "vae"  # a Wan checkout layout whose weights are missing
    broken.mkdir(parents=True)
    (broken / "config.json").write_text((tiny_vae_dir / "config.json").read_text())
    with pytest.raises(VAELoadError, match="not a loadable AutoencoderKLWan") as err:
        WanVideoEncoder.from_folder(tmp_path / "broken")
    assert str(broken) in str(err.value)
