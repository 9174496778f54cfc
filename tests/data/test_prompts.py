"""PromptDataModule: prompt lists/files to predict batches."""

from __future__ import annotations

import pytest
import torch

from lrag.data.prompts import (PromptDataModule, WorldPromptDataModule, check_prompt_schedule,
                               prompt_at, rank_share, read_prompt_file, read_schedule_file)


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


# -- WorldPromptDataModule -----------------------------------------------------------------------
def test_world_batches_carry_prompt_seed_and_trajectory():
    from lrag.data.prompts import WorldPromptDataModule
    from lrag.data.world_config import WorldConfig
    from lrag.data.world_datamodule import render_world

    dm = WorldPromptDataModule([1000, 1001], num_frames=15, batch_size=2)
    (batch,) = list(dm.predict_dataloader())
    assert batch["seeds"] == [1000, 1001]  # noise seed defaults to the world seed
    worlds = batch["worlds"]
    assert [w.world_seed for w in worlds] == [1000, 1001]
    clip = render_world(1001, 15, WorldConfig(frame_height=8, frame_width=8, revisit_max=40))
    assert torch.equal(worlds[1].positions, clip["positions"])
    assert torch.equal(worlds[1].camera, clip["camera"])
    assert batch["prompts"][1] == clip["prompt"] and worlds[1].meta["world"]["world_id"] == 1001
    assert not torch.equal(worlds[0].positions, worlds[1].positions)


def test_world_module_rejects_mismatched_lists():
    from lrag.data.prompts import WorldPromptDataModule

    with pytest.raises(ValueError, match="2 seeds for 1 world_seeds"):
        WorldPromptDataModule([5], seeds=[1, 2])
    with pytest.raises(ValueError, match="world_seeds"):
        WorldPromptDataModule([])


# -- prompt schedules ----------------------------------------------------------------------------
def test_schedule_is_normalised_and_looked_up() -> None:
    schedule = check_prompt_schedule([{"frame": 6, "prompt": " a dog "}, {"frame": 30, "prompt": "a cow"}])
    assert schedule == [{"frame": 6, "prompt": "a dog"}, {"frame": 30, "prompt": "a cow"}]
    assert [prompt_at(schedule, "a cat", f) for f in (0, 5, 6, 29, 30, 99)] == [
        "a cat", "a cat", "a dog", "a dog", "a cow", "a cow"]


@pytest.mark.parametrize("entries, match", [
    ([{"frame": 3}], r"\[0\].*exactly the keys"),
    ([{"frame": -3, "prompt": "x"}], r"\[0\].*>= 0"),
    ([{"frame": "3", "prompt": "x"}], r"\[0\].*'frame'"),
    ([{"frame": 3, "prompt": "x"}, {"frame": 3, "prompt": "y"}], r"\[1\].*strictly increasing"),
    ([{"frame": 3, "prompt": "  "}], r"\[0\].*non-empty"),
    ([], "non-empty list"),
])
def test_bad_schedule_entries_are_named(entries, match) -> None:
    with pytest.raises(ValueError, match=match):
        PromptDataModule(prompts=["a"], prompt_schedule=entries)


def test_schedule_file_and_batches(tmp_path) -> None:
    path = tmp_path / "switch.tsv"
    path.write_text("# frame<TAB>prompt\n0\ta cat\n\n12\ta dog runs\n", encoding="utf-8")
    dm = PromptDataModule(prompts=["a", "b"], schedule_file=str(path), batch_size=2)
    batch = next(iter(dm.predict_dataloader()))
    expected = [{"frame": 0, "prompt": "a cat"}, {"frame": 12, "prompt": "a dog runs"}]
    assert batch["schedules"] == [expected, expected] and batch["prompts"] == ["a", "b"]
    assert "schedules" not in next(iter(PromptDataModule(prompts=["a"]).predict_dataloader()))
    path.write_text("12 a dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"switch.tsv, line 1: '12 a dog'"):
        read_schedule_file(path)
    with pytest.raises(ValueError, match="at most one"):
        PromptDataModule(prompts=["a"], schedule_file=str(path), prompt_schedule=expected)


class _Trainer:
    def __init__(self, rank: int, world_size: int) -> None:
        self.global_rank, self.world_size = rank, world_size


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_share_the_prompts_exactly_once_with_their_single_process_seeds(world):
    prompts = [f"p{i}" for i in range(4)]
    seen = []
    for rank in range(world):
        dm = PromptDataModule(prompts=prompts, seed=10, batch_size=2)
        dm.trainer = _Trainer(rank, world)
        batches = list(dm.predict_dataloader())
        seen += [(p, s) for b in batches for p, s in zip(b["prompts"], b["seeds"])]
    assert sorted(seen) == [(f"p{i}", 10 + i) for i in range(4)]  # no padding duplicates


def test_world_datamodule_renders_only_its_rank_share():
    dm = WorldPromptDataModule(world_seeds=[5, 6, 7], num_frames=4)
    dm.trainer = _Trainer(1, 2)
    (batch,) = list(dm.predict_dataloader())
    assert batch["seeds"] == [6] and [w.world_seed for w in batch["worlds"]] == [6]


def test_rank_share_refuses_a_bad_rank():
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        rank_share(4, 2, 2)
