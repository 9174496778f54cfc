"""The KV cache of the causal forward and its K/V containers.

The attended sequence is ``[sink | retrieved memory | local window]``; see
:class:`~lrag.nets.policy.AttentionPolicy` for the budget rules. Temporal RoPE positions
follow one of the two rules of the reference (README of ``tests/fixtures/wan_reference``):

* ``"absolute"``: every frame keeps its global frame index (reference native model,
  ``causal_model.py``, which ropes keys once when written - numerically identical).
* ``"slot"``: a frame's temporal position is its slot in the ring buffer
  (reference latent-memory model, ``causal_model_latentmem.py``).

The ring keeps keys *without* rotary embedding (the retrieval memory ropes evicted keys at
other positions); with ``rope_cache`` a :class:`~lrag.nets.rope_cache.RopedKeys` beside it
holds them roped, so a forward ropes only its new tokens (bit-identical outputs).

With the RoPE cache and the ``replace`` budget, the K ring slots between the sink and the
attended local frames (the slots that budget reserves for retrieved frames) are exactly as
many as the retrieved frames once the memory is full. Those frames are then placed *in* the
gap, so ``[sink | retrieved | local]`` is one contiguous run of slots and attention reads
views instead of concatenating 2 x window frames of K/V in every layer of every call (at
Wan-1.3B size about 35 GB of copies per block). The retrieved
keys go into the roped buffer's gap; the ring's own values of the gap frames are set aside
once per block and put back before the ring is next read (eviction, a forward without them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lrag.nets.attention import apply_rope, attention, grid_positions, offset_grid_positions, rope_freqs
from lrag.nets.policy import AttentionPolicy
from lrag.nets.rope_cache import RopedKeys

__all__ = ["AttendPlan", "EvictedKV", "KVCache", "LayerKV", "MemoryKV"]

_FREQ_MEMO = 8  # rotation tables kept: q, k, memory and re-rope runs of a block's calls


@dataclass
class LayerKV:
    """One layer's ring buffer: un-roped ``k`` and ``v``, ``[B, window*tokens, heads, head_dim]``."""

    k: Tensor
    v: Tensor


@dataclass
class EvictedKV:
    """Frames pushed out of the ring buffer, oldest first.

    Attributes:
        frames: Global frame index of each evicted frame.
        k: Per layer, un-roped keys ``[B, n, tokens, heads, head_dim]``.
        v: Per layer, values of the same shape.
        offsets: ``[B, n, 2]`` spatial RoPE offsets of the frames (None: the cache has none).
    """

    frames: list[int]
    k: list[Tensor]
    v: list[Tensor]
    offsets: Tensor | None = None


@dataclass
class MemoryKV:
    """The K retrieved frames' un-roped K/V, already on the compute device.

    Attributes:
        k: Per layer ``[B, k_sel * tokens, heads, head_dim]``, frames in top-k order.
        v: Per layer, same shape.
        num_frames: ``k_sel``.
        offsets: ``[B, k_sel, 2]`` spatial RoPE offsets of the frames (needed when the cache
            uses offsets; see :meth:`KVCache.begin`).
    """

    k: list[Tensor]
    v: list[Tensor]
    num_frames: int
    offsets: Tensor | None = None


@dataclass
class AttendPlan:
    """Per-forward bookkeeping shared by all layers (positions are layer independent).

    ``k_freqs`` (the attended slots' rotation) is None with the RoPE cache, which needs only
    ``q_freqs`` (the new frames' keys sit at the queries' positions) and ``rerope``: stale
    attended slot runs ``(first, end, freqs)`` to re-rope before attending.
    """

    local_start: int
    local_end: int
    write_start: int
    sink_slots: int
    local_lo: int
    q_freqs: Tensor
    k_freqs: Tensor | None
    mem_freqs: Tensor | None
    rerope: list[tuple[int, int, Tensor]] = field(default_factory=list)
    memory_in_gap: bool = False


@dataclass
class KVCache:
    """Sink + local-window KV per layer, in frames of ``tokens_per_frame`` tokens.

    Build with :meth:`empty`. ``slot_frames[i]`` is the global frame index held by
    slot ``i``; ``global_end`` is one past the newest frame ever written. Evicted
    frames go to ``on_evict`` (the retrieval memory decides where they live).
    ``slot_offsets`` (``[B, window, 2]``, set by the first :meth:`begin` given offsets)
    is the spatial RoPE offset of the frame in each slot.
    """

    policy: AttentionPolicy
    tokens_per_frame: int
    grid_hw: tuple[int, int]
    layers: list[LayerKV]
    head_dim: int
    theta: float = 10000.0
    slot_frames: list[int] = field(default_factory=list)
    global_end: int = 0
    on_evict: Callable[[EvictedKV], None] | None = None
    reference_cpu_alias: bool = False
    slot_offsets: Tensor | None = None
    roped: RopedKeys | None = None
    rope: Callable[[Tensor, Tensor], Tensor] = apply_rope
    _pending: EvictedKV | None = field(default=None, repr=False)
    _freq_memo: dict[tuple[int, ...], Tensor] = field(default_factory=dict, repr=False)
    _gap: tuple[int, int, object] | None = field(default=None, repr=False)  # (first slot, end, MemoryKV)
    _gap_saved_v: dict[int, Tensor] = field(default_factory=dict, repr=False)  # per layer: the ring's own gap V
    _gap_layers: set[int] = field(default_factory=set, repr=False)  # layers whose gap holds retrieved frames

    @classmethod
    def empty(
        cls,
        policy: AttentionPolicy,
        num_layers: int,
        batch: int,
        grid_hw: tuple[int, int],
        num_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        theta: float = 10000.0,
        on_evict: Callable[[EvictedKV], None] | None = None,
        reference_cpu_alias: bool = False,
        rope_cache: bool = False,
        rope: Callable[[Tensor, Tensor], Tensor] = apply_rope,
    ) -> KVCache:
        """Zeroed cache for ``num_layers`` layers; ``grid_hw`` is the token grid of one frame.

        ``reference_cpu_alias`` reproduces the reference's CPU eviction aliasing (see
        :meth:`finish`); only for matching its CPU golden fixture. ``rope_cache`` keeps
        roped keys beside the ring (:class:`~lrag.nets.rope_cache.RopedKeys`): one more
        K buffer of the window's size, and no per-call re-rope of the window. ``rope`` rotates
        keys and queries (:func:`~lrag.nets.attention.fused_rope` for compiled models).
        """
        tpf = grid_hw[0] * grid_hw[1]
        shape = (batch, policy.window * tpf, num_heads, head_dim)
        layers = [
            LayerKV(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]
        roped = RopedKeys.like([layer.k for layer in layers], tpf, rope) if rope_cache else None
        return cls(
            policy, tpf, tuple(grid_hw), layers, head_dim, theta, on_evict=on_evict,
            reference_cpu_alias=reference_cpu_alias, roped=roped, rope=rope,
        )

    @property
    def num_filled(self) -> int:
        return len(self.slot_frames)

    def _evict(self, count: int) -> None:
        s, t = self.policy.sink, self.tokens_per_frame
        if s + count > self.num_filled:
            raise RuntimeError(f"KVCache: cannot evict {count} frames from {self.num_filled} with sink {s}")
        self.restore_gap()
        frames = self.slot_frames[s : s + count]
        ev_k, ev_v = [], []
        keep = self.num_filled - s - count
        for layer in self.layers:
            if not self.reference_cpu_alias:
                ev_k.append(self._frames_of(layer.k, s, count))
                ev_v.append(self._frames_of(layer.v, s, count))
            layer.k[:, s * t : (s + keep) * t] = layer.k[:, (s + count) * t : (s + count + keep) * t].clone()
            layer.v[:, s * t : (s + keep) * t] = layer.v[:, (s + count) * t : (s + count + keep) * t].clone()
        self.slot_frames = self.slot_frames[:s] + self.slot_frames[s + count :]
        ev_off = None
        if self.slot_offsets is not None:
            so = self.slot_offsets
            ev_off = so[:, s : s + count].clone()
            so[:, s : s + keep] = so[:, s + count : s + count + keep].clone()
        if self.roped is not None:
            self.roped.shift(s, count, keep, positions_move=self.policy.resolved_positions == "slot")
        self._pending = EvictedKV(frames, ev_k, ev_v, ev_off)

    def _frames_of(self, buf: Tensor, first: int, count: int) -> Tensor:
        """Slots ``[first, first+count)`` of a buffer as ``[B, count, tokens, heads, head_dim]`` (a copy)."""
        b, _, h, d = buf.shape
        t = self.tokens_per_frame
        return buf[:, first * t : (first + count) * t].clone().view(b, count, t, h, d)

    def finish(self) -> None:
        """End of a forward: hand the frames evicted by it to ``on_evict``.

        With ``reference_cpu_alias`` the handed K/V are the evicted slots' contents
        *after* the roll and this forward's writes: the reference's CPU path keeps
        views into the rolled buffer (``.to("cpu")`` is a no-op on CPU), and its
        golden fixture was generated that way. On GPU it copies the true frames.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if self.reference_cpu_alias:
            self.restore_gap()
            s, n = self.policy.sink, len(pending.frames)
            pending.k = [self._frames_of(layer.k, s, n) for layer in self.layers]
            pending.v = [self._frames_of(layer.v, s, n) for layer in self.layers]
        if self.on_evict is not None:
            self.on_evict(pending)

    def _locate(self, start_frame: int, num_frames: int) -> tuple[int, int]:
        """Evict if needed and return the block's slot range ``(local_start, local_end)``."""
        end = start_frame + num_frames
        if end > self.global_end:
            new = end - self.global_end
            overflow = self.num_filled + new - self.policy.window
            if overflow > 0:
                self._evict(overflow)
            local_end = self.num_filled + new
        else:
            local_end = self.num_filled + end - self.global_end
        local_start = local_end - num_frames
        if local_start < 0 or local_end > self.policy.window:
            raise ValueError(
                f"KVCache: frames [{start_frame}, {end}) are no longer in the window "
                f"(global_end={self.global_end}, filled={self.num_filled})"
            )
        frames = list(range(start_frame, end))
        self.slot_frames = self.slot_frames[:local_start] + frames + self.slot_frames[local_end:]
        self.global_end = max(self.global_end, end)
        return local_start, local_end

    def begin(
        self, start_frame: int, num_frames: int, memory: MemoryKV | None, offsets: Tensor | None = None
    ) -> AttendPlan:
        """Place a forward of ``num_frames`` frames starting at global ``start_frame``.

        The first forward of a new block evicts (once, before any layer runs); later
        forwards of the same frames overwrite the same slots and move nothing.

        Args:
            start_frame: Global index of the first frame.
            num_frames: Frames in this forward.
            memory: Retrieved frames for this forward, or None.
            offsets: ``[B, num_frames, 2]`` (row, col) spatial RoPE offset of each frame in
                token units (its camera position). Once given, every forward of this cache
                must give them, and ``memory`` must carry its frames' offsets. None: no
                offsets (bit-identical to the reference).
        """
        is_recompute = start_frame + num_frames <= self.global_end and start_frame > 0
        if (offsets is None) != (self.slot_offsets is None) and self.global_end > 0:
            raise ValueError(
                "KVCache.begin: offsets must be given for every forward of a cache or for none "
                f"(start_frame={start_frame}, cache has offsets: {self.slot_offsets is not None})"
            )
        local_start, local_end = self._locate(start_frame, num_frames)
        pol = self.policy
        # The reference protects the sink slots during recompute passes of later
        # blocks; it only matters when sink > frames_per_block.
        write_start = max(local_start, pol.sink) if is_recompute else local_start
        sink_slots = min(pol.sink, local_end)
        local_lo = max(sink_slots, local_end - pol.local_frames)
        attended = list(range(sink_slots)) + list(range(local_lo, local_end))
        if pol.resolved_positions == "absolute":
            k_pos = [self.slot_frames[i] for i in attended]
            q_pos = list(range(start_frame, start_frame + num_frames))
        else:
            k_pos, q_pos = attended, list(range(local_start, local_end))
        m_pos = None
        if memory is not None and memory.num_frames > 0:
            base = 0 if pol.memory_position == "zero" else pol.sink
            m_pos = [0] * memory.num_frames if base == 0 else [base + i for i in range(memory.num_frames)]
        if offsets is not None:
            plan = self._offset_plan(local_start, local_end, write_start, sink_slots, local_lo,
                                     (q_pos, k_pos, m_pos, attended), offsets, memory)
        else:
            mem_freqs = self._freqs(m_pos) if m_pos is not None else None
            k_freqs = None if self.roped is not None else self._freqs(k_pos)
            plan = AttendPlan(local_start, local_end, write_start, sink_slots, local_lo, self._freqs(q_pos), k_freqs,
                              mem_freqs)
        if self.roped is not None:
            self._plan_rerope(plan, attended)
            self._plan_gap(plan, memory)
        return plan

    def _plan_gap(self, plan: AttendPlan, memory: MemoryKV | None) -> None:
        """Put the retrieved frames in the unattended slots between sink and local window when
        they fill them exactly (``replace`` budget, full memory); see the module docstring.
        Other frames there, or other slots (eviction restores first), give the ring's values back."""
        first, end = plan.sink_slots, plan.local_lo
        fits = (plan.mem_freqs is not None and memory is not None and memory.num_frames == end - first
                and plan.write_start >= end)
        if self._gap is not None and not (fits and self._gap[:2] == (first, end) and self._gap[2] is memory):
            self.restore_gap()
        if not fits:
            return
        if self._gap is None:
            self._gap = (first, end, memory)
            self.roped.valid[first:end] = [False] * (end - first)  # they will hold retrieved keys
        plan.memory_in_gap = True

    def restore_gap(self) -> None:
        """Give the gap slots their own values back (before anything reads the ring's V)."""
        if self._gap is None:
            return
        first, end, _ = self._gap
        t = self.tokens_per_frame
        for layer in self._gap_layers:
            self.layers[layer].v[:, first * t : end * t] = self._gap_saved_v[layer]
        self._gap, self._gap_layers = None, set()

    def _install_gap(self, layer: int, memory: MemoryKV, freqs: Tensor) -> None:
        """Layer ``layer``'s retrieved keys (roped) and values into the gap slots, the ring's V set aside."""
        first, end, _ = self._gap
        t, buf = self.tokens_per_frame, self.layers[layer]
        own = buf.v[:, first * t : end * t]
        saved = self._gap_saved_v.get(layer)
        if saved is None or saved.shape != own.shape:  # one buffer per layer, reused every block
            saved = self._gap_saved_v[layer] = torch.empty_like(own)
        saved.copy_(own)
        own.copy_(memory.v[layer])
        self.roped.write(layer, first, memory.k[layer], freqs)
        self._gap_layers.add(layer)

    def _plan_rerope(self, plan: AttendPlan, attended: list[int]) -> None:
        """Stale attended slots that this forward does not write get re-roped (once, all layers)."""
        roped = self.roped
        old = [i for i in attended if not plan.write_start <= i < plan.local_end]
        for first, end in roped.stale_runs(old):
            plan.rerope.append((first, end, self._slot_freqs(first, end)))
            roped.mark_valid(first, end)
        roped.mark_valid(plan.write_start, plan.local_end)

    def _slot_freqs(self, first: int, end: int) -> Tensor:
        """Key rotation of slots ``[first, end)`` at their current positions."""
        slots = list(range(first, end))
        pos = [self.slot_frames[i] for i in slots] if self.policy.resolved_positions == "absolute" else slots
        if self.slot_offsets is not None:
            return self._offset_freqs(pos, self.slot_offsets[:, first:end])
        return self._freqs(pos)

    def _offset_plan(self, local_start: int, local_end: int, write_start: int, sink_slots: int, local_lo: int,
                     pos: tuple, offsets: Tensor, memory: MemoryKV | None) -> AttendPlan:
        """:meth:`begin` with per-sample spatial offsets: record them, build per-sample freqs."""
        q_pos, k_pos, m_pos, attended = pos
        device = self.layers[0].k.device
        b = self.layers[0].k.shape[0]
        if offsets.shape != (b, local_end - local_start, 2):
            raise ValueError(f"KVCache.begin: offsets must be [{b}, {local_end - local_start}, 2], "
                             f"got {tuple(offsets.shape)}")
        if self.slot_offsets is None:
            self.slot_offsets = torch.zeros(b, self.policy.window, 2, dtype=torch.float64, device=device)
        skip = write_start - local_start
        self.slot_offsets[:, write_start:local_end] = offsets[:, skip:].to(self.slot_offsets)
        mem_freqs = None
        if m_pos is not None:
            if memory.offsets is None:
                raise ValueError("KVCache.begin: the cache uses offsets but the retrieved frames carry none "
                                 "(MemoryKV.offsets); store them with the memory (EvictedKV.offsets).")
            mem_freqs = self._offset_freqs(m_pos, memory.offsets)
        q_freqs = self._offset_freqs(q_pos, self.slot_offsets[:, local_start:local_end])
        k_freqs = None
        if self.roped is None:
            idx = torch.tensor(attended, dtype=torch.long, device=device)
            k_freqs = self._offset_freqs(k_pos, self.slot_offsets.index_select(1, idx))
        return AttendPlan(local_start, local_end, write_start, sink_slots, local_lo, q_freqs, k_freqs, mem_freqs)

    def _offset_freqs(self, frame_positions: list[int], offsets: Tensor) -> Tensor:
        device = self.layers[0].k.device
        fp = torch.tensor(frame_positions, dtype=torch.long)
        pos = offset_grid_positions(fp, offsets.to(device), *self.grid_hw)
        return rope_freqs(pos, self.head_dim, self.theta)

    def _freqs(self, frame_positions: list[int]) -> Tensor:
        # Positions repeat over a block's calls (slot rule: every block); memoising saves a
        # host->device copy per forward. Absolute positions never come back once the window
        # has moved on, so the memo keeps only the newest few (else it grows every block).
        key = tuple(frame_positions)
        if key not in self._freq_memo:
            device = self.layers[0].k.device
            pos = grid_positions(torch.tensor(frame_positions, dtype=torch.long), *self.grid_hw)
            while len(self._freq_memo) >= _FREQ_MEMO:
                self._freq_memo.pop(next(iter(self._freq_memo)))
            table = rope_freqs(pos, self.head_dim, self.theta)  # on the host: the reference's values
            if device.type == "cuda":  # a pageable copy would stall the host until the GPU drains
                table = table.pin_memory()
            self._freq_memo[key] = table.to(device, non_blocking=True)
        return self._freq_memo[key]

    def attend(
        self, plan: AttendPlan, layer: int, q: Tensor, k: Tensor, v: Tensor, memory: MemoryKV | None
    ) -> Tensor:
        """Write this layer's new un-roped K/V into its slots and attend.

        Args:
            plan: From :meth:`begin` for this forward.
            layer: Layer index.
            q, k, v: ``[B, num_frames * tokens, heads, head_dim]``, k un-roped.
            memory: Retrieved frames' K/V, or None.

        Returns:
            ``[B, num_frames * tokens, heads, head_dim]``.
        """
        t, buf = self.tokens_per_frame, self.layers[layer]
        skip = (plan.write_start - plan.local_start) * t
        buf.k[:, plan.write_start * t : plan.local_end * t] = k[:, skip:]
        buf.v[:, plan.write_start * t : plan.local_end * t] = v[:, skip:]
        if self.roped is not None:
            return self._attend_roped(plan, layer, self.rope(q, plan.q_freqs), k[:, skip:], memory)
        sink, lo, hi = plan.sink_slots * t, plan.local_lo * t, plan.local_end * t
        k_parts, v_parts = [buf.k[:, :sink]], [buf.v[:, :sink]]
        if plan.mem_freqs is not None and memory is not None:
            k_parts.append(memory.k[layer])
            v_parts.append(memory.v[layer])
        k_parts.append(buf.k[:, lo:hi])
        v_parts.append(buf.v[:, lo:hi])
        k_cat, v_cat = torch.cat(k_parts, dim=1), torch.cat(v_parts, dim=1)
        freqs = plan.k_freqs
        if plan.mem_freqs is not None and memory is not None:
            freqs = torch.cat([plan.k_freqs[..., :sink, :, :], plan.mem_freqs, plan.k_freqs[..., sink:, :, :]], dim=-3)
        return attention(self.rope(q, plan.q_freqs), self.rope(k_cat, freqs), v_cat)

    def _attend_roped(self, plan: AttendPlan, layer: int, q: Tensor, k_new: Tensor, memory: MemoryKV | None) -> Tensor:
        """:meth:`attend` with the RoPE cache: rope the new keys (and stale runs) only.

        The new frames' keys sit at the queries' positions (both position rules), so
        ``q_freqs`` rotates them. Native attends one contiguous run of slots: no copy at all.
        """
        t, buf, roped = self.tokens_per_frame, self.layers[layer], self.roped
        for first, end, freqs in plan.rerope:
            roped.write(layer, first, buf.k[:, first * t : end * t], freqs)
        skip = (plan.write_start - plan.local_start) * t
        roped.write(layer, plan.write_start, k_new, plan.q_freqs[..., skip:, :, :] if skip else plan.q_freqs)
        keys = roped.keys[layer]
        sink, lo, hi = plan.sink_slots * t, plan.local_lo * t, plan.local_end * t
        with_memory = plan.mem_freqs is not None and memory is not None
        if plan.memory_in_gap:
            if layer not in self._gap_layers:
                self._install_gap(layer, memory, plan.mem_freqs)
            return attention(q, keys[:, :hi], buf.v[:, :hi])
        if not with_memory and lo == sink:
            return attention(q, keys[:, :hi], buf.v[:, :hi])
        k_parts, v_parts = [keys[:, :sink]], [buf.v[:, :sink]]
        if with_memory:
            k_parts.append(roped.memory_keys(layer, memory, memory.k[layer], plan.mem_freqs))
            v_parts.append(memory.v[layer])
        k_parts.append(keys[:, lo:hi])
        v_parts.append(buf.v[:, lo:hi])
        return attention(q, torch.cat(k_parts, dim=1), torch.cat(v_parts, dim=1))

    def roped_keys(self, layer: int) -> Tensor:
        """Keys of the filled slots roped with absolute frame indices (reference native layout)."""
        pos = self._freqs(self.slot_frames)
        return apply_rope(self.layers[layer].k[:, : self.num_filled * self.tokens_per_frame], pos)
