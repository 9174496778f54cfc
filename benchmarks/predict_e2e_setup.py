"""Building what ``predict_e2e.py`` measures: the config (random weights), the CLI objects and
stand-ins for the parts whose weights the benchmark machine lacks.

Random weights everywhere: ``backbone_checkpoint: null`` (seeded initialisation), ``descriptor:
avg_pool`` (no embedder file), and

* the text encoder: ``TinyTextEncoder`` at umT5's output shape (512 x 4096) -- the umT5 tokenizer
  cannot be built without its files. For the <= 24 GB config a ``BallastTextEncoder`` adds
  umT5-XXL's 5.7 B bf16 parameters (11.4 GB) as one tensor, so the peak GPU memory counts what
  the real encoder occupies while it encodes (and ``text_encoder_offload`` must move it away);
* the codec: ``LinearRGBCodec`` (8x upsampling, 480x832 frames) for the throughput config; for
  the <= 24 GB config a random-weight Wan2.1 VAE (diffusers' ``AutoencoderKLWan`` defaults =
  Wan2.1's architecture) saved to a folder and read by ``WanVAECodec`` as from a checkout, when
  diffusers is importable (else ``LinearRGBCodec``, and the report says so).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

log = logging.getLogger("predict_e2e")

UMT5_XXL_PARAMS = 5_680_000_000  # umT5-XXL encoder parameters (google/umt5-xxl, encoder only)


class BallastTextEncoder(nn.Module):
    """``TinyTextEncoder`` output plus umT5-XXL's parameter memory (one bf16 tensor, never read).

    Args:
        text_len: Context length L.
        text_dim: Context width D.
        params: Parameters of the encoder it stands in for.
    """

    def __init__(self, text_len: int, text_dim: int, params: int = UMT5_XXL_PARAMS) -> None:
        super().__init__()
        from lrag.nets.conditioning import TinyTextEncoder

        self.inner = TinyTextEncoder(text_len, text_dim)
        # torch.empty: pages are touched only when the tensor is moved, like loading real weights.
        self.ballast = nn.Parameter(torch.empty(params, dtype=torch.bfloat16), requires_grad=False)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Context ``[B, text_len, text_dim]`` (the ballast is not read)."""
        return self.inner(prompts)


def _set(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def can_write_video() -> bool:
    """Whether PyAV is importable (the GPU image lacks it and it is too large to carry)."""
    import importlib.util

    return importlib.util.find_spec("av") is not None


def random_weight_config(path: str, out: Path, frames: int | None, tiny: bool,
                         vae_folder: Path | None) -> dict:
    """The config at ``path`` with random weights, outputs under ``out`` and (``tiny``) CPU sizes.

    Args:
        path: A ``configs/predict/*.yaml`` file.
        out: Folder of the runs, store and TensorBoard logs.
        frames: Latent frames per video (None keeps the config's).
        tiny: The tiny backbone on CPU at 8x8 latents (checks the plumbing, not the speed).
        vae_folder: A folder holding ``vae/`` for ``WanVAECodec`` (None: ``LinearRGBCodec``).

    ``write_video`` is on where PyAV is importable (frames are decoded for the previews either way).
    """
    cfg = copy.deepcopy(yaml.safe_load(Path(path).read_text()))
    model = "model.init_args"
    text_len, text_dim = 512, 4096
    _set(cfg, "trainer.logger.init_args.save_dir", str(out / "runs"))
    for key, value in {"backbone_checkpoint": None, "embedder_checkpoint": None, "progress": False,
                       "out_dir": str(out / "runs"), "store_uri": str(out / "runs" / "memory.lancedb"),
                       "write_video": can_write_video(), "run_name": None}.items():
        _set(cfg, f"{model}.{key}", value)
    _set(cfg, f"{model}.memory.init_args.descriptor", "avg_pool")
    _set(cfg, f"{model}.memory.init_args.embedder_path", None)
    if tiny:
        _set(cfg, "trainer.accelerator", "cpu")
        _set(cfg, "trainer.precision", "32-true")
        _set(cfg, f"{model}.backbone.init_args", {"preset": "tiny"})
        _set(cfg, f"{model}.height", 8)
        _set(cfg, f"{model}.width", 8)
        text_len, text_dim = 16, 32
    if frames is not None:
        _set(cfg, f"{model}.num_frames", frames)
    _set(cfg, f"{model}.text_encoder", {"class_path": "lrag.nets.conditioning.TinyTextEncoder",
                                        "init_args": {"text_len": text_len, "text_dim": text_dim}})
    if vae_folder is not None:
        codec = cfg[model.split(".")[0]]["init_args"]["codec"]
        codec["init_args"] = {**codec.get("init_args", {}), "folder": str(vae_folder)}
    else:
        _set(cfg, f"{model}.codec", {"class_path": "lrag.nets.codecs.LinearRGBCodec",
                                     "init_args": {"channels": 16, "upscale": 8}})
    return cfg


def random_wan_vae(folder: Path, tiny: bool) -> Path | None:
    """Save a random-weight Wan2.1 VAE as ``folder/vae`` (None if diffusers is missing)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        log.warning("diffusers is not importable: the 24 GB config decodes with LinearRGBCodec instead of "
                    "the Wan VAE (its peak then lacks the VAE's activations)")
        return None
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8) if tiny else AutoencoderKLWan()  # defaults: Wan2.1's VAE
    vae.save_pretrained(folder / "vae")
    return folder


def build_cli(cfg: dict, out: Path):
    """``LragCLI`` objects (model, trainer, datamodule) of ``cfg``, as ``lrag predict`` builds them."""
    from lrag.commands.lightning_cli import LragCLI

    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return LragCLI(model_class=None, datamodule_class=None, subclass_mode_model=True,
                   subclass_mode_data=True, args=["--config", str(path)], run=False,
                   save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})


def reserve_ring(module, frames: int, device: torch.device, dtype: torch.dtype) -> None:
    """Reserve (pin) the host ring for the whole video before any clock starts: every later run
    of the same memory reuses it, so neither the bare nor the e2e numbers include page-locking."""
    model, hp = module.backbone, module.hparams
    th, tw = model.token_grid(hp.height, hp.width)
    cfg = model.config
    shape = (1, cfg.num_layers, th * tw, cfg.num_heads, cfg.dim // cfg.num_heads)
    module.memory.reserve(max(frames + module.sampling.prefix - module.sampling.window, 0), shape, dtype, device)
