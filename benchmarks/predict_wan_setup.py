"""Building what ``predict_wan.py`` measures: device, random-weight model and embedder, samplers.

Also the units, dtypes and the :class:`Mode` list the benchmark runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from dataclasses import dataclass

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
GIB, MIB = 2.0**30, 2.0**20


@dataclass
class Mode:
    """One measured configuration: native (``memory_size 0``) or RAG with a KV tier.

    ``sdpa`` and ``rope_cache`` are the backbone's speed knobs (``CausalWanModel.attention_backend``,
    ``.rope_cache``), set on the shared model before each run of this mode; a non-default
    value is a suffix of ``name`` (``native[cudnn,no-rope-cache]``), ``base`` is the name without it.
    """

    base: str
    memory_size: int
    kv_tier: str
    store_stride: int = 1  # RetrievalMemory.store_stride: keep every n-th evicted frame
    sdpa: str = "auto"
    rope_cache: bool = True

    @property
    def variant(self) -> str:
        knobs = ([self.sdpa] if self.sdpa != "auto" else []) + ([] if self.rope_cache else ["no-rope-cache"])
        return f"[{','.join(knobs)}]" if knobs else ""

    @property
    def name(self) -> str:
        return self.base + self.variant


def modes_from(args: argparse.Namespace) -> list[Mode]:
    native = [Mode("native", 0, "device")] if "native" in args.modes else []
    rag = []
    for token in args.kv_tier:  # TIER or TIER:N (store_stride N)
        tier, _, stride = token.partition(":")
        n = int(stride or 1)
        rag.append(Mode(f"rag-{tier}" + (f"-s{n}" if n > 1 else ""), args.memory_size, tier, n))
    base = native + (rag if "rag" in args.modes else [])
    sdpa = getattr(args, "sdpa_backend", None) or ["auto"]
    rope = getattr(args, "rope_cache", None) or ["on"]
    return [dataclasses.replace(m, sdpa=s, rope_cache=r == "on") for s in sdpa for r in rope for m in base]


def apply_knobs(mode: Mode, model: torch.nn.Module) -> None:
    """Set ``mode``'s backbone speed knobs on the (shared) model before it runs."""
    model.attention_backend = mode.sdpa
    model.rope_cache = mode.rope_cache


def setup_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False: no GPU or a CPU-only torch")
        if device.index is None:  # set_device() needs an index ("cuda" alone is refused)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        # TF32 only touches fp32 matmuls (norm statistics, the float64->fp32 paths stay exact).
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True  # fixed shapes: the patch-embedding conv is tuned once
    name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return device, DTYPES[name]


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    cuda = device.type == "cuda"
    return {"torch": torch.__version__, "python": platform.python_version(), "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "host": platform.node(), "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB if cuda else None,
            # SDPA picks the first usable of these per call (flash for bf16 head_dim 128 on Hopper).
            "sdpa_enabled": [name for name in ("flash", "cudnn", "mem_efficient", "math")
                             if getattr(torch.backends.cuda, f"{name}_sdp_enabled", lambda: False)()]}


def build_backbone(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random-weight ``CausalWanModel`` of ``--preset`` (and ``--num-layers``); see :func:`init_backbone`."""
    from lrag.nets.wan import PRESETS

    if args.preset not in PRESETS:
        raise SystemExit(f"--preset {args.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[args.preset]()
    if args.num_layers is not None:
        cfg.num_layers = args.num_layers
    return init_backbone(cfg, device, dtype, args.seed, getattr(args, "compile", False),
                         getattr(args, "compile_mode", "default"))


def init_backbone(cfg, device: torch.device, dtype: torch.dtype, seed: int, compile_blocks: bool = False,
                  compile_mode: str = "default", fp8: bool = False) -> torch.nn.Module:
    """Random-weight ``CausalWanModel`` of ``cfg`` built on the meta device, then materialised in place.

    Initialising on the target device in the target dtype avoids a 5.7 GB fp32 CPU copy
    at full size. Weights follow the fixture's rule (N(0, 1/fan_in), unit norm gains,
    modulation N/sqrt(dim)) so activations stay O(1) through all layers.
    """
    from lrag.nets.wan import CausalWanModel

    with torch.device("meta"):
        model = CausalWanModel(cfg, fp8=fp8)
    model = model.to_empty(device=device).to(dtype).eval().requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation"):
                p.normal_(0.0, cfg.dim**-0.5, generator=gen)
            elif p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:  # norm gains
                p.fill_(1.0)
    if fp8:
        model.refresh_fp8()  # the weights were set in place after the FP8 copies were planned
    if compile_blocks:
        # Every block minus its self-attention call: the KV cache's slicing stays eager (it
        # changes until the window is full and would recompile); the halves have one shape.
        model.compile_blocks(**({"mode": compile_mode} if compile_mode != "default" else {}))
    return model


def build_embedder(args: argparse.Namespace, in_dim: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
    """A random frame embedder at the latent size (reference defaults otherwise) for ``--descriptor ae``."""
    if args.descriptor != "ae":
        return None
    from lrag.nets.autoencoder import AEConfig, LatentAE

    torch.manual_seed(args.seed)
    with torch.device(device):
        ae = LatentAE(AEConfig(in_channels=in_dim, spatial_h=args.height, spatial_w=args.width))
    return ae.to(dtype).eval().requires_grad_(False)


def kv_bytes_per_frame(model: torch.nn.Module, args: argparse.Namespace, dtype: torch.dtype) -> int:
    """K and V of one frame in all layers: layers x tokens x dim x 2 x bytes (~288 MB for 1.3B bf16)."""
    h, w = model.token_grid(args.height, args.width)
    return model.config.num_layers * h * w * model.config.dim * 2 * torch.finfo(dtype).bits // 8


def make_sampler(mode: Mode, model: torch.nn.Module, args: argparse.Namespace, embedder: torch.nn.Module | None):
    from lrag.memory.bank import RetrievalMemory
    from lrag.sampling.sampler import ARSampler
    from lrag.sampling.schedule import FlowMatchSchedule
    from lrag.sampling.settings import SamplerSettings

    schedule = FlowMatchSchedule(shift=args.shift, denoising_steps=args.steps, warp=True)
    memory = RetrievalMemory(mode.memory_size, args.recent_exclude, args.descriptor, None, mode.kv_tier,
                             store_stride=mode.store_stride)
    if embedder is not None:
        memory.set_embedder(embedder)
    return ARSampler(model, schedule, memory, SamplerSettings(args.frames_per_block, args.window, args.sink))


def make_noise(sampler, args: argparse.Namespace, context: torch.Tensor, seed: int):
    from lrag.sampling.sampler import SeededNoise

    return SeededNoise(seed, context.shape[0], sampler.backbone.config.in_dim, args.height, args.width,
                       args.frames_per_block, device=context.device, dtype=context.dtype)
