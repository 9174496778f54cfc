"""RetrievalMemory: frame descriptors, the evicted-frame pool and where its KV lives.

The KV cache hands every evicted frame's un-roped K/V to :meth:`RetrievalMemory.store`;
at the start of a block :meth:`retrieve` picks the top-K older frames by cosine
similarity of descriptors, and :meth:`gather` moves their K/V to the compute device
once for the whole block (all layers, all denoising calls).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from lrag.memory.retrieval import mmr_topk, num_eligible
from lrag.nets.kv_cache import EvictedKV, MemoryKV

__all__ = ["DESCRIPTORS", "KV_TIERS", "RetrievalMemory", "RetrievalRecord"]

log = logging.getLogger(__name__)

DESCRIPTORS = ("avg_pool", "ae")
KV_TIERS = ("device", "host", "recompute")

# (global frame indices) -> (per-layer K, per-layer V), each [B, n, tokens, heads, head_dim].
RecomputeFn = Callable[[list[int]], tuple[list[Tensor], list[Tensor]]]


@dataclass
class RetrievalRecord:
    """One block's retrieval.

    Attributes:
        query_frame: First frame of the block (the query descriptor is the frame before it).
        frames: ``[B, k]`` global frame indices, most similar first.
        scores: ``[B, k]`` cosine similarities.
    """

    query_frame: int
    frames: Tensor
    scores: Tensor


@dataclass
class _Stored:
    """One evicted frame: K/V ``[layers, B, tokens, heads, head_dim]`` or None (recompute tier).

    ``offset`` is its spatial RoPE offset ``[B, 2]`` when the KV cache uses offsets.
    """

    k: Tensor | None
    v: Tensor | None
    offset: Tensor | None = None
    copied: "torch.cuda.Event | None" = None  # host tier: D2H copy completion


def _to_host(t: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """Copy ``t`` to host memory; returns the copy and, for CUDA sources, its completion event."""
    if not t.is_cuda:
        return t.clone(), None
    # Pinned so the copy runs asynchronously (off the compute stream's critical path) and the
    # later host->device copy of a retrieved frame can be asynchronous too. The event guards
    # every later read: a pinned buffer must not be read before the D2H copy has landed.
    dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    dst.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return dst, done


class RetrievalMemory:
    """Top-K retrieval of evicted frames by descriptor similarity.

    Args:
        memory_size: K, frames retrieved per block; 0 is the native sliding-window
            baseline through the same code (evicted frames are dropped).
        recent_exclude: R, the newest evicted frames that are never candidates.
        descriptor: ``"avg_pool"`` (spatial mean of the latent frame, ``[C]``) or
            ``"ae"`` (L2-normalised embedding of a frame embedder).
        embedder_path: Embedder checkpoint for ``descriptor: ae`` (reference ``.pt``,
            our ``.safetensors`` or a Lightning ``.ckpt``).
        kv_tier: Where evicted frames' K/V live: ``"device"`` (the compute device),
            ``"host"`` (CPU memory, pinned when CUDA is available) or ``"recompute"``
            (nothing stored; K/V are rebuilt from the clean latent by a hook that the
            sampler installs - an approximation, see :meth:`set_recompute`).
        diversity: Maximal-marginal-relevance weight of the top-K (``mmr_topk``): 0 = plain
            cosine top-K (the reference); higher values skip near-duplicates of a pick.
    """

    def __init__(
        self,
        memory_size: int = 6,
        recent_exclude: int = 5,
        descriptor: str = "avg_pool",
        embedder_path: str | None = None,
        kv_tier: str = "host",
        diversity: float = 0.0,
    ) -> None:
        if memory_size < 0 or recent_exclude < 0:
            raise ValueError(
                f"RetrievalMemory: memory_size ({memory_size}) and recent_exclude ({recent_exclude}) must be >= 0"
            )
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"RetrievalMemory.descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
        if kv_tier not in KV_TIERS:
            raise ValueError(f"RetrievalMemory.kv_tier must be one of {KV_TIERS}, got {kv_tier!r}")
        if descriptor == "ae" and embedder_path is None:
            log.info("descriptor 'ae' without embedder_path: call set_embedder() before sampling")
        self.memory_size = memory_size
        self.recent_exclude = recent_exclude
        self.descriptor = descriptor
        self.embedder_path = embedder_path
        self.kv_tier = kv_tier
        if not 0.0 <= diversity <= 1.0:
            raise ValueError(f"RetrievalMemory.diversity must be in [0, 1] (0 = plain top-K), got {diversity}")
        self.diversity = diversity
        self.embedder: nn.Module | None = None
        self._recompute: RecomputeFn | None = None
        self.first_candidate = 0
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all frames (start of a new video)."""
        self._descriptors: list[Tensor] = []  # per frame [B, D]
        self._pool_frames: list[int] = []  # global frame index per pool entry, chronological
        self._pool: list[_Stored] = []
        self.records: list[RetrievalRecord] = []

    def set_embedder(self, embedder: nn.Module) -> None:
        """Use an in-memory embedder (must have ``encode([N,C,H,W]) -> [N,D]``)."""
        self.embedder = embedder.eval()

    def exclude_before(self, frame: int) -> None:
        """Never keep frames with a global index below ``frame`` as candidates.

        A blank prefix (``sink_mode: blank``) shows no place: cosine retrieval of those zero
        frames (or the oracle's oldest-first fallback) would spend memory slots on nothing.
        Kept across :meth:`reset`, since it describes the sampler's setup, not one video.
        """
        if frame < 0:
            raise ValueError(f"RetrievalMemory.exclude_before: frame must be >= 0, got {frame}")
        self.first_candidate = frame

    def set_recompute(self, fn: RecomputeFn | None) -> None:
        """Install the K/V rebuild hook of the ``recompute`` tier (the sampler does this)."""
        self._recompute = fn

    @property
    def pool_size(self) -> int:
        return len(self._pool)

    # -- descriptors -------------------------------------------------------------------
    def _load_embedder(self) -> nn.Module:
        if self.embedder is None:
            if self.embedder_path is None:
                raise ValueError("RetrievalMemory(descriptor='ae') needs embedder_path (or set_embedder())")
            from lrag.checkpoints.embedder import load_embedder

            self.embedder = load_embedder(self.embedder_path).eval()
        return self.embedder

    @torch.no_grad()
    def describe(self, frames: Tensor) -> Tensor:
        """Compute and remember one descriptor per frame.

        Args:
            frames: Clean latents ``[B, f, C, H, W]`` of consecutive new frames.

        Returns:
            ``[B, f, D]`` descriptors.
        """
        out = []
        for j in range(frames.shape[1]):  # per frame, as the reference does (batch = B)
            frame = frames[:, j]
            if self.descriptor == "ae":
                emb = self._load_embedder()
                p = next(emb.parameters())
                desc = emb.encode(frame.to(device=p.device, dtype=p.dtype)).to(frame.device)
            else:
                desc = frame.mean(dim=(-2, -1))
            self._descriptors.append(desc)
            out.append(desc)
        return torch.stack(out, dim=1)

    def descriptors(self) -> Tensor:
        """All descriptors so far, ``[B, frames, D]``."""
        return torch.stack(self._descriptors, dim=1)

    # -- the pool ----------------------------------------------------------------------
    def store(self, evicted: EvictedKV) -> None:
        """KV-cache eviction callback: keep the frames (or nothing, for native)."""
        if self.memory_size == 0:
            return
        k = torch.stack(evicted.k, dim=0)  # (layers, B, n, tokens, heads, head_dim)
        v = torch.stack(evicted.v, dim=0)
        for j, frame in enumerate(evicted.frames):
            if frame < self.first_candidate:
                continue
            self._pool_frames.append(frame)
            stored = self._place(k[:, :, j], v[:, :, j])
            if evicted.offsets is not None:
                stored.offset = evicted.offsets[:, j].clone()
            self._pool.append(stored)

    def _place(self, k: Tensor, v: Tensor) -> _Stored:
        if self.kv_tier == "recompute":
            return _Stored(None, None)
        if self.kv_tier == "device":
            return _Stored(k.clone(), v.clone())
        k_host, _ = _to_host(k)
        v_host, done = _to_host(v)  # same stream: v's event also covers k's copy
        return _Stored(k_host, v_host, copied=done)

    def retrieve(self, query_frame: int) -> RetrievalRecord | None:
        """Top-K pool frames for the block starting at ``query_frame`` (None if none)."""
        if self.memory_size == 0:
            return None
        eligible = num_eligible(len(self._pool), self.recent_exclude)
        if eligible == 0 or not self._descriptors:
            return None
        query = self._descriptors[-1]
        candidates = torch.stack([self._descriptors[f] for f in self._pool_frames[:eligible]], dim=1)
        scores, idx = mmr_topk(query, candidates, min(self.memory_size, eligible), self.diversity)
        frames = torch.tensor(self._pool_frames, device=idx.device)[idx]
        record = RetrievalRecord(query_frame, frames, scores)
        self.records.append(record)
        log.debug("retrieval q=%d frames=%s scores=%s", query_frame, frames.tolist(), scores.tolist())
        return record

    def gather(self, record: RetrievalRecord | None, device: torch.device | str) -> MemoryKV | None:
        """The retrieved frames' K/V on ``device``: one copy per block, shared by every call.

        Only the selected frames are copied (K per batch element), never the whole pool.
        """
        if record is None:
            return None
        if self.kv_tier == "recompute":
            return self._gather_recomputed(record, device)
        b, k_sel = record.frames.shape
        slots = self._pool_slots(record.frames)
        # Only the K retrieved frames move (never the whole pool): one copy per block, per
        # frame, straight from where the frame is stored to the compute device.
        ks, vs = [], []
        for bi, row in enumerate(slots.tolist()):
            for slot in row:
                stored = self._pool[slot]
                if stored.copied is not None:
                    stored.copied.synchronize()
                ks.append(stored.k[:, bi].to(device, non_blocking=True))  # (layers, tokens, h, d)
                vs.append(stored.v[:, bi].to(device, non_blocking=True))
        k = rearrange(torch.stack(ks, dim=1), "l (b k) t h d -> l b (k t) h d", b=b)
        v = rearrange(torch.stack(vs, dim=1), "l (b k) t h d -> l b (k t) h d", b=b)
        return MemoryKV(list(k.unbind(0)), list(v.unbind(0)), k_sel, self._gather_offsets(slots, device))

    def _pool_slots(self, frames: Tensor) -> Tensor:
        """Pool index of each retrieved global frame index (``frames [B, k]``)."""
        pool_frames = torch.tensor(self._pool_frames, dtype=torch.long, device=frames.device)
        lookup = torch.full((int(max(self._pool_frames)) + 1,), -1, dtype=torch.long, device=frames.device)
        lookup[pool_frames] = torch.arange(len(self._pool_frames), device=frames.device)
        return lookup[frames.long()]

    def _gather_offsets(self, slots: Tensor, device: torch.device | str) -> Tensor | None:
        if not self._pool or self._pool[0].offset is None:
            return None
        offsets = torch.stack([p.offset for p in self._pool], dim=1)  # (B, pool, 2)
        rows = torch.arange(slots.shape[0], device=offsets.device)[:, None]
        return offsets[rows, slots.to(offsets.device)].to(device)

    def _gather_recomputed(self, record: RetrievalRecord, device: torch.device | str) -> MemoryKV:
        if self._recompute is None:
            raise RuntimeError("kv_tier 'recompute' needs a hook: the sampler installs it via set_recompute()")
        b, k_sel = record.frames.shape
        ks, vs = [], []
        for bi in range(b):
            k_l, v_l = self._recompute([int(f) for f in record.frames[bi]])
            ks.append(torch.stack([k[bi] for k in k_l]))  # (layers, k, tokens, h, d)
            vs.append(torch.stack([v[bi] for v in v_l]))
        k = rearrange(torch.stack(ks, dim=1), "l b k t h d -> l b (k t) h d").to(device)
        v = rearrange(torch.stack(vs, dim=1), "l b k t h d -> l b (k t) h d").to(device)
        offsets = self._gather_offsets(self._pool_slots(record.frames), device)
        return MemoryKV(list(k.unbind(0)), list(v.unbind(0)), k_sel, offsets)

    def stored_bytes(self) -> int:
        """Bytes of K/V held by the pool (0 for the recompute tier)."""
        return sum(s.k.numel() * s.k.element_size() * 2 for s in self._pool if s.k is not None)
