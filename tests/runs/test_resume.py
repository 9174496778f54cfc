"""check_resume_config: which differences refuse a resume, and when the weights are hashed."""

from __future__ import annotations

import pytest
import yaml

from lrag.runs.resume import check_resume_config


def _info(weights: str | None = None, **knobs) -> dict:
    config = yaml.safe_dump({"model": {"init_args": {"window": 9, "fps": 16.0, **knobs}}})
    hashes = {} if weights is None else {"backbone_weights": weights}
    return {"run_id": "r-0", "config_yaml": config, "checkpoint_hashes": hashes}


def _current(**knobs) -> str:
    return yaml.safe_dump({"model": {"init_args": {"window": 9, "fps": 16.0, **knobs}}})


def _never() -> str:
    raise AssertionError("the backbone was hashed although the run recorded no hash")


def test_only_latent_knobs_refuse_and_the_message_names_the_saved_config(tmp_path) -> None:
    check_resume_config(_info(), _current(fps=30.0), _never, str(tmp_path))
    with pytest.raises(SystemExit, match="window") as err:
        check_resume_config(_info(), _current(window=12), _never, str(tmp_path))
    assert str(tmp_path / "r-0" / "config.yaml") in str(err.value)


def test_weights_are_compared_only_when_the_run_has_a_hash(tmp_path) -> None:
    check_resume_config(_info("abc"), _current(), lambda: "abc", str(tmp_path))
    with pytest.raises(SystemExit, match="backbone weights"):
        check_resume_config(_info("abc"), _current(), lambda: "def", str(tmp_path))
