"""The reference run of the run fault tests; the helpers live in ``gen_script.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_gen_script():
    """``tests/reliability/gen_script.py`` as a module (tests import it through this)."""
    spec = importlib.util.spec_from_file_location("lrag_gen_script",
                                                  Path(__file__).with_name("gen_script.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gen():
    """The helpers of ``gen_script.py``: build, predict, snapshot, store_rows, run_script."""
    return load_gen_script()


@pytest.fixture(scope="session")
def reference(tmp_path_factory, gen) -> Path:
    """An uninterrupted run ``w-0`` of world 1000 (what every interrupted run must equal)."""
    root = tmp_path_factory.mktemp("reference")
    gen.predict(gen.build(root))
    return root
