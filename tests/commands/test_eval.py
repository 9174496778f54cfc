"""``lrag eval`` through the real dispatcher: config file + flag overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrag.cli import main
from lrag.commands.eval import build_parser, build_run_parser

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "demo.yaml"


def test_parser_reads_demo_config_and_flags() -> None:
    cfg = build_parser().parse_args(["--config", str(CONFIG), "--seeds", "1005", "1006",
                                     "--budgets", "[replace, add]"])
    assert cfg.seeds == [1005, 1006]
    assert cfg.budgets == ["replace", "add"]
    assert cfg.descriptors == ["avg_pool", "ae:asset:embedder_tiny.safetensors",
                               "ae:asset:embedder_tiny.safetensors+stride5", "oracle"]
    default = build_parser().parse_args(["--config", str(CONFIG)])
    assert default.seeds == list(range(1000, 1048)) and default.workers == 2  # the held-out suite
    assert cfg.backbone_checkpoint == "asset:backbone_tiny.safetensors" and cfg.camera == "position"
    assert cfg.sink_swap is None
    assert cfg.diversity == 0.0 and build_parser().parse_args(["--diversity", "0.3"]).diversity == 0.3


def test_frozen_config_differs_from_the_demo_only_in_backbone_descriptors_and_out_dir() -> None:
    demo = vars(build_parser().parse_args(["--config", str(CONFIG)]))
    frozen = vars(build_parser().parse_args(["--config", str(CONFIG.with_name("frozen.yaml"))]))
    differ = {k for k in demo if k != "config" and demo[k] != frozen[k]}
    assert differ == {"backbone_checkpoint", "descriptors", "out_dir"}
    assert frozen["backbone_checkpoint"] == "asset:backbone_tiny_frozen.safetensors"
    assert "gen_keys:-1+stride5" in frozen["descriptors"]


def test_bad_option_exits() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--num_frames", "many"])


@pytest.mark.slow
def test_lrag_eval_writes_report(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    main(["eval", "--config", str(CONFIG), "--seeds", "1001", "--num_frames", "12", "--window", "6",
          "--revisit_min", "8", "--revisit_max", "10", "--descriptors", "[oracle]",
          "--out_dir", str(out)])
    doc = json.loads((out / "report.json").read_text())
    assert {r["variant"] for r in doc["runs"]} == {"native", "rag-oracle"}
    assert doc["meta"]["settings"]["seeds"] == [1001]
    assert "report:" in capsys.readouterr().out


def test_eval_run_parser_is_separate_from_the_ab_eval() -> None:
    cfg = build_run_parser().parse_args(["abc-0", "--db", "x.lancedb", "--max_gap", "8"])
    assert cfg.run_id == "abc-0" and cfg.db == "x.lancedb" and cfg.out is None and cfg.max_gap == 8
    with pytest.raises(SystemExit):
        build_run_parser().parse_args([])


def test_eval_run_unknown_store_is_one_line(tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"lrag eval run: memory store .*nope\.lancedb does not exist"):
        main(["eval", "run", "r-0", "--db", str(tmp_path / "nope.lancedb")])


@pytest.mark.slow
def test_eval_run_on_a_real_predict_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # predict writes runs/ (run folders, store, tensorboard) here
    demo = Path(__file__).resolve().parents[2] / "configs" / "predict" / "demo.yaml"
    main(["predict", "--config", str(demo), "--model.init_args.num_frames=18", "--data.init_args.num_frames=18",
          "--model.init_args.run_name=small", "--model.init_args.progress=false",
          "--model.init_args.write_video=false"])
    capsys.readouterr()
    main(["eval", "run", "small-0", "--out", str(tmp_path / "report")])
    assert "report:" in capsys.readouterr().out
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    s = doc["summary"]
    assert s["frames"] == 18 and s["flicker"] > 0 and -1 <= s["self_similarity_gap1"] <= 1
    assert doc["descriptor"].startswith("ae:") and doc["window"] == 10
    assert s["retrieval_retrievals"] > 0 and s["retrieval_age_min"] > 10  # retrieved frames left the window
    assert (tmp_path / "report" / "run_report.png").stat().st_size > 10_000
    assert "## Descriptor self-similarity against Δt" in (tmp_path / "report" / "report.md").read_text()
