"""Tests for lrag.nets.conditioning (tiny hashing encoder, umT5 through transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrag.nets.conditioning import TinyTextEncoder, UMT5TextEncoder


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


def _save_tiny_umt5(root: Path) -> None:
    """A randomly initialised tiny umT5 + word-level tokenizer in the Diffusers layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )
    UMT5EncoderModel(config).eval().save_pretrained(root / "text_encoder")


WORDS = ["a", "red", "ball", "rolls", "over", "the", "green", "hill"]


def test_umt5_from_pretrained_matches_transformers_and_zeroes_padding(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, UMT5EncoderModel

    _save_tiny_umt5(tmp_path)
    enc = UMT5TextEncoder.from_pretrained(tmp_path, text_len=10, dtype="float32")
    assert enc.text_dim == 16
    prompts = ["a red ball", "the  green hill rolls over a ball"]
    out = enc(prompts)
    assert out.shape == (2, 10, 16)
    # "a red ball" + </s> = 4 real tokens; the rest must be exactly zero.
    assert out[0, :4].abs().sum(-1).gt(0).all() and out[0, 4:].abs().sum() == 0
    assert out[1, :8].abs().sum(-1).gt(0).all() and out[1, 8:].abs().sum() == 0
    # Same numbers as running transformers directly on the unpadded prompt.
    model = UMT5EncoderModel.from_pretrained(tmp_path / "text_encoder").eval()
    ids = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")(["a red ball"], return_tensors="pt").input_ids
    with torch.no_grad():
        direct = model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(out[0, :4], direct, rtol=1e-5, atol=1e-5)


def test_umt5_missing_weights_error_says_what_and_how(tmp_path: Path) -> None:
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"text_encoder.*safetensors.*huggingface-cli download"):
        UMT5TextEncoder.from_pretrained(tmp_path)


def test_umt5_bf16_and_bad_dtype(tmp_path: Path) -> None:
    _save_tiny_umt5(tmp_path)
    enc = UMT5TextEncoder(str(tmp_path), text_len=6)
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    assert enc(["a ball"]).shape == (1, 6, 16)
    with pytest.raises(ValueError, match=r"UMT5TextEncoder\.dtype.*float64"):
        UMT5TextEncoder(str(tmp_path), dtype="float64")
