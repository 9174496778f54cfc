"""One video run of :class:`lrag.modules.generator.GeneratorModule`: its state and the resume check.

A run is one generated video and one row of the store's ``runs`` table. ``lrag predict ...
--resume RUN_ID`` continues a run bit-identically only with the knobs that shape its latents
and the same backbone weights, so :func:`check_resume_config` refuses anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hashlib

import yaml
from torch import Tensor

from lrag.data.prompts import WorldSpec
from lrag.runs.compat import fill_defaults, migrate_config
from lrag.runs.lease import RunLease
from lrag.runs.outputs import RunOutputs

__all__ = ["LATENT_KNOBS", "VideoRun", "check_resume_config", "check_run_folder"]

#: Model knobs that change the latents; a resumed run must use the values it started with.
LATENT_KNOBS = ("num_frames", "sampling", "channels", "height", "width", "backbone", "memory",
                "schedule", "text_encoder", "backbone_checkpoint", "embedder_checkpoint")


@dataclass
class VideoRun:
    """State of one video being generated (one run in the store)."""

    run_id: str
    prompt: str
    seed: int
    outputs: RunOutputs
    world: WorldSpec | None = None
    #: Prompt switches ``[{"frame", "prompt"}]`` from frame 0 on; empty = ``prompt`` throughout.
    schedule: list[dict] = field(default_factory=list)
    done_blocks: int = 0
    resume_latents: Tensor | None = None
    frames_done: int = 0
    seconds: float = 0.0
    progress: Any = None
    task: Any = None
    #: This process's write lease of the run folder (released when the run ends).
    lease: RunLease | None = None


def _differences(old: Any, new: Any, path: str) -> list[str]:
    """Dotted paths where ``new`` differs from ``old`` (``sampling.window (10 -> 12)``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{path}.{key}")]
    return [] if old == new else [f"{path} ({old!r} -> {new!r})"]


def check_resume_config(info: dict, config_yaml: str, backbone_weights: Callable[[], str],
                        out_dir: str) -> None:
    """Refuse (``SystemExit``) to resume a run with other latent knobs or backbone weights.

    Args:
        info: The run's ``runs`` row (:meth:`lrag.memory.store.MemoryStore.get_run`).
        config_yaml: The resolved config of this process.
        backbone_weights: Digest of the backbone tensors now; called only when the run has one
            (hashing a full-size backbone takes a while).
        out_dir: Parent folder of the run directories, where the run's ``config.yaml`` is.
    """
    # Both sides in the current layout: a run stored before a class moved still resumes.
    current = migrate_config(yaml.safe_load(config_yaml) or {}).get("model", {})
    stored = fill_defaults(migrate_config(yaml.safe_load(info["config_yaml"]) or {}).get("model", {}), current)
    stored, current = stored.get("init_args", stored), current.get("init_args", current)
    changed = [path for k in LATENT_KNOBS if k in stored
               for path in _differences(stored.get(k), current.get(k), k)]
    theirs = info["checkpoint_hashes"].get("backbone_weights")
    if theirs is not None and theirs != backbone_weights():
        changed.append("backbone weights (seed_everything or backbone_checkpoint)")
    if changed:
        raise SystemExit(
            f"--resume {info['run_id']}: the config differs from the run's in "
            f"{', '.join(changed)}; resume with the config the run was started with "
            f"(saved as {Path(out_dir) / info['run_id'] / 'config.yaml'})."
        )


def check_run_folder(info: dict, run_dir: str | Path) -> None:
    """Refuse (``SystemExit``) to resume from a folder whose inputs are not the run's own.

    ``config.yaml`` must be the config the store recorded, and ``world.json`` must have the hash
    recorded when the run started (runs stored before the hash was recorded skip that check).

    Args:
        info: The run's ``runs`` row.
        run_dir: ``<out_dir>/<run_id>``.
    """
    run_dir = Path(run_dir)
    problems = []
    config = run_dir / "config.yaml"
    if config.is_file() and config.read_text(encoding="utf-8") != info["config_yaml"]:
        problems.append(f"{config} is not the config the store recorded for the run")
    want = info["checkpoint_hashes"].get("world_json")
    world = run_dir / "world.json"
    if want is not None:
        if not world.is_file():
            problems.append(f"{world} is missing")
        elif hashlib.sha256(world.read_bytes()).hexdigest() != want:
            problems.append(f"{world} differs from the one the run started with (hash mismatch)")
    if problems:
        raise SystemExit(
            f"--resume {info['run_id']}: {'; '.join(problems)}. The folder no longer holds this "
            "run's inputs; restore them from a backup or start a new run."
        )
