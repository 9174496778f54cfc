"""The frame embedder: a convolutional autoencoder over single latent frames.

The encoder turns one latent frame ``[C, H, W]`` into a descriptor ``[D]`` used for cosine
retrieval; the decoder only exists to train it (reconstruction keeps descriptors informative).
Module and parameter names follow the reference ``ae/model.py`` so its ``ae_latent_mem.pt``
checkpoints load without renaming:

* encoder ``conv_stack``: per level ``[Conv s2, GroupNorm, SiLU, ResBlock]``; then
  ``final_norm`` ``[GroupNorm, SiLU]``, global average pooling and ``fc``.
* decoder ``fc`` ``[Linear, SiLU]``, reshape to the bottleneck, ``upsample_stack`` per level
  ``[Upsample x2, Conv, GroupNorm, SiLU, ResBlock]``, ``final`` ``[Upsample x2, Conv]`` and a
  crop to the input size (a stride-2 encoder rounds odd sizes up, so the decoder overshoots).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

log = logging.getLogger(__name__)


Pool = Literal["mean", "flatten", "gem"]
POOLS: tuple[str, ...] = get_args(Pool)


@dataclass
class AEConfig:
    """Frame-embedder hyper-parameters, with the reference ``AEConfig`` field names.

    Attributes:
        in_channels: Latent channels per frame (Wan2.1 VAE: 16).
        spatial_h: Latent frame height; the decoder crops its output to it.
        spatial_w: Latent frame width.
        latent_dim: Descriptor size D; it is also the memory table's vector width.
        hidden_dims: Channels per stride-2 level; the number of levels is its length.
        seq_len: Frames per training clip (the temporal losses need at least 2).
        delta_margin: Cosine similarity above which the temporal delta loss penalises.
        delta_weight: Weight of the Window Temporal Delta loss.
        delta_window: Largest temporal offset w compared by the delta loss.
        smooth_weight: Weight of the second-difference smoothness loss.
        pool: How the encoder turns its last feature map into the descriptor: ``"mean"``
            (reference: global average, a shift-tolerant bag of features) or ``"flatten"``
            (keep the bottleneck's layout; for tiny frames, whose 2x2 map mean pooling would
            reduce to a bag of four cells that the decoder cannot reconstruct) or ``"gem"``
            (generalised mean ``mean(x^p)^(1/p)`` over positions, learnable p starting at
            ``gem_p``: between the average (p = 1) and the maximum (p -> inf), so a few strong
            local features are not washed out by the rest of the frame).
        gem_p: Initial exponent of ``pool: gem`` (3 is the usual image-retrieval start).
    """

    in_channels: int = 16
    spatial_h: int = 60
    spatial_w: int = 104
    latent_dim: int = 1024
    hidden_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    seq_len: int = 8
    delta_margin: float = 0.85
    delta_weight: float = 1.0
    delta_window: int = 3
    smooth_weight: float = 1.0
    pool: Pool = "mean"
    gem_p: float = 3.0

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"AEConfig.pool={self.pool!r}; use one of {POOLS}")
        if self.gem_p < 1.0:
            raise ValueError(f"AEConfig.gem_p={self.gem_p}; use a value >= 1 (1 = average pooling)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "AEConfig":
        """Build from a dict that may carry extra (training-only) fields, as the reference does.

        Args:
            data: Field values; keys that are not ``AEConfig`` fields are ignored.
            source: Where ``data`` came from, for error messages.

        Raises:
            ValueError: ``data`` is not a dict or holds an invalid value; the message starts with ``source``.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: config must be a dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        try:
            cfg = cls(**{k: v for k, v in data.items() if k in names})
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        cfg.hidden_dims = [int(h) for h in cfg.hidden_dims]
        if not cfg.hidden_dims:
            raise ValueError(f"{source}: hidden_dims is empty; give at least one level")
        return cfg


def _num_groups(channels: int, preferred: int = 32) -> int:
    """GroupNorm group count: the first of (preferred, 16, 8, 4, 1) that divides ``channels``."""
    for groups in (preferred, 16, 8, 4, 1):
        if channels % groups == 0:
            return groups
    return 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_num_groups(channels), channels)


class ResBlock(nn.Module):
    """Pre-norm residual block ``x + Conv(SiLU(GN(Conv(SiLU(GN(x))))))``.

    Args:
        dim: Channels in and out.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
            _norm(dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + self.block(x)


def bottleneck_shape(cfg: AEConfig) -> tuple[int, int, int]:
    """Encoder feature shape ``(C', H', W')`` before pooling: each level halves, rounding up."""
    h, w = cfg.spatial_h, cfg.spatial_w
    for _ in cfg.hidden_dims:
        h, w = (h + 1) // 2, (w + 1) // 2
    return cfg.hidden_dims[-1], h, w


def gem_pool(x: torch.Tensor, p: torch.Tensor | float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling ``mean_{h,w}(max(x, eps)^p)^(1/p)``: ``[N, C, H, W] -> [N, C]``.

    The clamp keeps the power defined (features after SiLU can be slightly negative); for
    non-negative inputs p = 1 is the average and large p approaches the maximum.
    """
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class Encoder(nn.Module):
    """``[N, C, H, W] -> [N, D]`` raw (un-normalised) embedding."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = cfg.in_channels
        for hidden in cfg.hidden_dims:
            layers += [nn.Conv2d(ch, hidden, 3, stride=2, padding=1), _norm(hidden), nn.SiLU()]
            layers.append(ResBlock(hidden))
            ch = hidden
        self.conv_stack = nn.Sequential(*layers)
        self.final_norm = nn.Sequential(_norm(ch), nn.SiLU())
        self.pool = cfg.pool
        _, h, w = bottleneck_shape(cfg)
        self.fc = nn.Linear(ch if cfg.pool != "flatten" else ch * h * w, cfg.latent_dim)
        if cfg.pool == "gem":
            self.gem_p = nn.Parameter(torch.tensor(float(cfg.gem_p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.final_norm(self.conv_stack(x))  # (N, C', H', W')
        if self.pool == "mean":
            return self.fc(h.mean(dim=(2, 3)))  # (N, D)
        if self.pool == "gem":
            return self.fc(gem_pool(h, self.gem_p.clamp(min=1.0)))  # (N, D)
        return self.fc(rearrange(h, "n c h w -> n (c h w)"))


class Decoder(nn.Module):
    """``[N, D] -> [N, C, H, W]``: nearest upsampling + conv (no checkerboard), then a crop."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.feat_shape = bottleneck_shape(cfg)
        self.out_hw = (cfg.spatial_h, cfg.spatial_w)
        c, h, w = self.feat_shape
        self.fc = nn.Sequential(nn.Linear(cfg.latent_dim, c * h * w), nn.SiLU())
        rev = list(reversed(cfg.hidden_dims))
        layers: list[nn.Module] = []
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
            layers += [_norm(c_out), nn.SiLU(), ResBlock(c_out)]
        self.upsample_stack = nn.Sequential(*layers)
        self.final = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(rev[-1], cfg.in_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        c, h, w = self.feat_shape
        x = rearrange(self.fc(z), "n (c h w) -> n c h w", c=c, h=h, w=w)
        x = self.final(self.upsample_stack(x))  # (N, C, 2^L H', 2^L W') >= (H, W)
        return x[:, :, : self.out_hw[0], : self.out_hw[1]]


class LatentAE(nn.Module):
    """Frame autoencoder; ``encode`` gives the L2-normalised retrieval descriptor.

    Args:
        config: Architecture and loss settings; ``None`` means the reference defaults
            (16 channels, 60x104, hidden [64, 128, 256], latent 1024).
    """

    def __init__(self, config: AEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
        # Residual branches start at zero so every ResBlock begins as the identity.
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.block[-1].weight)
                nn.init.zeros_(m.block[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct frames.

        Args:
            x: Frames ``[N, C, H, W]`` (N = B*T, batch-major).

        Returns:
            ``(recon [N, C, H, W], z_raw [N, D])``; the losses use the raw embedding.
        """
        z = self.encoder(x)
        return self.decoder(z), z

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors ``[N, D]`` of frames ``x`` ``[N, C, H, W]``."""
        return F.normalize(self.encoder(x), dim=-1)
