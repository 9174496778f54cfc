"""Importing and building the reference implementation (LongLive-RAG) for ``reference_compare.py``.

The reference is imported from a checkout given by path (github:qixinhu11/LongLive-RAG at
commit 973884a); none of its code lives in this repository. Only its causal Wan model, its
diffusion wrapper, its scheduler and its own ``CausalInferencePipeline.inference`` loop run.
What it imports but never runs on this path is replaced in ``sys.modules`` before the import:

* ``flash_attn``: :mod:`flash_attn_sdpa` (SDPA kernels under flash-attn's API), so both its
  self- and cross-attention go through its own ``flash_attention`` wrapper as on a flash-attn
  machine (FA3 is hidden: the FA2 branch runs).
* the ``wan`` and ``wan.modules`` package ``__init__`` files (they import the T5, CLIP, VAE and
  distributed code), and ``wan.modules.tokenizers`` / ``t5`` / ``vae`` (text encoder and VAE, never
  built here; t5.py reads the CUDA device at import): empty packages and placeholders.
* ``utils.memory``: it reads ``torch.cuda.current_device()`` at import; only its low-memory
  offload helpers live there, and ``inference(low_memory=False)`` never calls them.
* ``diffusers`` (only when it is not installed): ``ModelMixin`` / ``ConfigMixin`` /
  ``register_to_config`` are base classes and a decorator that add loading and config
  bookkeeping, nothing on the forward path.

The diffusion wrapper is built without its constructor, which would read weights from
``wan_models/``; :func:`build_pipeline` sets the same attributes the constructor sets.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

import torch
from flash_attn_sdpa import install as install_flash_attn_shim

REFERENCE_REPO = "github:qixinhu11/LongLive-RAG"
REFERENCE_COMMIT = "973884a3cd3ad4b314c3d4ab42274c52e7a0b22a"
# Files of the checkout that this path imports (the carry list for a GPU machine).
NEEDED = ("wan/modules/attention.py", "wan/modules/model.py", "wan/modules/causal_model.py",
          "wan/modules/causal_model_latentmem.py",
          "utils/wan_wrapper.py", "utils/scheduler.py",
          "utils/debug_option.py", "utils/lora_utils.py", "pipeline/__init__.py", "pipeline/causal_inference.py",
          "ae/__init__.py", "ae/config.py", "ae/model.py", "ae/dataset.py")
_TOP_LEVEL = ("wan", "utils", "pipeline", "ae")


def check_checkout(path: str | Path) -> Path:
    """The checkout's root; one-line SystemExit naming the missing files otherwise."""
    root = Path(path).expanduser().resolve()
    missing = [name for name in NEEDED if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"--reference {path}: not a LongLive-RAG checkout (missing {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}); clone {REFERENCE_REPO} at {REFERENCE_COMMIT[:7]} "
                         "or copy the files listed in BENCHMARKS.md there")
    return root


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """An empty package whose submodules load from ``path`` (its ``__init__`` is skipped)."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = module
    return module


def _refuse(what: str):
    def call(*_args, **_kwargs):
        raise RuntimeError(f"{what} is stubbed in reference_compare (not on the measured path)")
    return call


def _stub_memory_module() -> None:
    memory = types.ModuleType("utils.memory")
    memory.cpu = torch.device("cpu")
    memory.gpu = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    for name in ("get_cuda_free_memory_gb", "log_gpu_memory", "move_model_to_device_with_memory_preservation",
                 "offload_model_from_device_for_memory_preservation", "unload_complete_models",
                 "load_model_as_complete"):
        setattr(memory, name, _refuse(f"utils.memory.{name}"))
    memory.DynamicSwapInstaller = type("DynamicSwapInstaller", (), {"install_model": staticmethod(_refuse("swap"))})
    sys.modules["utils.memory"] = memory


def _stub_diffusers() -> None:
    """Minimal ``ModelMixin`` / ``ConfigMixin`` / ``register_to_config`` (no loading, no hub)."""
    def register_to_config(init):
        @functools.wraps(init)
        def wrapped(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.config = types.SimpleNamespace(**kwargs)  # the reference passes keywords only here
        return wrapped

    root = _package("diffusers")
    configuration = types.ModuleType("diffusers.configuration_utils")
    configuration.ConfigMixin = type("ConfigMixin", (), {})
    configuration.register_to_config = register_to_config
    models = _package("diffusers.models")
    modeling = types.ModuleType("diffusers.models.modeling_utils")
    modeling.ModelMixin = type("ModelMixin", (torch.nn.Module,), {})
    root.configuration_utils, root.models, models.modeling_utils = configuration, models, modeling
    sys.modules.update({configuration.__name__: configuration, modeling.__name__: modeling})


def _diffusers_installed() -> bool:
    try:
        import diffusers.configuration_utils  # noqa: F401
        import diffusers.models.modeling_utils  # noqa: F401
    except ImportError:
        return False
    return True


def load_reference(path: str | Path, stub_diffusers: bool | None = None) -> types.SimpleNamespace:
    """Import the reference's model, wrapper, scheduler and pipeline from the checkout at ``path``.

    Args:
        path: Root of a LongLive-RAG checkout.
        stub_diffusers: Replace diffusers' two base classes; None: only when it is not installed.

    Returns:
        A namespace with ``CausalWanModel``, ``WanDiffusionWrapper``, ``FlowMatchScheduler``,
        ``CausalInferencePipeline``, ``attention`` (its attention module), ``root`` and
        ``stubbed`` (names replaced in ``sys.modules``).
    """
    root = check_checkout(path)
    clash = [n for n in _TOP_LEVEL if n in sys.modules and not str(getattr(sys.modules[n], "__path__", [""])[0])
             .startswith(str(root))]
    if clash:
        raise RuntimeError(f"modules {clash} are already imported from elsewhere; run in a fresh process")
    os.environ.setdefault("TQDM_DISABLE", "1")  # its block loop draws a progress bar otherwise
    stubbed = ["flash_attn", "wan", "wan.modules", "wan.modules.tokenizers", "wan.modules.t5", "wan.modules.vae",
               "utils.memory"]
    # A real diffusers is imported before the shim exists, so it never sees a flash_attn.
    if stub_diffusers or (stub_diffusers is None and not _diffusers_installed()):
        _stub_diffusers()
        stubbed.append("diffusers")
    install_flash_attn_shim()
    wan = _package("wan", root / "wan")
    wan.modules = _package("wan.modules", root / "wan" / "modules")
    # Text encoder and VAE: never built here (t5.py also reads the CUDA device at import).
    for name, attr in (("tokenizers", "HuggingfaceTokenizer"), ("t5", "umt5_xxl"), ("vae", "_video_vae")):
        placeholder = types.ModuleType(f"wan.modules.{name}")
        setattr(placeholder, attr, _refuse(f"wan.modules.{name}.{attr}"))
        sys.modules[placeholder.__name__] = placeholder
    _package("utils", root / "utils")
    _stub_memory_module()
    sys.path.insert(0, str(root))
    try:
        from pipeline.causal_inference import CausalInferencePipeline
        from utils.scheduler import FlowMatchScheduler
        from utils.wan_wrapper import WanDiffusionWrapper
        from wan.modules import attention
        from wan.modules.causal_model import CausalWanModel
    finally:
        sys.path.remove(str(root))
    if not attention.FLASH_ATTN_2_AVAILABLE or attention.FLASH_ATTN_3_AVAILABLE:
        raise RuntimeError("the reference did not pick the flash_attn shim (FA2 branch); check its attention.py")
    return types.SimpleNamespace(root=root, stubbed=stubbed, CausalWanModel=CausalWanModel,
                                 WanDiffusionWrapper=WanDiffusionWrapper, FlowMatchScheduler=FlowMatchScheduler,
                                 CausalInferencePipeline=CausalInferencePipeline, attention=attention)


class AttrDict(dict):
    """A dict read by attribute too, as the reference reads its OmegaConf ``model_kwargs``."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TextEmbeddings(torch.nn.Module):
    """Stands in for the umT5 encoder: returns fixed embeddings ``[B, text_len, text_dim]``."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, text_prompts: list[str]) -> dict:
        return {"prompt_embeds": self.embeddings}


def build_model(ref: types.SimpleNamespace, cfg, window: int, sink: int, device: torch.device,
                dtype: torch.dtype, state_dict: dict | None) -> torch.nn.Module:
    """The reference ``CausalWanModel`` at ``cfg`` (our :class:`WanConfig`, same field names).

    Built directly on ``device`` (its ``freqs`` table too), then given ``state_dict`` (ours: the
    key names are the reference's) so both implementations run the same weights.
    """
    with torch.device(device):
        model = ref.CausalWanModel(
            model_type="t2v", patch_size=tuple(cfg.patch_size), text_len=cfg.text_len, in_dim=cfg.in_dim,
            dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
            num_heads=cfg.num_heads, num_layers=cfg.num_layers, local_attn_size=window, sink_size=sink,
            qk_norm=cfg.qk_norm, cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.to(dtype).eval().requires_grad_(False)


def build_pipeline(ref: types.SimpleNamespace, model: torch.nn.Module, context: torch.Tensor, args,
                   tokens_per_frame: int) -> torch.nn.Module:
    """The reference ``CausalInferencePipeline`` around ``model``, configured as ``longlive_native.yaml``.

    ``args`` gives the window, sink, steps, shift and frames per block. The pipeline hard-codes
    30 layers and 1560 tokens per frame (the 1.3B model at 832x480); both are set from the
    model afterwards, which is a no-op at full size.
    """
    wrapper = ref.WanDiffusionWrapper.__new__(ref.WanDiffusionWrapper)
    torch.nn.Module.__init__(wrapper)
    # What WanDiffusionWrapper.__init__(is_causal=True, ...) sets, minus from_pretrained.
    wrapper.model = model
    wrapper.uniform_timestep = False
    wrapper.scheduler = ref.FlowMatchScheduler(shift=args.shift, sigma_min=0.0, extra_one_step=True)
    wrapper.scheduler.set_timesteps(1000, training=True)
    wrapper.seq_len = 1560 * args.window if args.window > 21 else 32760
    wrapper.post_init()
    config = types.SimpleNamespace(
        model_kwargs=AttrDict(local_attn_size=args.window, timestep_shift=args.shift, sink_size=args.sink),
        denoising_step_list=list(args.steps), warp_denoising_step=True,
        num_frame_per_block=args.frames_per_block, context_noise=0)
    pipe = ref.CausalInferencePipeline(config, device=context.device, generator=wrapper,
                                       text_encoder=TextEmbeddings(context), vae=torch.nn.Identity())
    pipe.num_transformer_blocks = model.num_layers
    pipe.frame_seq_length = tokens_per_frame
    if (model.num_heads, model.dim // model.num_heads) != (12, 128):
        raise ValueError("the reference pipeline allocates its KV cache as 12 heads x 128; "
                         f"got {model.num_heads} x {model.dim // model.num_heads}")
    return pipe


class BlockStamps:
    """Marks the end of every block of the reference loop without a host sync.

    A forward hook on the diffusion wrapper counts calls; each block makes ``calls_per_block``
    (denoising steps + the context pass) and the last one ends it.
    """

    def __init__(self, wrapper: torch.nn.Module, calls_per_block: int, device: torch.device) -> None:
        self.calls_per_block, self.device = calls_per_block, device
        self.calls, self.stamps = 0, []
        self._handle = wrapper.register_forward_hook(self._after)

    def _after(self, _module, _inputs, _output) -> None:
        self.calls += 1
        if self.calls % self.calls_per_block == 0:
            self.stamps.append(stamp(self.device))

    def reset(self) -> None:
        self.calls, self.stamps = 0, []

    def remove(self) -> None:
        self._handle.remove()


def stamp(device: torch.device):
    """A CUDA event recorded now on the current stream, or ``perf_counter()`` on CPU."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).record_event(torch.cuda.Event(enable_timing=True))
    import time
    return time.perf_counter()


def seconds_between(a, b) -> float:
    """Elapsed seconds between two :func:`stamp` results (after the device is synced)."""
    return a.elapsed_time(b) / 1e3 if isinstance(a, torch.cuda.Event) else b - a
