"""A training-free frame descriptor from the generator itself: its self-attention keys.

When the sampler writes a clean block into the KV cache (the context pass), every chosen layer's
self-attention computes un-roped keys (and queries) for each token of each frame. Pooled over
the frame's tokens they describe the frame in the space the backbone itself uses to decide what
to attend to, so they need no embedder and fit a frozen generator as well as a fine-tuned one.

* candidates: a frame's mean key per layer (per head, each head L2-normalised when
  ``per_head``), the layers concatenated;
* query (``key_query``): the newest frame's pooled keys (``"keys"``), or its pooled queries
  (``"queries"``, so ``cos(q̄, k̄)`` is how strongly, on average and without positions, the newest
  frame's tokens would attend to the candidate). The next block's own queries exist only once it
  is being denoised, after retrieval has to be decided; the newest frame's are the closest
  available stand-in.

:class:`GeneratorKeys` captures them with forward hooks on the ``norm_k`` / ``norm_q`` of the
backbone's self-attention modules (a module named ``...self_attn``), only inside
:meth:`GeneratorKeys.capture`; the network itself is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from lrag.memory.retrieval import cosine_topk, mmr_topk, unit_concat

__all__ = ["KEY_QUERIES", "GeneratorKeys", "fused_topk", "pool_tokens", "self_attention_modules", "shortlist_rerank"]

KEY_QUERIES = ("keys", "queries")


def pool_tokens(x: Tensor, frames: int, heads: int, per_head: bool = True) -> Tensor:
    """Mean over each frame's tokens of a ``[B, frames * tokens, heads * head_dim]`` projection.

    Args:
        x: Keys or queries of one layer, tokens in (frame, row, col) order.
        frames: Frames in ``x``.
        heads: Attention heads (the last axis splits into ``heads x head_dim``).
        per_head: L2-normalise each head's mean, so every head weighs the same in the cosine
            (the attention logits are per head); else normalise the whole vector.

    Returns:
        ``[B, frames, heads * head_dim]``, unit L2 norm per frame.
    """
    if x.ndim != 3 or x.shape[1] % frames or x.shape[2] % heads:
        raise ValueError(f"pool_tokens: need [B, frames*tokens, heads*head_dim] with frames={frames}, "
                         f"heads={heads}; got {tuple(x.shape)}")
    mean = reduce(x.float(), "b (f t) (h d) -> b f h d", "mean", f=frames, h=heads)
    if per_head:
        return F.normalize(mean, dim=-1).flatten(2) / heads**0.5
    return F.normalize(mean.flatten(2), dim=-1)


def self_attention_modules(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's self-attention modules in layer order (modules named ``*self_attn``).

    Works through wrappers (``CameraConditioned``, LoRA) since it matches names, not owners.
    """
    found = [m for name, m in backbone.named_modules() if name.split(".")[-1] == "self_attn"]
    return [m for m in found if hasattr(m, "norm_k") and hasattr(m, "norm_q") and hasattr(m, "num_heads")]


class GeneratorKeys:
    """Captures and pools a backbone's self-attention keys (and queries) per frame.

    Args:
        layers: Layer indices to read (negative counts from the last layer); descriptors of
            several layers are concatenated, each with unit norm.
        query: ``"keys"`` or ``"queries"`` (see the module docstring).
        per_head: Normalise each head before concatenating (see :func:`pool_tokens`).
    """

    def __init__(self, layers: Sequence[int] = (-1,), query: str = "keys", per_head: bool = True) -> None:
        if not layers:
            raise ValueError("RetrievalMemory.key_layers: give at least one layer index, e.g. [-1].")
        if query not in KEY_QUERIES:
            raise ValueError(f"RetrievalMemory.key_query must be one of {KEY_QUERIES}, got {query!r}")
        self.layers, self.query, self.per_head = [int(i) for i in layers], query, per_head
        self._keys: list[Tensor] = []
        self._queries: list[Tensor] = []

    def _modules(self, backbone: nn.Module) -> list[nn.Module]:
        mods = self_attention_modules(backbone)
        if not mods:
            raise ValueError(f"descriptor gen_keys: {type(backbone).__name__} has no self-attention modules "
                             "named 'self_attn' with norm_k/norm_q; use descriptor avg_pool or ae.")
        bad = [i for i in self.layers if not -len(mods) <= i < len(mods)]
        if bad:
            raise ValueError(f"RetrievalMemory.key_layers {bad}: the backbone has {len(mods)} layers "
                             f"(valid: {-len(mods)} .. {len(mods) - 1}).")
        return [mods[i] for i in self.layers]

    @contextmanager
    def capture(self, backbone: nn.Module) -> Iterator[None]:
        """Record the chosen layers' keys (and queries) of every forward inside the block.

        Only the last forward per layer is kept: the sampler wraps exactly one context pass.
        """
        mods = self._modules(backbone)
        keys: list[Tensor | None] = [None] * len(mods)
        queries: list[Tensor | None] = [None] * len(mods)

        def hook(store: list, i: int):
            def fn(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
                store[i] = out.detach()
            return fn

        handles = []
        for i, m in enumerate(mods):
            handles.append(m.norm_k.register_forward_hook(hook(keys, i)))
            if self.query == "queries":
                handles.append(m.norm_q.register_forward_hook(hook(queries, i)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if any(k is None for k in keys):
            raise RuntimeError("descriptor gen_keys: the captured forward did not run the chosen layers")
        heads = [m.num_heads for m in mods]
        self._keys, self._queries = list(keys), list(queries) if self.query == "queries" else []
        self._heads = heads

    def take(self, frames: int) -> tuple[Tensor, Tensor]:
        """Pooled descriptors of the last capture: ``(candidate [B, f, D], query [B, f, D])``.

        With ``query: keys`` both are the same tensor. Raises if nothing was captured.
        """
        if not self._keys:
            raise RuntimeError("descriptor gen_keys: no keys captured; the sampler captures them in the "
                               "context pass (ARSampler), describe() cannot compute them from latents.")
        k = self._pool(self._keys, frames)
        q = self._pool(self._queries, frames) if self._queries else k
        self._keys, self._queries = [], []
        return k, q

    def _pool(self, per_layer: list[Tensor], frames: int) -> Tensor:
        pooled = [pool_tokens(x, frames, h, self.per_head) for x, h in zip(per_layer, self._heads)]
        return torch.cat(pooled, dim=-1) / len(pooled) ** 0.5  # unit norm overall, layers weigh alike


def shortlist_rerank(query: Tensor, candidates: Tensor, key_query: Tensor, key_candidates: Tensor, k: int,
                     shortlist: int, diversity: float = 0.0) -> tuple[Tensor, Tensor]:
    """Two-stage search: the ``shortlist`` nearest by the first descriptor, re-ranked by keys.

    Args:
        query: ``[B, D]`` first-stage query; candidates: ``[B, N, D]``.
        key_query: ``[B, D']`` generator-key query; key_candidates: ``[B, N, D']`` (same order).
        k: Frames to keep (``k <= min(shortlist, N)``).
        shortlist: First-stage size M (clipped to N).
        diversity: MMR weight of the second stage.

    Returns:
        ``(scores [B, k], indices [B, k])``: key cosines and indices into ``candidates``.
    """
    _, short = cosine_topk(query, candidates, min(shortlist, candidates.shape[1]))  # (B, M)
    keys = key_candidates.gather(1, short[..., None].expand(-1, -1, key_candidates.shape[-1]))
    scores, pick = mmr_topk(key_query, keys, k, diversity)
    return scores, short.gather(1, pick)


def fused_topk(query: Tensor, candidates: Tensor, key_query: Tensor, key_candidates: Tensor, k: int,
               weight: float, diversity: float = 0.0) -> tuple[Tensor, Tensor]:
    """Top-``k`` by ``(1 - weight) * cos(descriptor) + weight * cos(generator keys)``.

    Both sides are joined by :func:`~lrag.memory.retrieval.unit_concat`, so the cosine of the joined
    vectors *is* the fused score (and :func:`mmr_topk`'s diversity term works on the same fused
    similarity).

    Args:
        query: ``[B, D]``; candidates: ``[B, N, D]`` (the first descriptor).
        key_query: ``[B, D']``; key_candidates: ``[B, N, D']`` (same order).
        k: Frames to keep.
        weight: Share of the generator keys' cosine, in ``[0, 1]``.
        diversity: MMR weight.

    Returns:
        ``(scores [B, k], indices [B, k])``: fused cosines and indices into ``candidates``.
    """
    weights = [1.0 - weight, weight]
    return mmr_topk(unit_concat([query, key_query], weights), unit_concat([candidates, key_candidates], weights),
                    k, diversity)
