"""PromptDataModule: prompt lists/files to predict batches."""

from __future__ import annotations

import pytest

from lrag.data.prompts import PromptDataModule, read_prompt_file


def _batches(dm: PromptDataModule) -> list[dict]:
    return list(dm.predict_dataloader())


def test_inline_prompts_get_base_seed_plus_index():
    dm = PromptDataModule(prompts=["a cat", "a dog", "a bird"], seed=7, batch_size=2)
    batches = _batches(dm)
    assert batches == [
        {"prompts": ["a cat", "a dog"], "seeds": [7, 8]},
        {"prompts": ["a bird"], "seeds": [9]},
    ]
    assert all(isinstance(s, int) for b in batches for s in b["seeds"])


def test_prompt_file_skips_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\nfirst prompt\n\n  second prompt  \n", encoding="utf-8")
    dm = PromptDataModule(prompt_file=str(path), seeds=[3, 1])
    assert _batches(dm) == [
        {"prompts": ["first prompt"], "seeds": [3]},
        {"prompts": ["second prompt"], "seeds": [1]},
    ]


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        _batches(PromptDataModule(prompt_file=str(tmp_path / "nope.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompt_file(empty)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        PromptDataModule()
    with pytest.raises(ValueError, match="exactly one"):
        PromptDataModule(prompts=["x"], prompt_file=str(tmp_path / "p.txt"))
    with pytest.raises(ValueError, match="empty"):
        PromptDataModule(prompts=[])
    with pytest.raises(ValueError, match="batch_size"):
        PromptDataModule(prompts=["x"], batch_size=0)
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        _batches(PromptDataModule(prompts=["x"], seeds=[1, 2]))
