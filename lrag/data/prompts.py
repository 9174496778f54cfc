"""Predict-time data: prompts (from YAML or a text file) with one seed each, or procedural worlds.

Under ``--trainer.devices N`` (or ``num_nodes``) each rank gets its own share of the videos:
video ``i`` goes to rank ``i % world_size``, exactly once (no sampler padding), with the seed it
has under one process. The loaders are iterable datasets, so Lightning does not put a
``DistributedSampler`` on top (see :func:`rank_share`).

:class:`PromptDataModule` feeds text prompts. :class:`WorldPromptDataModule` feeds procedural
worlds (:mod:`lrag.data.world`): per video a prompt, a noise seed and a :class:`WorldSpec` (the
world seed, its camera trajectory and the ground truth), so a camera-conditioned backbone gets
the same per-frame camera as in training and the run can be scored against the world later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lrag.data.world_config import WorldConfig
from lrag.data.world_datamodule import render_world

__all__ = ["PromptDataModule", "PromptDataset", "RankShare", "WorldPromptDataModule", "WorldSpec",
           "check_prompt_schedule", "collate_prompts", "prompt_at", "rank_share", "read_prompt_file",
           "read_schedule_file"]

#: One prompt switch: ``{"frame": int, "prompt": str}`` (the prompt applies from ``frame`` on).
PromptSwitch = dict[str, Any]


def read_prompt_file(path: str | Path) -> list[str]:
    """Read one prompt per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt_file {path} does not exist; write one prompt per line to it or pass "
            "--data.init_args.prompts instead."
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt_file {path} holds no prompt; write one prompt per line.")
    return prompts


def check_prompt_schedule(entries: Any, source: str = "prompt_schedule") -> list[PromptSwitch]:
    """Validate a prompt schedule and return it as ``[{"frame": int, "prompt": str}, ...]``.

    Args:
        entries: List of mappings with exactly the keys ``frame`` (latent frame index >= 0, the
            first frame the prompt applies to) and ``prompt`` (non-empty text), frames strictly
            increasing.
        source: Where the schedule came from (config field or file), for error messages.

    Raises:
        ValueError: naming the bad entry (index and value) and the fix.
    """
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(f"{source}: expected a non-empty list of {{frame, prompt}} entries, got {entries!r}.")
    out: list[PromptSwitch] = []
    for i, entry in enumerate(entries):
        where = f"{source}[{i}] = {entry!r}"
        if not isinstance(entry, Mapping) or set(entry) != {"frame", "prompt"}:
            raise ValueError(f"{where}: each entry needs exactly the keys 'frame' and 'prompt'.")
        frame, prompt = entry["frame"], entry["prompt"]
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise ValueError(f"{where}: 'frame' must be a latent frame index >= 0.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: 'prompt' must be non-empty text.")
        if out and frame <= out[-1]["frame"]:
            raise ValueError(f"{where}: frames must be strictly increasing (previous entry is at "
                             f"frame {out[-1]['frame']}).")
        out.append({"frame": frame, "prompt": prompt.strip()})
    return out


def read_schedule_file(path: str | Path) -> list[PromptSwitch]:
    """Read a schedule file: one ``frame<TAB>prompt`` line per switch (``#`` comments skipped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not ``frame<TAB>prompt`` (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"schedule_file {path} does not exist; write one `frame<TAB>prompt` "
                                "line per prompt switch, or use prompt_schedule in the YAML.")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        frame, sep, prompt = line.partition("\t")
        if not sep or not frame.strip().isdigit():
            raise ValueError(f"schedule_file {path}, line {number}: {line!r} is not "
                             "`frame<TAB>prompt` (a latent frame index, a tab, the prompt).")
        entries.append({"frame": int(frame), "prompt": prompt})
    return check_prompt_schedule(entries, f"schedule_file {path}")


def prompt_at(schedule: list[PromptSwitch], base: str, frame: int) -> str:
    """The prompt in force at latent ``frame``: the last switch at or before it, else ``base``."""
    current = base
    for entry in schedule:
        if entry["frame"] > frame:
            break
        current = entry["prompt"]
    return current


class PromptDataset(Dataset):
    """``(prompt, seed, schedule)`` triples, one per video to generate."""

    def __init__(self, prompts: list[str], seeds: list[int],
                 schedule: list[PromptSwitch] | None = None) -> None:
        self.prompts, self.seeds, self.schedule = prompts, seeds, schedule

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[str, int, list[PromptSwitch] | None]:
        return self.prompts[index], self.seeds[index], self.schedule


def rank_share(count: int, rank: int, world_size: int) -> list[int]:
    """Indices of the videos rank ``rank`` of ``world_size`` generates: ``rank, rank + N, ...``.

    Every index in ``range(count)`` belongs to exactly one rank; ranks differ by at most one
    video and a rank may get none (more ranks than videos). Nothing is padded or repeated, so no
    video is generated twice - predict needs no equal batch counts (it has no collectives).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world_size {world_size}: need 0 <= rank < world_size.")
    return list(range(rank, count, world_size))


def _rank_and_world(datamodule: L.LightningDataModule) -> tuple[int, int]:
    """``(global_rank, world_size)`` of the Trainer running ``datamodule`` (``(0, 1)`` without one)."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


class RankShare(IterableDataset):
    """This rank's items of a map-style dataset, in index order.

    Iterable on purpose: Lightning replaces the sampler of map-style datasets under a
    distributed strategy (DistributedSampler pads with duplicates); it leaves iterable ones alone.

    Args:
        dataset: All items (every rank holds the same list).
        indices: The items of this rank (:func:`rank_share`).
    """

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    # No __len__: Lightning warns that a sized IterableDataset may be miscounted with workers.
    def __iter__(self):  # noqa: D105
        return (self.dataset[i] for i in self.indices)


def collate_prompts(items: list[tuple]) -> dict[str, list]:
    """Batch as ``{"prompts": [...], "seeds": [...]}`` (+ ``"schedules"`` when any video has one)."""
    batch = {"prompts": [item[0] for item in items], "seeds": [item[1] for item in items]}
    schedules = [item[2] if len(item) > 2 else None for item in items]
    if any(s is not None for s in schedules):
        batch["schedules"] = schedules
    return batch


class PromptDataModule(L.LightningDataModule):
    """Feeds prompts to ``GeneratorModule.predict_step``.

    Args:
        prompts: Prompts given inline (YAML list). Exactly one of ``prompts`` and
            ``prompt_file`` must be set.
        prompt_file: Text file with one prompt per line (``#`` comments and blank lines skipped).
        seeds: One seed per prompt. When omitted, prompt ``i`` gets ``seed + i``.
        seed: Base seed used when ``seeds`` is omitted.
        batch_size: Prompts per ``predict_step`` call; every prompt in a batch is one video.
        prompt_schedule: Prompt switching (LongLive's interactive mode), applied to every video:
            entries ``{frame: int, prompt: str}``, frames strictly increasing and multiples of
            the generator's ``frames_per_block``. The video's prompt applies until the first
            switch; an entry at frame 0 replaces it from the start.
        schedule_file: The same schedule as a text file, one ``frame<TAB>prompt`` line per
            switch (``#`` comments and blank lines skipped); exclusive with ``prompt_schedule``.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        prompt_file: str | None = None,
        seeds: list[int] | None = None,
        seed: int = 0,
        batch_size: int = 1,
        prompt_schedule: list[dict] | None = None,
        schedule_file: str | None = None,
    ) -> None:
        super().__init__()
        if prompt_schedule is not None and schedule_file is not None:
            raise ValueError("PromptDataModule: set at most one of `prompt_schedule` and `schedule_file`.")
        self.prompt_schedule = (check_prompt_schedule(prompt_schedule, "data.init_args.prompt_schedule")
                                if prompt_schedule is not None else None)
        self.schedule_file = schedule_file
        if (prompts is None) == (prompt_file is None):
            raise ValueError(
                "PromptDataModule: set exactly one of `prompts` (a list) and `prompt_file` "
                f"(a path); got prompts={prompts!r}, prompt_file={prompt_file!r}."
            )
        if prompts is not None and not prompts:
            raise ValueError("PromptDataModule: `prompts` is empty; give at least one prompt.")
        if batch_size < 1:
            raise ValueError(f"PromptDataModule: batch_size must be >= 1, got {batch_size}.")
        self.prompt_file = prompt_file
        self._prompts = list(prompts) if prompts is not None else None
        self._seeds = list(seeds) if seeds is not None else None
        self.seed = seed
        self.batch_size = batch_size

    @property
    def prompts(self) -> list[str]:
        """The prompts, read from ``prompt_file`` on first use."""
        if self._prompts is None:
            self._prompts = read_prompt_file(self.prompt_file)
        return self._prompts

    @property
    def seeds(self) -> list[int]:
        """One seed per prompt."""
        if self._seeds is None:
            return [self.seed + i for i in range(len(self.prompts))]
        if len(self._seeds) != len(self.prompts):
            raise ValueError(
                f"PromptDataModule: {len(self._seeds)} seeds for {len(self.prompts)} prompts; "
                "give one seed per prompt or omit `seeds` to use seed + index."
            )
        return self._seeds

    @property
    def schedule(self) -> list[PromptSwitch] | None:
        """The prompt schedule of every video (``schedule_file`` read on first use), or None."""
        if self.prompt_schedule is None and self.schedule_file is not None:
            self.prompt_schedule = read_schedule_file(self.schedule_file)
        return self.prompt_schedule

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        # Order matters (this rank's i-th run gets its i-th prompt); no workers, items are strings.
        dataset = PromptDataset(self.prompts, self.seeds, self.schedule)
        share = rank_share(len(dataset), *_rank_and_world(self))
        return DataLoader(RankShare(dataset, share), batch_size=self.batch_size,
                          collate_fn=collate_prompts)


@dataclass
class WorldSpec:
    """The world of one video: what camera conditioning and scoring need.

    Attributes:
        world_seed: Seed of the world map and of its trajectory.
        positions: ``[F, 2]`` viewport (x, y) per latent frame, in latent cells.
        camera: ``[F, 2]`` displacement (dx, dy) per latent frame.
        meta: JSON-serialisable ground truth of the clip (``generate_world_clip``'s meta).
    """

    world_seed: int
    positions: Tensor
    camera: Tensor
    meta: dict[str, Any]


class _WorldDataset(Dataset):
    def __init__(self, prompts: list[str], seeds: list[int], worlds: list[WorldSpec]) -> None:
        self.prompts, self.seeds, self.worlds = prompts, seeds, worlds

    def __len__(self) -> int:
        return len(self.worlds)

    def __getitem__(self, index: int) -> tuple[str, int, WorldSpec]:
        return self.prompts[index], self.seeds[index], self.worlds[index]


def collate_worlds(items: list[tuple[str, int, WorldSpec]]) -> dict[str, list]:
    """Batch as ``{"prompts": [...], "seeds": [...], "worlds": list[WorldSpec]}``."""
    return {"prompts": [p for p, _, _ in items], "seeds": [s for _, s, _ in items],
            "worlds": [w for _, _, w in items]}


class WorldPromptDataModule(L.LightningDataModule):
    """Feeds procedural worlds to ``GeneratorModule.predict_step`` (one video per world).

    Args:
        world_seeds: World seeds, one video each. Training worlds of ``configs/backbone/demo.yaml``
            are ``0..63``; held-out worlds (e.g. ``1000+``) are what ``lrag eval`` scores.
        num_frames: Latent frames of trajectory rendered per world; at least the generator's
            ``num_frames`` (trajectories are prefix-stable, longer is harmless).
        seeds: Noise seed per world; omitted = the world seed.
        prompts: Prompt per world; omitted = the training prompt (``world_prompt``: the style).
        height: Latent frame height (world ``frame_height``; the backbone's training size).
        width: Latent frame width.
        channels: Latent channels.
        revisit_min: Shortest loop / out-and-back period of trajectories, in frames.
        revisit_max: Longest period, in frames.
        batch_size: Worlds per ``predict_step`` call (each is still its own video).
    """

    def __init__(
        self,
        world_seeds: list[int],
        num_frames: int = 120,
        seeds: list[int] | None = None,
        prompts: list[str] | None = None,
        height: int = 8,
        width: int = 8,
        channels: int = 16,
        revisit_min: int = 16,
        revisit_max: int = 40,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        if not world_seeds:
            raise ValueError("WorldPromptDataModule: `world_seeds` is empty; give at least one seed.")
        for name, values in (("seeds", seeds), ("prompts", prompts)):
            if values is not None and len(values) != len(world_seeds):
                raise ValueError(f"WorldPromptDataModule: {len(values)} {name} for {len(world_seeds)} "
                                 f"world_seeds; give one per world or omit `{name}`.")
        if num_frames < 1 or batch_size < 1:
            raise ValueError(f"WorldPromptDataModule: num_frames ({num_frames}) and batch_size "
                             f"({batch_size}) must be >= 1.")
        self.world_seeds = [int(s) for s in world_seeds]
        self.seeds = list(seeds) if seeds is not None else list(self.world_seeds)
        self._prompts = list(prompts) if prompts is not None else None
        self.num_frames, self.batch_size = num_frames, batch_size
        self.world_config = WorldConfig(frame_height=height, frame_width=width, channels=channels,
                                        revisit_min=revisit_min, revisit_max=revisit_max)

    def world(self, index: int) -> tuple[str, WorldSpec]:
        """Render world ``index``: its prompt and :class:`WorldSpec`."""
        seed = self.world_seeds[index]
        clip = render_world(seed, self.num_frames, self.world_config)
        prompt = self._prompts[index] if self._prompts is not None else clip["prompt"]
        return prompt, WorldSpec(seed, clip["positions"], clip["camera"], clip["meta"])

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        share = rank_share(len(self.world_seeds), *_rank_and_world(self))
        rendered = [self.world(i) for i in share]  # render only this rank's worlds
        dataset = _WorldDataset([p for p, _ in rendered], [self.seeds[i] for i in share],
                                [w for _, w in rendered])
        return DataLoader(RankShare(dataset, list(range(len(share)))), batch_size=self.batch_size,
                          collate_fn=collate_worlds)
