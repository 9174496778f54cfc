"""Text conditioning: turn prompts into the cross-attention context ``[B, L, text_dim]``.

Two encoders share one call signature, ``encoder(prompts) -> Tensor [B, text_len, text_dim]``:

* :class:`TinyTextEncoder` has no trained weights. It hashes words into a seeded table so that
  the tiny CPU backbone gets a prompt-dependent but reproducible context with nothing to load.
* :class:`UMT5TextEncoder` is Wan2.1's umT5-XXL encoder through ``transformers``, read from a
  local folder in the Diffusers layout (nothing is downloaded at run time).

Both zero the context past the end of the prompt, as Wan does, so the backbone sees exactly the
same padding convention from either encoder.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: How to fetch the Wan weights; quoted in every "weights missing" error.
WAN_DOWNLOAD_HINT = (
    "huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir <folder>  "
    "(run it yourself; lrag never downloads weights)"
)


def _check_prompts(prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(
            f"prompts must be a list of strings, got {type(prompts).__name__}; "
            "wrap a single prompt as [prompt]"
        )
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts[{bad[0]}] is {type(prompts[bad[0]]).__name__}, expected str")
    return list(prompts)


def _stable_bucket(word: str, num_buckets: int) -> int:
    # Python's hash() is salted per process; a digest keeps prompts reproducible across runs.
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_buckets


class TinyTextEncoder(nn.Module):
    """Deterministic, weight-free text encoder for the tiny backbone.

    A prompt is split on whitespace (lower-cased); each word is hashed (BLAKE2b of its UTF-8
    bytes) into one of ``num_buckets`` rows of a fixed table drawn from ``N(0, 1)`` with a
    generator seeded by ``seed``. A second seeded table adds a per-position vector so that word
    order matters. Positions past the last word (or past ``text_len``) are zero, like Wan's
    padded umT5 context. The same prompt always yields the same context, on any machine.

    Args:
        text_len: Context length L (tokens); longer prompts are truncated to L words.
        text_dim: Context width D; must equal the backbone's ``text_dim``.
        seed: Seed of the two tables; different seeds give unrelated encoders.
        num_buckets: Rows of the word table; collisions are harmless, just less distinct.
    """

    def __init__(self, text_len: int, text_dim: int, seed: int = 0, num_buckets: int = 4096) -> None:
        super().__init__()
        if text_len < 1 or text_dim < 1 or num_buckets < 1:
            raise ValueError(
                f"text_len, text_dim and num_buckets must be >= 1, got {text_len}, {text_dim}, "
                f"{num_buckets}"
            )
        self.text_len = text_len
        self.text_dim = text_dim
        self.num_buckets = num_buckets
        gen = torch.Generator().manual_seed(seed)
        words = torch.randn(num_buckets, text_dim, generator=gen)
        positions = 0.1 * torch.randn(text_len, text_dim, generator=gen)
        # Not persistent: the tables are a function of the seed, never a checkpoint payload.
        self.register_buffer("word_table", words, persistent=False)
        self.register_buffer("position_table", positions, persistent=False)

    def token_ids(self, prompt: str) -> list[int]:
        """Word-bucket ids of ``prompt``, truncated to ``text_len``."""
        return [_stable_bucket(w, self.num_buckets) for w in prompt.lower().split()][: self.text_len]

    def forward(self, prompts: list[str]) -> Tensor:
        """Encode prompts.

        Args:
            prompts: B prompt strings.

        Returns:
            Context ``[B, text_len, text_dim]`` (float32, on the tables' device); rows past
            each prompt's last word are zero.
        """
        prompts = _check_prompts(prompts)
        out = torch.zeros(len(prompts), self.text_len, self.text_dim, device=self.word_table.device)
        for b, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            if ids:
                idx = torch.tensor(ids, device=self.word_table.device)
                out[b, : len(ids)] = self.word_table[idx] + self.position_table[: len(ids)]
        return out


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str, field: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; unknown names raise naming ``field``."""
    if name not in DTYPES:
        raise ValueError(f"{field}: unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # transformers renamed `torch_dtype` to `dtype` in 4.56; the old name warns in 5.x.
    import transformers
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


class UMT5TextEncoder(nn.Module):
    """Wan2.1's umT5 text encoder (``transformers.UMT5EncoderModel`` + its tokenizer).

    Loaded from a local Diffusers-layout folder (``text_encoder/`` and ``tokenizer/``, e.g. a
    download of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) with ``local_files_only=True``: nothing is
    ever downloaded. Prompts are whitespace-normalised and tokenized to ``text_len`` tokens
    (padded, truncated); as in Wan, the hidden states of padded positions are set to zero, so a
    prompt's context does not depend on how much padding follows it.

    Args:
        folder: Root of the Diffusers-layout checkout (holding ``text_encoder/``, ``tokenizer/``).
        text_len: Context length (Wan2.1: 512).
        dtype: Weight dtype: ``"bfloat16"`` (as Wan, ~11 GB for umT5-XXL), ``"float32"`` or
            ``"float16"``.
    """

    def __init__(self, folder: str, text_len: int = 512, dtype: str = "bfloat16") -> None:
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(folder)
        require_local_files(root / "text_encoder", ["config.json"], weights=True)
        require_local_files(root / "tokenizer", ["tokenizer_config.json"], weights=False)
        torch_dtype = parse_dtype(dtype, "UMT5TextEncoder.dtype")
        model = UMT5EncoderModel.from_pretrained(
            root / "text_encoder", local_files_only=True, **_dtype_kwarg(torch_dtype)
        )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        self.text_len = text_len
        log.info("loaded umT5 text encoder from %s (%s)", root, dtype)

    @property
    def text_dim(self) -> int:
        """Width of the context (Wan2.1: 4096)."""
        return int(self.model.config.d_model)

    @classmethod
    def from_pretrained(cls, folder: str | Path, text_len: int = 512, dtype: str = "bfloat16") -> UMT5TextEncoder:
        """Same as the constructor (the name used across the library for local weights).

        Raises:
            FileNotFoundError: naming the missing sub-folder/files and how to get them.
        """
        return cls(str(folder), text_len=text_len, dtype=dtype)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        """Encode prompts to ``[B, text_len, text_dim]``; padded positions are zero."""
        prompts = _check_prompts(prompts)
        device = next(self.model.parameters()).device
        tok = self.tokenizer(
            [" ".join(p.split()) for p in prompts],  # Wan collapses whitespace
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def require_local_files(folder: Path, names: list[str], weights: bool) -> None:
    """Raise FileNotFoundError, with the download hint, unless ``folder`` is complete.

    Args:
        folder: Sub-folder of a Diffusers-layout checkout (``text_encoder``, ``tokenizer``, ``vae``).
        names: Files that must exist in it.
        weights: Also require at least one ``*.safetensors`` or ``*.bin`` file.
    """
    missing = [n for n in names if not (folder / n).is_file()]
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if folder.is_dir() and not missing and (has_weights or not weights):
        return
    expected = ", ".join(names + (["*.safetensors (weights)"] if weights else [])) or "files"
    raise FileNotFoundError(
        f"{folder} is missing or incomplete (expected {expected}). Get the Diffusers-layout "
        f"weights with: {WAN_DOWNLOAD_HINT}, then pass the folder's root."
    )
