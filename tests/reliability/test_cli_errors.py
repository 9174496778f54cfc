"""Errors a person causes end in one message naming the key or file, with no traceback.

Through a real ``python -m lrag.cli`` process (what a user runs); ``--debug`` / ``LRAG_DEBUG=1``
bring the traceback back. :func:`lrag.errors.explain` is also checked directly for the chained
exceptions LightningCLI and jsonargparse produce.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrag.errors import explain

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "predict" / "demo.yaml")
SMALL = ["--model.init_args.num_frames", "12", "--data.init_args.num_frames", "12"]


def _lrag(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lrag.cli", *args], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def _bad_yaml(tmp_path: Path) -> list[str]:
    (tmp_path / "bad.yaml").write_text("model:\n  init_args: [num_frames: 12\n")
    return ["predict", "--config", "bad.yaml"]


def _truncated_checkpoint(tmp_path: Path) -> list[str]:
    weights = (REPO / "lrag" / "assets" / "backbone_tiny.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(weights[: len(weights) // 3])
    return ["predict", "--config", DEMO, *SMALL, "--model.init_args.backbone_checkpoint",
            "cut.safetensors"]


CASES = {
    # a value checked while LightningCLI builds the model: 74-101 traceback lines before
    "knob": (lambda t: ["predict", "--config", DEMO, "--model.init_args.num_frames", "13"],
             ["num_frames=13", "frames_per_block=3"]),
    "yaml": (_bad_yaml, ["bad.yaml"]),
    "checkpoint": (_truncated_checkpoint, ["cut.safetensors"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_user_errors_print_one_message_without_traceback(tmp_path, case):
    make_args, names = CASES[case]
    done = _lrag(tmp_path, *make_args(tmp_path))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for name in names:
        assert name in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.slow
def test_debug_flag_and_env_show_the_traceback(tmp_path):
    args = ["predict", "--config", DEMO, "--model.init_args.num_frames", "13"]
    with_flag = _lrag(tmp_path, *args, "--debug")
    assert with_flag.returncode != 0 and "Traceback" in with_flag.stderr
    assert "num_frames=13" in with_flag.stderr


def _chained() -> BaseException:
    try:
        try:
            raise ValueError("GeneratorModule.num_frames=13 must be a multiple of 3.")
        except ValueError as inner:
            raise ValueError("Does not validate against any of the Union subtypes") from inner
    except ValueError as outer:
        return outer


def test_explain_names_the_innermost_user_error():
    assert explain(_chained(), "predict") == (
        "lrag predict: GeneratorModule.num_frames=13 must be a multiple of 3.")


def test_explain_says_what_is_true_for_files_and_permissions():
    missing = FileNotFoundError(2, "No such file or directory", "w/x.ckpt")
    assert explain(missing, "fit") == "lrag fit: No such file or directory: w/x.ckpt"
    denied = PermissionError(13, "Permission denied", "runs/db")
    assert explain(denied, "predict") == "lrag predict: Permission denied: runs/db"


def test_explain_points_unknown_errors_to_debug():
    message = explain(KeyError("boom"), "predict")
    assert message.startswith("lrag predict: KeyError: 'boom'") and "--debug" in message


def test_main_turns_errors_into_exit_messages(tmp_path, capsys, monkeypatch):
    from lrag.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["memory", "runs", "--db", str(tmp_path / "nowhere" / "db")])
    assert err.value.code != 0
    monkeypatch.setenv("LRAG_DEBUG", "1")

    def boom(_args):
        raise KeyError("boom")

    monkeypatch.setattr("lrag.cli._dispatch", boom)
    with pytest.raises(KeyError):
        main(["predict"])
    monkeypatch.delenv("LRAG_DEBUG")
    with pytest.raises(SystemExit, match=r"KeyError: 'boom' \(run with --debug"):
        main(["predict"])
