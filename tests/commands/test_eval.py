"""``lrag eval`` through the real dispatcher: config file + flag overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrag.cli import main
from lrag.commands.eval import build_parser

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "demo.yaml"


def test_parser_reads_demo_config_and_flags() -> None:
    cfg = build_parser().parse_args(["--config", str(CONFIG), "--seeds", "1005", "1006",
                                     "--budgets", "[replace, add]"])
    assert cfg.seeds == [1005, 1006]
    assert cfg.budgets == ["replace", "add"]
    assert cfg.descriptors == ["avg_pool", "ae:asset:embedder_tiny.safetensors", "oracle"]
    assert cfg.backbone_checkpoint == "asset:backbone_tiny.safetensors" and cfg.camera == "position"
    assert cfg.sink_swap is None


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
