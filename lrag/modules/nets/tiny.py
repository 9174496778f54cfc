"""Tiny causal DiT for the CPU default: the same :class:`CausalWanModel`, small presets.

There is one model class; this module only names the small configurations and
builds them, so the embedded default and the full-size backbone share every line
of the network and the KV-cache code.
"""

from __future__ import annotations

from lrag.modules.nets.wan import PRESETS, CausalWanModel, WanConfig

__all__ = ["TINY_PRESETS", "build_tiny", "tiny_config"]

# Names accepted by build_tiny; all resolve through the shared Wan PRESETS registry.
TINY_PRESETS = ("tiny", "golden_tiny")


def tiny_config(preset: str = "tiny", **overrides: object) -> WanConfig:
    """A small :class:`WanConfig`, optionally with fields overridden.

    Args:
        preset: ``"tiny"`` (CPU default) or ``"golden_tiny"`` (the fixture's config).
        **overrides: WanConfig fields to replace, e.g. ``num_layers=4``.

    Raises:
        ValueError: For an unknown preset or field.
    """
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; choose one of {TINY_PRESETS}")
    cfg = PRESETS[preset]()
    fields = set(cfg.__dataclass_fields__)
    bad = set(overrides) - fields
    if bad:
        raise ValueError(f"tiny_config: unknown WanConfig fields {sorted(bad)}")
    return WanConfig(**{**{f: getattr(cfg, f) for f in fields}, **overrides})


def build_tiny(preset: str = "tiny", **overrides: object) -> CausalWanModel:
    """Randomly initialised tiny :class:`CausalWanModel` (seed with ``torch.manual_seed`` first)."""
    return CausalWanModel(tiny_config(preset, **overrides))
