"""The generator's backbone weights from whichever file the config names.

A camera-conditioned backbone takes a ``BackboneFitModule`` checkpoint or its export
(:mod:`lrag.checkpoints.backbone_fit`); a plain backbone takes any upstream generator
checkpoint (:mod:`lrag.checkpoints.upstream`).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from lrag.assets import resolve_asset
from lrag.checkpoints.backbone_fit import BackboneFitInfo, load_backbone_fit
from lrag.checkpoints.io import checkpoint_hash
from lrag.checkpoints.upstream import load_backbone_weights

log = logging.getLogger(__name__)

__all__ = ["MATCH_TRAINING", "load_generator_weights"]

#: Sampling knobs that should equal the backbone's training values.
MATCH_TRAINING = ("frames_per_block", "positions", "memory_position", "sink_mode")


def load_generator_weights(backbone: nn.Module, path: str, field: str, knobs: dict[str, Any]
                           ) -> tuple[str, BackboneFitInfo | None]:
    """Load ``path`` (``asset:`` names allowed) strictly into ``backbone``.

    A camera-conditioned backbone takes a ``BackboneFitModule`` checkpoint or its export;
    a plain backbone takes any generator checkpoint (:func:`load_backbone_weights`).

    Args:
        backbone: The injected backbone.
        path: Config value of ``field``.
        field: Config field name, for error messages.
        knobs: The generator's knobs; differences from training knobs are logged.

    Returns:
        ``(sha256 of the file, training info or None)``.
    """
    path = resolve_asset(path, field)
    if hasattr(backbone, "camera"):
        info = load_backbone_fit(backbone, path)
        for name in MATCH_TRAINING:
            trained = info.knobs.get(name)
            if trained is not None and knobs.get(name) != trained:
                log.warning("%s: %s=%r at sampling but %r in training (%s)", field, name,
                            knobs.get(name), trained, path)
    else:
        load_backbone_weights(backbone, path)
        info = None
    return checkpoint_hash(path), info
