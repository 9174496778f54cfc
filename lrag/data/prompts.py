"""Predict-time data: a list of prompts (from YAML or a text file) with one seed each."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["PromptDataModule", "PromptDataset", "read_prompt_file", "collate_prompts"]


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


class PromptDataset(Dataset):
    """``(prompt, seed)`` pairs, one per video to generate."""

    def __init__(self, prompts: list[str], seeds: list[int]) -> None:
        self.prompts, self.seeds = prompts, seeds

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.prompts[index], self.seeds[index]


def collate_prompts(items: list[tuple[str, int]]) -> dict[str, list]:
    """Batch as ``{"prompts": list[str], "seeds": list[int]}`` (no tensors: seeds stay ints)."""
    return {"prompts": [p for p, _ in items], "seeds": [s for _, s in items]}


class PromptDataModule(L.LightningDataModule):
    """Feeds prompts to ``GeneratorModule.predict_step``.

    Args:
        prompts: Prompts given inline (YAML list). Exactly one of ``prompts`` and
            ``prompt_file`` must be set.
        prompt_file: Text file with one prompt per line (``#`` comments and blank lines skipped).
        seeds: One seed per prompt. When omitted, prompt ``i`` gets ``seed + i``.
        seed: Base seed used when ``seeds`` is omitted.
        batch_size: Prompts per ``predict_step`` call; every prompt in a batch is one video.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        prompt_file: str | None = None,
        seeds: list[int] | None = None,
        seed: int = 0,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
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

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        # Order matters (run i gets prompt i): no shuffling; no workers, the items are strings.
        return DataLoader(
            PromptDataset(self.prompts, self.seeds),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate_prompts,
        )
