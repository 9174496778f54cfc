"""Causal Wan2.1 DiT with sink / retrieved / local KV attention.

One network serves the bidirectional forward (:meth:`CausalWanModel.forward_bidirectional`)
and the cached causal forward (:meth:`CausalWanModel.forward`). Parameter names are
the upstream Wan2.1 ones, so Self-Forcing / Causal-Forcing / LongLive checkpoints load
strictly. Sizes (tokens per frame, sequence length) are derived from the input.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from lrag.nets.attention import SdpaBackend, apply_rope, attention, check_sdpa_backend, fused_rope, grid_positions, \
    rope_freqs, sdpa_backend
from lrag.nets.fp8 import Float8Linear, convert_linears
from lrag.nets.kv_cache import EvictedKV, KVCache, MemoryKV
from lrag.nets.policy import AttentionPolicy

__all__ = ["PRESETS", "TINY_PRESETS", "CausalWanModel", "WanConfig", "build_tiny", "golden_tiny", "preset_config",
           "tiny", "tiny_config", "wan_1_3b"]

log = logging.getLogger(__name__)

# Pipeline-level knobs that the reference passes to its model constructor; here they
# belong to the AttentionPolicy, so from_dict accepts and drops them.
_PIPELINE_KEYS = frozenset({"local_attn_size", "sink_size", "memory_size"})


@dataclass
class WanConfig:
    """Constructor arguments of the reference ``CausalWanModel`` (same names).

    Defaults are Wan2.1-T2V-1.3B.
    """

    model_type: str = "t2v"  # only text-to-video; i2v needs CLIP features we don't carry
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (time, row, col) patch; Wan never patches time
    text_len: int = 512  # text tokens after zero padding (umT5 max length)
    in_dim: int = 16  # latent channels of the Wan VAE
    dim: int = 1536  # transformer width
    ffn_dim: int = 8960  # FFN hidden width
    freq_dim: int = 256  # sinusoidal timestep embedding width
    text_dim: int = 4096  # umT5-XXL hidden size
    out_dim: int = 16  # predicted flow channels (= in_dim)
    num_heads: int = 12  # head_dim = dim / num_heads = 128
    num_layers: int = 30
    qk_norm: bool = True  # RMSNorm on q and k before attention
    cross_attn_norm: bool = True  # affine LayerNorm (norm3) before cross-attention
    eps: float = 1e-6  # norm epsilon
    rope_theta: float = 10000.0  # RoPE base

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.model_type != "t2v":
            raise ValueError(f"WanConfig.model_type: only 't2v' is supported, got {self.model_type!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"WanConfig: dim ({self.dim}) must split into num_heads ({self.num_heads}) heads of even size"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, cfg: dict) -> WanConfig:
        """Build from a reference config dict, dropping pipeline-only keys; unknown keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - names - _PIPELINE_KEYS
        if unknown:
            raise ValueError(f"WanConfig.from_dict: unknown keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: v for k, v in cfg.items() if k in names})


def wan_1_3b() -> WanConfig:
    """Wan2.1-T2V-1.3B (the Self-Forcing / LongLive backbone)."""
    return WanConfig()


def golden_tiny() -> WanConfig:
    """The configuration of ``tests/fixtures/wan_reference/wan_tiny_golden.pt``."""
    return WanConfig(text_len=8, dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=4, num_layers=2)


def tiny() -> WanConfig:
    """Small CPU default: 2 layers of width 96, 32-dim text."""
    return WanConfig(text_len=16, dim=96, ffn_dim=192, freq_dim=32, text_dim=32, num_heads=4, num_layers=2)


PRESETS: dict[str, Callable[[], WanConfig]] = {"wan_1_3b": wan_1_3b, "golden_tiny": golden_tiny, "tiny": tiny}
#: The small presets (CPU default and the golden fixture's); same model class, every line shared.
TINY_PRESETS = ("tiny", "golden_tiny")


def preset_config(name: str, **overrides: object) -> WanConfig:
    """The :class:`WanConfig` of preset ``name``, optionally with fields overridden.

    >>> preset_config("tiny", num_layers=4).num_layers
    4

    Raises:
        ValueError: For an unknown preset or field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown Wan preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    bad = set(overrides) - {f.name for f in dataclasses.fields(cfg)}
    if bad:
        raise ValueError(f"preset {name!r}: unknown WanConfig fields {sorted(bad)}")
    return dataclasses.replace(cfg, **overrides)


def tiny_config(preset: str = "tiny", **overrides: object) -> WanConfig:
    """A small preset's :class:`WanConfig` (``"tiny"`` or ``"golden_tiny"``), fields overridable."""
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; choose one of {TINY_PRESETS}")
    return preset_config(preset, **overrides)


def sinusoidal_embedding(dim: int, position: Tensor) -> Tensor:
    """``[N, dim]`` float64 embedding: cos half, then sin half, freqs ``10000^(-i/half)``."""
    half = dim // 2
    position = position.to(torch.float64)
    # arange made on the device: a host tensor moved there would be a pageable copy per call (a stall)
    steps = torch.arange(half, device=position.device, dtype=position.dtype)
    sinusoid = torch.outer(position, torch.pow(10000, -steps.div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, elementwise_affine=elementwise_affine, eps=eps)


# Attention callback: (q, k, v) of shape [B, L, heads, head_dim] with k un-roped -> output.
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


class WanAttention(nn.Module):
    """q/k/v/o projections (+ q/k RMSNorm); self- and cross-attention share it."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def _heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b l (n d) -> b l n d", n=self.num_heads)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention inputs ``[B, L, heads, head_dim]`` (q and k normed, not roped)."""
        return self._heads(self.norm_q(self.q(x))), self._heads(self.norm_k(self.k(x))), self._heads(self.v(x))

    def self_attention(self, x: Tensor, attend: Attend) -> Tensor:
        return self.o(attend(*self.qkv(x)).flatten(2))

    def cross_attention(self, x: Tensor, context: Tensor) -> Tensor:
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(context)))
        v = self._heads(self.v(context))
        return self.o(attention(q, k, v).flatten(2))


class WanBlock(nn.Module):
    """Self-attention, cross-attention and FFN, modulated per frame by the timestep."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.norm1 = WanLayerNorm(cfg.dim, cfg.eps)
        self.self_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(cfg.dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)
        self._compiled: tuple[Callable, Callable] | None = None

    def forward(self, x: Tensor, e: Tensor, context: Tensor, attend: Attend) -> Tensor:
        """x ``[B, L, D]``; e ``[B, F, 6, D]`` (L = F * tokens); context ``[B, Lc, D]``."""
        pre, post = self._compiled or (self.pre_attention, self.post_attention)
        mod = self.modulation.unsqueeze(1) + e  # (B, F, 6, D)
        return post(x, attend(*pre(x, mod)), mod, context)

    def pre_attention(self, x: Tensor, mod: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Modulated norm and q/k/v of the self-attention (everything before the KV cache)."""
        shift1, scale1 = mod[:, :, 0:1], mod[:, :, 1:2]
        h = _per_frame(self.norm1(x), mod.shape[1], lambda t: t * (1 + scale1) + shift1)
        return self.self_attn.qkv(h)

    def post_attention(self, x: Tensor, y: Tensor, mod: Tensor, context: Tensor) -> Tensor:
        """Output projection, gated residual, cross-attention and the modulated FFN."""
        f = mod.shape[1]
        gate1, shift2, scale2, gate2 = mod[:, :, 2:3], mod[:, :, 3:4], mod[:, :, 4:5], mod[:, :, 5:6]
        x = x + _per_frame(self.self_attn.o(y.flatten(2)), f, lambda t: t * gate1)
        x = x + self.cross_attn.cross_attention(self.norm3(x), context)
        h = _per_frame(self.norm2(x), f, lambda t: t * (1 + scale2) + shift2)
        return x + _per_frame(self.ffn(h), f, lambda t: t * gate2)

    def compile_halves(self, **options: object) -> None:
        """``torch.compile`` the two halves around the self-attention call, which stays eager.

        The KV cache's slicing and RoPE bookkeeping change between calls and would recompile;
        the halves see one shape per run (``options`` go to ``torch.compile``, e.g. ``mode``).
        Compiled kernels fuse norms and modulation, so outputs differ from eager in the last bits.
        """
        options = {"dynamic": False, **options}
        self._compiled = (torch.compile(self.pre_attention, **options), torch.compile(self.post_attention, **options))


def _per_frame(t: Tensor, frames: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` to ``t [B, F*tokens, D]`` viewed as ``[B, F, tokens, D]`` (per-frame modulation)."""
    return rearrange(fn(rearrange(t, "b (f l) d -> b f l d", f=frames)), "b f l d -> b (f l) d")


class Head(nn.Module):
    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x ``[B, L, D]``, e ``[B, F, D]`` -> ``[B, L, prod(patch)*out_dim]``."""
        shift, scale = (self.modulation.unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        out = self.head(rearrange(self.norm(x), "b (f l) d -> b f l d", f=e.shape[1]) * (1 + scale) + shift)
        return rearrange(out, "b f l c -> b (f l) c")


class CausalWanModel(nn.Module):
    """Wan2.1 DiT; see the module docstring.

    Args:
        config: The architecture; leave it out to use ``preset``.
        preset: Name of a :data:`PRESETS` architecture (``wan_1_3b``, ``tiny``, ``golden_tiny``),
            used when ``config`` is not given.
        attention_backend: SDPA backend of every attention call: ``auto`` (SDPA's choice),
            ``flash``, ``cudnn``, ``efficient`` or ``math``; a speed knob, no weights change.
        rope_cache: Caches made by :meth:`new_cache` keep keys roped once, when written
            (:mod:`lrag.nets.rope_cache`): bit-identical outputs, one more K buffer of the window.
        fp8: Multiply the blocks' projections and FFN in FP8 (e4m3, per-channel weight and
            per-token activation scales; :mod:`lrag.nets.fp8`), for Hopper GPUs. At 1.3B size on
            an H200 it is slower than bf16 (0.72x compiled) with a 3.8 % output error
            (BENCHMARKS.md). Weights and checkpoints stay full precision; after changing
            weights in place call :meth:`refresh_fp8`.
        compiled: ``torch.compile`` every block around its self-attention call
            (:meth:`compile_blocks`): a GPU speed knob (1.4x native frames/s on an H200 at full
            size, BENCHMARKS.md); the first blocks of a run pay the compile time, and fused
            kernels change outputs in the last bits.
    """

    def __init__(self, config: WanConfig | None = None, preset: str | None = None,
                 attention_backend: SdpaBackend = "auto", rope_cache: bool = True,
                 compiled: bool = False, fp8: bool = False) -> None:
        super().__init__()
        if (config is None) == (preset is None):
            raise ValueError("CausalWanModel: give exactly one of `config` (a WanConfig) or `preset` "
                             f"(one of {sorted(PRESETS)}).")
        self.attention_backend: str = check_sdpa_backend(attention_backend)
        self.rope_cache = rope_cache
        self.config = cfg = config if config is not None else preset_config(preset)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.fp8 = fp8
        if fp8:
            for block in self.blocks:
                convert_linears(block)
        self.compiled = False
        if compiled:
            self.compile_blocks()

    def refresh_fp8(self) -> None:
        """Re-quantise the FP8 copies of the weights (``fp8=True``) after they changed in place."""
        for module in self.modules():
            if isinstance(module, Float8Linear):
                module.refresh()

    def compile_blocks(self, **options: object) -> None:
        """``torch.compile`` every block except its self-attention call (see ``WanBlock.compile_halves``);
        caches made afterwards rope with one fused kernel (:func:`~lrag.nets.attention.fused_rope`)."""
        for block in self.blocks:
            block.compile_halves(**options)
        self.compiled = True

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of one latent frame; raises if the size does not divide."""
        _, ph, pw = self.config.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {self.config.patch_size}")
        return height // ph, width // pw

    def new_cache(
        self,
        policy: AttentionPolicy,
        batch: int,
        height: int,
        width: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        on_evict: Callable[[EvictedKV], None] | None = None,
        reference_cpu_alias: bool = False,
        rope_cache: bool | None = None,
    ) -> KVCache:
        """Empty :class:`KVCache` for latents of ``height x width`` (see ``KVCache.empty``).

        ``rope_cache`` None: the model's :attr:`rope_cache`.
        """
        device = device if device is not None else self.patch_embedding.weight.device
        cfg = self.config
        return KVCache.empty(
            policy, cfg.num_layers, batch, self.token_grid(height, width), cfg.num_heads, cfg.head_dim,
            dtype, device, cfg.rope_theta, on_evict, reference_cpu_alias,
            self.rope_cache if rope_cache is None else rope_cache,
            fused_rope if self.compiled else apply_rope,
        )

    def _embed(self, x: Tensor, t: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Tokens ``[B, L, D]``, per-frame time ``e [B,F,D]`` / ``e0 [B,F,6,D]``, context ``[B, text_len, D]``."""
        cfg = self.config
        tokens = rearrange(self.patch_embedding(rearrange(x, "b f c h w -> b c f h w")), "b d f h w -> b (f h w) d")
        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t.flatten()).type_as(tokens))
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, t.shape)
        return tokens, e.unflatten(0, t.shape), e0, self.text_embedding(self._pad_context(context))

    def _pad_context(self, context: Tensor) -> Tensor:
        cfg = self.config
        if context.ndim != 3 or context.shape[-1] != cfg.text_dim or context.shape[1] > cfg.text_len:
            raise ValueError(
                f"context must be [B, L<={cfg.text_len}, {cfg.text_dim}], got {tuple(context.shape)}"
            )
        pad = context.new_zeros(context.shape[0], cfg.text_len - context.shape[1], cfg.text_dim)
        return torch.cat([context, pad], dim=1)

    def _unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        p, q, r = self.config.patch_size
        f, h, w = grid
        return rearrange(
            out, "b (f h w) (p q r c) -> b (f p) c (h q) (w r)", f=f, h=h, w=w, p=p, q=q, r=r
        )

    def _check(self, x: Tensor, t: Tensor) -> None:
        if x.ndim != 5 or x.shape[2] != self.config.in_dim:
            raise ValueError(f"x must be [B, F, {self.config.in_dim}, H, W], got {tuple(x.shape)}")
        if t.shape != x.shape[:2]:
            raise ValueError(f"t must be [B, F] = {tuple(x.shape[:2])}, got {tuple(t.shape)}")

    def _run(self, x: Tensor, t: Tensor, context: Tensor, attend_for: Callable[[int], Attend]) -> Tensor:
        tokens, e, e0, ctx = self._embed(x, t, context)
        f = x.shape[1] // self.config.patch_size[0]
        with sdpa_backend(self.attention_backend):
            for i, block in enumerate(self.blocks):
                tokens = block(tokens, e0, ctx, attend_for(i))  # (B, L, D)
        grid = (f, *self.token_grid(*x.shape[-2:]))
        return self._unpatchify(self.head(tokens, e), grid)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor,
        cache: KVCache,
        start_frame: int,
        memory: MemoryKV | None = None,
        offsets: Tensor | None = None,
    ) -> Tensor:
        """Causal forward of one block against the KV cache.

        Args:
            x: Noisy latents ``[B, F, C, H, W]`` of frames ``start_frame .. start_frame+F-1``.
            t: Per-frame timesteps ``[B, F]`` on the 0..1000 scale.
            context: Text embeddings ``[B, L, text_dim]`` (L <= text_len, zero padded).
            cache: Sink + local KV; the first call of a new block evicts, later calls of
                the same frames overwrite the same slots.
            start_frame: Global index of the first frame of ``x``.
            memory: Retrieved frames' K/V for this block, or None.
            offsets: ``[B, F, 2]`` (row, col) spatial RoPE offset of each frame in token
                units (camera position), or None (see :meth:`KVCache.begin`).

        Returns:
            Flow prediction (noise - x0), ``[B, F, C, H, W]``.
        """
        self._check(x, t)
        if self.config.patch_size[0] != 1:
            raise ValueError("the causal forward needs patch_size[0] == 1 (one latent frame per token frame)")
        plan = cache.begin(start_frame, x.shape[1], memory, offsets)
        flow = self._run(x, t, context, lambda i: lambda q, k, v: cache.attend(plan, i, q, k, v, memory))
        cache.finish()
        return flow

    def forward_bidirectional(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """Full (non-causal) attention over all frames, no cache.

        Args:
            x: ``[B, F, C, H, W]``; t: ``[B]`` (one timestep per sample) or ``[B, F]``.
            context: ``[B, L, text_dim]``.

        Returns:
            Flow prediction ``[B, F, C, H, W]``.
        """
        if t.ndim == 1:
            t = t[:, None]
        else:
            self._check(x, t)
        f = x.shape[1] // self.config.patch_size[0]
        pos = grid_positions(torch.arange(f), *self.token_grid(*x.shape[-2:]))
        freqs = rope_freqs(pos, self.config.head_dim, self.config.rope_theta).to(x.device)

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return attention(apply_rope(q, freqs), apply_rope(k, freqs), v)

        return self._run(x, t, context, lambda _i: attend)


def build_tiny(preset: str = "tiny", **overrides: object) -> CausalWanModel:
    """Randomly initialised small :class:`CausalWanModel` (seed with ``torch.manual_seed`` first)."""
    return CausalWanModel(tiny_config(preset, **overrides))
