"""Tests for lrag.modules.conditioning (tiny hashing encoder, umT5 through transformers)."""

from __future__ import annotations

import pytest
import torch

from lrag.modules.conditioning import TinyTextEncoder


def test_tiny_encoder_shape_and_determinism() -> None:
    enc_a = TinyTextEncoder(text_len=8, text_dim=32, seed=3)
    enc_b = TinyTextEncoder(text_len=8, text_dim=32, seed=3)
    prompts = ["a red ball rolls", "a cat"]
    out = enc_a(prompts)
    assert out.shape == (2, 8, 32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, enc_b(prompts), rtol=0, atol=0)


def test_tiny_encoder_pads_with_zeros_and_truncates() -> None:
    enc = TinyTextEncoder(text_len=4, text_dim=16)
    out = enc(["two words", "one two three four five six", ""])
    assert out[0, :2].abs().sum(-1).gt(0).all()
    assert out[0, 2:].abs().sum() == 0
    assert out[1].abs().sum(-1).gt(0).all()
    assert out[2].abs().sum() == 0


def test_tiny_encoder_distinguishes_prompts_order_and_seed() -> None:
    enc = TinyTextEncoder(text_len=6, text_dim=16, seed=0)
    a, b, swapped = enc(["dog runs", "cat sleeps", "runs dog"])
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, swapped)
    other = TinyTextEncoder(text_len=6, text_dim=16, seed=1)(["dog runs"])[0]
    assert not torch.allclose(a, other)


def test_tiny_encoder_has_no_state_dict_payload() -> None:
    assert TinyTextEncoder(text_len=4, text_dim=8).state_dict() == {}


@pytest.mark.parametrize("bad", ["just a string", [1, 2], None])
def test_tiny_encoder_rejects_bad_prompts(bad: object) -> None:
    with pytest.raises(TypeError, match="prompt"):
        TinyTextEncoder(text_len=4, text_dim=8)(bad)  # type: ignore[arg-type]
