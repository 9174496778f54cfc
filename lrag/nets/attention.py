"""Attention maths of the DiTs: scaled dot-product attention and RoPE over (time, row, col).

The attended sequence and its positions are decided by :class:`lrag.nets.kv_cache.KVCache`
under an :class:`lrag.nets.policy.AttentionPolicy`; this module only computes.

Head dims are split per axis as Wan does (``d - 4(d//6)`` time, ``2(d//6)`` row, ``2(d//6)``
col) and rotated in float64; positions may be fractional (per-frame spatial offsets).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["SDPA_BACKENDS", "SdpaBackend", "apply_rope", "attention", "check_sdpa_backend", "fused_rope",
           "grid_positions", "offset_grid_positions", "rope_freqs", "rope_table", "sdpa_backend"]

SdpaBackend = Literal["auto", "flash", "cudnn", "efficient", "math"]
#: ``attention_backend`` names: ``auto`` lets SDPA pick per call (flash first on CUDA).
SDPA_BACKENDS: tuple[str, ...] = ("auto", "flash", "cudnn", "efficient", "math")
_SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def check_sdpa_backend(name: str) -> str:
    """Return ``name`` if it is one of :data:`SDPA_BACKENDS`, else raise a one-line ``ValueError``."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"attention_backend={name!r}: choose one of {', '.join(SDPA_BACKENDS)}.")
    return name


def sdpa_backend(name: str) -> contextlib.AbstractContextManager:
    """Context in which every SDPA call uses only backend ``name`` (``auto``: SDPA's own choice).

    A backend that cannot run a call (wrong device, dtype or shape) makes that call raise
    instead of silently falling back, so a measured backend is the one that ran.
    On Hopper, ``cudnn`` is often faster than ``flash`` (FlashAttention-2) for long keys.
    """
    if check_sdpa_backend(name) == "auto":
        return contextlib.nullcontext()
    return _only_backend(name)


@contextlib.contextmanager
def _only_backend(name: str):
    """``sdpa_kernel([name])`` whose "no available kernel" failure says which knob to change."""
    try:
        with sdpa_kernel([_SDPA[name]]):
            yield
    except RuntimeError as err:
        if not any(m in str(err) for m in ("No available kernel", "No viable backend")):
            raise
        raise ValueError(
            f"attention_backend={name!r} cannot run this attention call on this device or dtype "
            f"(torch: {str(err).splitlines()[0]}); set the backbone's attention_backend to 'auto', e.g. "
            "--model.init_args.backbone.init_args.attention_backend auto") from err


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain full attention on ``[B, L, heads, head_dim]`` tensors (no mask, default scale)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims per RoPE axis (time, row, col): Wan's ``d - 4(d//6), 2(d//6), 2(d//6)``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    return head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)


def _axis_angles(pos: Tensor, dim: int, theta: float) -> Tensor:
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device).div(dim))
    if pos.ndim == 1:
        return torch.outer(pos.to(torch.float64), inv)
    return pos.to(torch.float64).unsqueeze(-1) * inv


def rope_freqs(positions: Tensor, head_dim: int, theta: float = 10000.0) -> Tensor:
    """Complex rotation factors for explicit per-token positions.

    Args:
        positions: ``[L, 3]`` (time, row, col) position of each token, or ``[B, L, 3]`` for
            per-sample positions; fractional positions are fine (they are angles).
        head_dim: Attention head dimension (even).
        theta: RoPE base.

    Returns:
        ``[L, 1, head_dim // 2]`` (or ``[B, L, 1, head_dim // 2]``) complex128, columns
        ordered time | row | col.
    """
    dims = _axis_dims(head_dim)
    angles = torch.cat([_axis_angles(positions[..., i], d, theta) for i, d in enumerate(dims)], dim=-1)
    return torch.polar(torch.ones_like(angles), angles).unsqueeze(-2)


def rope_table(max_positions: int, head_dim: int, theta: float = 10000.0) -> Tensor:
    """Reference-style table ``[max_positions, head_dim // 2]`` (the golden ``freqs``)."""
    pos = torch.arange(max_positions)
    dims = _axis_dims(head_dim)
    angles = torch.cat([_axis_angles(pos, d, theta) for d in dims], dim=1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate adjacent real pairs ``(2i, 2i+1)`` of ``x`` in float64.

    Args:
        x: ``[B, L, heads, head_dim]``.
        freqs: ``[L, 1, head_dim // 2]`` or ``[B, L, 1, head_dim // 2]`` complex128 from
            :func:`rope_freqs`.
    """
    b, n, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, n, h, d // 2, 2))
    return torch.view_as_real(xc * freqs).flatten(3).type_as(x)


def _rope_real(x: Tensor, cos_sin: Tensor) -> Tensor:
    # The complex product of apply_rope in real arithmetic: Inductor has no complex dtype. Eager,
    # it is slower than the complex kernel (more passes over float64 temporaries), so only the
    # compiled twin uses it; the bits are the same (tests/nets/test_attention.py).
    pairs = x.to(torch.float64).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = cos_sin[..., 0], cos_sin[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


_fused_rope_fn = None


def fused_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """:func:`apply_rope` as one compiled kernel (bf16 in, float64 maths, bf16 out).

    Eager RoPE materialises x in float64 and a complex product: about 40 bytes of memory
    traffic per element against 4 here (bf16 in and out). Shapes are dynamic (the roped length
    changes between queries, retrieved frames and re-roped runs).
    """
    global _fused_rope_fn
    if _fused_rope_fn is None:
        _fused_rope_fn = torch.compile(_rope_real, dynamic=True)
    return _fused_rope_fn(x, torch.view_as_real(freqs))


def grid_positions(frame_positions: Tensor, height: int, width: int) -> Tensor:
    """(time, row, col) positions ``[F*h*w, 3]`` of tokens flattened in (frame, row, col) order."""
    f = frame_positions.numel()
    t = frame_positions.long().view(f, 1, 1).expand(f, height, width)
    r = torch.arange(height, device=t.device).view(1, height, 1).expand(f, height, width)
    c = torch.arange(width, device=t.device).view(1, 1, width).expand(f, height, width)
    return torch.stack([t, r, c], dim=-1).reshape(-1, 3)


def offset_grid_positions(frame_positions: Tensor, offsets: Tensor, height: int, width: int) -> Tensor:
    """Per-sample (time, row, col) positions ``[B, F*h*w, 3]`` (float64) shifted by frame offsets.

    Args:
        frame_positions: ``[F]`` temporal position of each frame.
        offsets: ``[B, F, 2]`` (row, col) offset of each frame in token units: the camera
            position of the frame, so that q.k sees the relative world displacement.
        height: Token rows per frame.
        width: Token columns per frame.
    """
    base = grid_positions(frame_positions, height, width).to(device=offsets.device, dtype=torch.float64)
    shift = repeat(offsets.to(torch.float64), "b f c -> b (f t) c", t=height * width)
    return base.unsqueeze(0) + F.pad(shift, (1, 0))
