"""Evicted frames' K/V off the GPU: a preallocated host ring and a prefetching GPU frame cache.

The ``host`` and ``int8`` tiers of :class:`~lrag.memory.bank.RetrievalMemory` keep every
evicted frame in :class:`HostRing` (pinned when CUDA is used, registered with
``cudaHostRegister`` so it is not rounded up to a power of two like ``pin_memory=True``
blocks are) and move only retrieved frames back, through :class:`OffloadedKV`:

* the ring is one reservation of whole frames (``reserve``) that grows, if ever, in chunks of
  ``chunk_frames`` frames; growth stalls the loop (page locking is slow), so reserve up front;
* the retrieved frames are written into one of two GPU buffers ``[layers, B, K, tokens, heads,
  head_dim]`` (double buffered: the other one may still be read by the running block); a frame
  retrieved by the previous block is copied GPU to GPU, only new ones cross PCIe;
* every copy runs on a side CUDA stream; the compute stream waits on an event, never the host.

``int8`` stores values as int8 with one float32 scale per (layer, token) and dequantises on
the GPU: half the host memory, max relative error per token <= 1/254 of its largest entry.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

__all__ = [
    "HostRing", "KVStoreError", "OffloadedKV", "PlannedRetrieval", "dequantize_int8", "host_copy", "quantize_int8",
]

log = logging.getLogger(__name__)


class KVStoreError(RuntimeError):
    """The host ring cannot take a frame (budget full, pinning or a copy failed)."""


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 with one scale per token: ``x [..., heads, head_dim]`` -> ``(q, scale [...])``."""
    flat = x.float().flatten(-2)
    scale = flat.abs().amax(dim=-1).clamp_min(1e-12) / 127.0
    q = torch.round(flat / scale[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.view(x.shape), scale


def dequantize_int8(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`quantize_int8` (up to rounding), in ``dtype``."""
    return (q.float() * scale[..., None, None]).to(dtype)


def _can_register() -> bool:
    return hasattr(torch.cuda.cudart(), "cudaHostRegister")


def _pin(t: Tensor) -> None:
    """Page-lock ``t``'s memory in place (exact size: no power-of-two rounding)."""
    err = int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0))
    if err != 0:
        raise KVStoreError(f"cudaHostRegister of {t.numel() * t.element_size() / 2**30:.1f} GiB failed "
                           f"(cudaError {err}); lower RetrievalMemory.host_budget_gib or use kv_tier 'recompute'")


@dataclass
class _Chunk:
    """``rows`` frames of storage: K/V ``[rows, B, layers, tokens, heads, head_dim]`` (+ int8 scales)."""

    k: Tensor
    v: Tensor
    k_scale: Tensor | None
    v_scale: Tensor | None
    pinned: bool

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None]

    def release(self) -> None:
        if self.pinned:
            for t in self.tensors():
                torch.cuda.cudart().cudaHostUnregister(t.data_ptr())
            self.pinned = False

    def __del__(self) -> None:  # freed memory must not stay registered (a later register would fail)
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may be gone already
            pass


class HostRing:
    """Host storage for evicted frames, reserved in whole frames.

    Args:
        shape: One frame's K (or V): ``(B, layers, tokens, heads, head_dim)``.
        dtype: dtype of exact K/V (ignored for values when ``quantized``).
        quantized: int8 values with float32 per-token scales.
        pin: Page-lock the storage (for asynchronous copies to and from CUDA).
        chunk_frames: Frames added when an append finds the ring full.
        budget_bytes: Most bytes the ring may reserve (None: no limit).
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, quantized: bool, pin: bool,
                 chunk_frames: int = 16, budget_bytes: int | None = None) -> None:
        if chunk_frames < 1:
            raise ValueError(f"RetrievalMemory.host_chunk_frames must be >= 1, got {chunk_frames}")
        self.shape, self.dtype, self.quantized, self.pin = tuple(shape), dtype, quantized, pin
        self.chunk_frames, self.budget_bytes = chunk_frames, budget_bytes
        self.chunks: list[_Chunk] = []
        self.size = 0

    @property
    def frame_bytes(self) -> int:
        """Bytes one frame takes (K and V, scales included)."""
        n = 1
        for s in self.shape:
            n *= s
        if self.quantized:
            return 2 * (n + 4 * n // (self.shape[-1] * self.shape[-2]))
        return 2 * n * torch.finfo(self.dtype).bits // 8

    @property
    def capacity(self) -> int:
        return sum(c.k.shape[0] for c in self.chunks)

    @property
    def reserved_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for c in self.chunks for t in c.tensors())

    def reserve(self, frames: int) -> None:
        """Make room for ``frames`` frames in total (one allocation for the missing ones)."""
        missing = frames - self.capacity
        if missing <= 0:
            return
        need = self.reserved_bytes + missing * self.frame_bytes
        if self.budget_bytes is not None and need > self.budget_bytes:
            raise KVStoreError(
                f"host KV ring: {frames} frames need {need / 2**30:.2f} GiB, more than "
                f"RetrievalMemory.host_budget_gib={self.budget_bytes / 2**30:.2f}; raise it, use kv_tier 'int8' "
                f"(half the bytes) or 'recompute' (none)")
        values = torch.int8 if self.quantized else self.dtype
        # Without cudaHostRegister in this torch build, fall back to torch's pinned allocator
        # (it rounds each block up to a power of two: up to 2x the bytes).
        fallback = self.pin and not _can_register()
        if fallback:
            log.warning("torch.cuda.cudart() lacks cudaHostRegister: the host ring uses pin_memory=True blocks")
        try:
            k, v = (torch.empty((missing, *self.shape), dtype=values, pin_memory=fallback) for _ in range(2))
            scales = [torch.empty((missing, *self.shape[:-2]), dtype=torch.float32, pin_memory=fallback)
                      for _ in range(2)] if self.quantized else [None, None]
        except RuntimeError as err:  # out of host memory
            raise KVStoreError(f"host KV ring: cannot allocate {missing} frames ({err}); lower "
                               f"RetrievalMemory.host_budget_gib or use kv_tier 'int8' / 'recompute'") from None
        chunk = _Chunk(k, v, *scales, pinned=False)
        if self.pin and not fallback:
            for t in chunk.tensors():
                _pin(t)
                chunk.pinned = True
        self.chunks.append(chunk)
        if len(self.chunks) > 1:
            log.info("host KV ring grew to %d frames (%.2f GiB); reserve() up front avoids the stall",
                     self.capacity, self.reserved_bytes / 2**30)

    def _locate(self, row: int) -> tuple[_Chunk, int]:
        for chunk in self.chunks:
            if row < chunk.k.shape[0]:
                return chunk, row
            row -= chunk.k.shape[0]
        raise IndexError(f"host KV ring: row {row} beyond capacity {self.capacity}")

    def append(self, k: Tensor, v: Tensor) -> int:
        """Copy one frame ``[B, layers, tokens, heads, head_dim]`` in (asynchronously from CUDA)."""
        if self.size == self.capacity:
            self.reserve(self.capacity + self.chunk_frames)
        chunk, off = self._locate(self.size)
        if self.quantized:
            for src, dst, dst_s in ((k, chunk.k, chunk.k_scale), (v, chunk.v, chunk.v_scale)):
                q, s = quantize_int8(src)
                dst[off].copy_(q, non_blocking=True)
                dst_s[off].copy_(s, non_blocking=True)
        else:
            chunk.k[off].copy_(k, non_blocking=True)
            chunk.v[off].copy_(v, non_blocking=True)
        self.size += 1
        return self.size - 1

    def copy_to(self, row: int, batch: int, out_k: Tensor, out_v: Tensor) -> None:
        """Write row ``row``'s batch element into ``out_k/out_v [layers, tokens, heads, head_dim]``."""
        chunk, off = self._locate(row)
        device = out_k.device
        if self.quantized:
            for q, s, out in ((chunk.k, chunk.k_scale, out_k), (chunk.v, chunk.v_scale, out_v)):
                qd = q[off, batch].to(device, non_blocking=True)
                sd = s[off, batch].to(device, non_blocking=True)
                out.copy_(dequantize_int8(qd, sd, out.dtype))
            return
        for src, out in ((chunk.k, out_k), (chunk.v, out_v)):
            for layer in range(out.shape[0]):  # contiguous per layer: no staging copy on the GPU
                out[layer].copy_(src[off, batch, layer], non_blocking=True)

    def clear(self) -> None:
        """Forget the frames, keep the reservation (the next video reuses it)."""
        self.size = 0

    def release(self) -> None:
        """Unpin and free the storage (call when no copy is in flight)."""
        for chunk in self.chunks:
            chunk.release()
        self.chunks, self.size = [], 0


@dataclass
class PlannedRetrieval:
    """A retrieval computed ahead of its block (see :meth:`~lrag.memory.bank.RetrievalMemory.plan`)."""

    key: tuple[int, int, int]  # (query frame, pool size, descriptors): what the retrieval depended on
    record: Any  # RetrievalRecord | None
    frames_host: Tensor | None  # record.frames on the host (pinned when copied from CUDA)
    index_copied: "torch.cuda.Event | None"  # frames_host has landed
    compute_mark: "torch.cuda.Event | None"  # compute stream past the previous block's denoising
    kv: tuple[Tensor, Tensor, "torch.cuda.Event | None"] | None = None  # prefetched buffers


def host_copy(t: Tensor) -> tuple[Tensor, "torch.cuda.Event | None"]:
    """``t`` on the host without blocking: pinned destination plus completion event for CUDA."""
    if not t.is_cuda:
        return t, None
    dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    dst.copy_(t, non_blocking=True)
    return dst, torch.cuda.current_stream(t.device).record_event()


@dataclass
class OffloadedKV:
    """The ring plus the double-buffered GPU memory of retrieved frames, with side-stream copies.

    Args:
        quantized: int8 ring (``kv_tier: int8``).
        chunk_frames: Ring growth step in frames.
        budget_bytes: Ring byte limit (None: none).
    """

    quantized: bool = False
    chunk_frames: int = 16
    budget_bytes: int | None = None
    ring: HostRing | None = None
    stream: "torch.cuda.Stream | None" = None
    buffers: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    current: int = -1
    resident: dict[tuple[int, int], int] = field(default_factory=dict)  # (batch, row) -> rank in current
    copied_frames: int = 0
    reused_frames: int = 0

    def _ensure_ring(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> HostRing:
        if self.ring is not None and (self.ring.shape, self.ring.dtype) != (shape, dtype):
            if self.ring.size:
                raise KVStoreError(f"host KV ring holds frames of {self.ring.shape} {self.ring.dtype}, "
                                   f"got {shape} {dtype}; call RetrievalMemory.reset() between videos")
            self.release()  # a new video of another size: re-reserve
        if self.ring is None:
            cuda = device.type == "cuda"
            self.ring = HostRing(shape, dtype, self.quantized, cuda, self.chunk_frames, self.budget_bytes)
            if cuda and self.stream is None:
                self.stream = torch.cuda.Stream(device)
        return self.ring

    def reserve(self, frames: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> None:
        """Reserve ``frames`` frames of ``shape`` ``(B, layers, tokens, heads, head_dim)`` now."""
        self._ensure_ring(tuple(shape), dtype, torch.device(device)).reserve(frames)

    def append(self, k: Tensor, v: Tensor) -> int:
        """Store one evicted frame ``[B, layers, tokens, heads, head_dim]``; returns its ring row."""
        ring = self._ensure_ring(tuple(k.shape), k.dtype, k.device)
        if self.stream is None or not k.is_cuda:
            return ring.append(k, v)
        # The side stream copies once the compute stream has produced k/v; record_stream keeps
        # their memory from being reused before the copy has read it.
        self.stream.wait_stream(torch.cuda.current_stream(k.device))
        with torch.cuda.stream(self.stream):
            row = ring.append(k, v)
        k.record_stream(self.stream)
        v.record_stream(self.stream)
        return row

    def fill(self, rows: list[list[int]], capacity: int, device: torch.device, dtype: torch.dtype,
             after: "torch.cuda.Event | None" = None) -> tuple[Tensor, Tensor, "torch.cuda.Event | None"]:
        """Put ring rows ``rows[b][rank]`` into a GPU buffer ``[layers, B, capacity, tokens, heads, head_dim]``.

        Frames already resident (retrieved by the previous block) are copied on the GPU; only
        the others come from the ring. ``after`` is a compute-stream event past the last read of
        the buffer that is not current (the block before the previous one); the copies wait for
        it, not for the whole compute stream. Returns the buffer's K, V and the event marking the
        end of the copies (None off CUDA, where copies are synchronous).
        """
        ring = self.ring
        b = len(rows)
        _, layers, tokens, heads, hd = ring.shape
        k_sel = max(len(r) for r in rows)
        if k_sel > capacity:
            raise KVStoreError(f"retrieval of {k_sel} frames exceeds the GPU buffer of {capacity} (memory_size)")
        if len(self.buffers) < 2:
            self.buffers = [tuple(torch.empty((layers, b, capacity, tokens, heads, hd), dtype=dtype, device=device)
                                  for _ in range(2)) for _ in range(2)]
        same = self.current >= 0 and all(self.resident.get((bi, row)) == rank
                                          for bi, r in enumerate(rows) for rank, row in enumerate(r)) \
            and len(self.resident) == sum(len(r) for r in rows)
        if same:  # identical retrieval: the current buffer is already right
            self.reused_frames += sum(len(r) for r in rows)
            return (*self.buffers[self.current], None)
        target = 1 - self.current if self.current >= 0 else 0
        old_k, old_v = self.buffers[self.current] if self.current >= 0 else (None, None)
        new_k, new_v = self.buffers[target]
        side = self.stream if device.type == "cuda" else None
        if side is not None:  # wait until the target buffer's last reader is done
            side.wait_event(after) if after is not None else side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side) if side is not None else nullcontext():
            resident = {}
            for bi, r in enumerate(rows):
                for rank, row in enumerate(r):
                    old = self.resident.get((bi, row))
                    if old is not None:
                        new_k[:, bi, rank].copy_(old_k[:, bi, old])
                        new_v[:, bi, rank].copy_(old_v[:, bi, old])
                        self.reused_frames += 1
                    else:
                        ring.copy_to(row, bi, new_k[:, bi, rank], new_v[:, bi, rank])
                        self.copied_frames += 1
                    resident[(bi, row)] = rank
            done = side.record_event() if side is not None else None
        self.current, self.resident = target, resident
        return new_k, new_v, done

    def memory_views(self, k: Tensor, v: Tensor, k_sel: int) -> tuple[list[Tensor], list[Tensor]]:
        """Per-layer ``[B, k_sel * tokens, heads, head_dim]`` views of a buffer (no copy)."""
        ks = [rearrange(k[layer, :, :k_sel], "b k t h d -> b (k t) h d") for layer in range(k.shape[0])]
        vs = [rearrange(v[layer, :, :k_sel], "b k t h d -> b (k t) h d") for layer in range(v.shape[0])]
        return ks, vs

    def clear(self) -> None:
        """New video: forget stored frames and resident buffers, keep the reservations."""
        self.sync()
        if self.ring is not None:
            self.ring.clear()
        self.current, self.resident = -1, {}
        self.copied_frames = self.reused_frames = 0

    def sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def release(self) -> None:
        """Free the ring and the GPU buffers."""
        self.clear()
        if self.ring is not None:
            self.ring.release()
        self.ring, self.buffers = None, []

