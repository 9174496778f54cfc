"""A stand-in ``flash_attn`` module whose kernels are torch's ``scaled_dot_product_attention``.

The reference implementation (LongLive-RAG) calls ``flash_attn.flash_attn_varlen_func`` for every
attention once ``import flash_attn`` succeeds, and its cross-attention has no other path. Our GPU
image has no flash-attn wheel, so :func:`install` puts this module's two entry points under the
name ``flash_attn`` in ``sys.modules`` (and hides ``flash_attn_interface``, the FA3 package, so the
reference takes its FA2 branch). The reference then runs its own wrapper code unchanged and only
the kernel underneath is SDPA, which is the kernel our sampler uses too.

Only what the reference passes is supported: no dropout, no sliding window, no ALiBi, no softcap.
Anything else raises instead of silently computing something different.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MODULE_NAME", "flash_attn_func", "flash_attn_varlen_func", "install", "uninstall"]

MODULE_NAME = "flash_attn"
_FA3_NAME = "flash_attn_interface"
_MARK = "__lrag_sdpa_shim__"


def _check_options(dropout_p: float, window_size: tuple[int, int], extra: dict) -> None:
    if dropout_p:
        raise ValueError(f"flash_attn SDPA shim: dropout_p={dropout_p} is not supported (inference only)")
    if tuple(window_size) != (-1, -1):
        raise ValueError(f"flash_attn SDPA shim: window_size={tuple(window_size)} is not supported")
    used = {k: v for k, v in extra.items() if v not in (None, False, 0, 0.0)}
    if used:
        raise ValueError(f"flash_attn SDPA shim: unsupported options {sorted(used)}")


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float | None, causal: bool) -> Tensor:
    """``[B, L, heads, d]`` in and out, as flash-attn lays tensors out."""
    if causal and q.shape[1] != k.shape[1]:
        # flash-attn aligns the causal mask to the bottom right, SDPA to the top left.
        raise ValueError("flash_attn SDPA shim: causal=True needs equal query and key lengths")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=causal, scale=scale)
    return out.transpose(1, 2)


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, softmax_scale: float | None = None,
                    causal: bool = False, window_size: tuple[int, int] = (-1, -1), alibi_slopes=None,
                    deterministic: bool = False, return_attn_probs: bool = False, **extra) -> Tensor:
    """flash-attn's batched entry point: ``q [B, Lq, H, d]``, ``k, v [B, Lk, H, d]`` -> ``[B, Lq, H, d]``."""
    _check_options(dropout_p, window_size, {"alibi_slopes": alibi_slopes, "return_attn_probs": return_attn_probs,
                                            **extra})
    return _sdpa(q, k, v, softmax_scale, causal)


def flash_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False,
                           window_size: tuple[int, int] = (-1, -1), alibi_slopes=None, deterministic: bool = False,
                           return_attn_probs: bool = False, **extra) -> Tensor:
    """flash-attn's packed entry point: sequences concatenated along dim 0.

    Args:
        q: ``[total_q, H, d]``; k, v: ``[total_k, H, d]``.
        cu_seqlens_q, cu_seqlens_k: ``[B + 1]`` int32 prefix sums of the sequence lengths.
        max_seqlen_q, max_seqlen_k: The longest query / key sequence.

    Returns:
        ``[total_q, H, d]``.
    """
    _check_options(dropout_p, window_size, {"alibi_slopes": alibi_slopes, "return_attn_probs": return_attn_probs,
                                            **extra})
    batch = cu_seqlens_q.shape[0] - 1
    if cu_seqlens_k.shape[0] - 1 != batch:
        raise ValueError(f"flash_attn SDPA shim: {batch} query but {cu_seqlens_k.shape[0] - 1} key sequences")
    if q.shape[0] == batch * max_seqlen_q and k.shape[0] == batch * max_seqlen_k:
        # Every sequence has the maximum length (the totals say so): one batched call, no host sync.
        out = _sdpa(q.unflatten(0, (batch, max_seqlen_q)), k.unflatten(0, (batch, max_seqlen_k)),
                    v.unflatten(0, (batch, max_seqlen_k)), softmax_scale, causal)
        return out.flatten(0, 1)
    bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = [_sdpa(q[None, bq[i]:bq[i + 1]], k[None, bk[i]:bk[i + 1]], v[None, bk[i]:bk[i + 1]], softmax_scale, causal)[0]
            for i in range(batch)]
    return torch.cat(outs, dim=0)


def install() -> types.ModuleType:
    """Register the shim as ``flash_attn`` (and hide FA3); returns the module.

    Raises if a different ``flash_attn`` is already imported: the comparison must say which
    kernel it ran, so it never mixes the two.
    """
    current = sys.modules.get(MODULE_NAME)
    if current is not None:
        if getattr(current, _MARK, False):
            return current
        raise RuntimeError(f"a real flash_attn ({getattr(current, '__file__', '?')}) is already imported; "
                           "run the comparison in a fresh process")
    module = types.ModuleType(MODULE_NAME, __doc__)
    module.flash_attn_func = flash_attn_func
    module.flash_attn_varlen_func = flash_attn_varlen_func
    module.__version__ = "0.0+sdpa-shim"
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE_NAME, None)  # importlib.util.find_spec reads it
    setattr(module, _MARK, True)
    sys.modules[MODULE_NAME] = module
    sys.modules[_FA3_NAME] = None  # `import flash_attn_interface` now raises ModuleNotFoundError
    return module


def uninstall() -> None:
    """Undo :func:`install` (only what it put there)."""
    if getattr(sys.modules.get(MODULE_NAME), _MARK, False):
        del sys.modules[MODULE_NAME]
    if _FA3_NAME in sys.modules and sys.modules[_FA3_NAME] is None:
        del sys.modules[_FA3_NAME]
