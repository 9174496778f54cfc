"""Fixtures shared across the test tree: the reference golden data (tests/fixtures/wan_reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrag.checkpoints.io import load_into
from lrag.nets.autoencoder import AEConfig, LatentAE

REFERENCE_DIR = Path(__file__).resolve().parent / "fixtures" / "wan_reference"


@pytest.fixture(scope="session")
def ae_golden() -> dict:
    """``ae_tiny_golden.pt``: the reference's tiny retrieval AE, its input, outputs and losses."""
    return torch.load(REFERENCE_DIR / "ae_tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def ae_golden_model(ae_golden: dict) -> LatentAE:
    """Our ``LatentAE`` built from the golden config, with the golden weights, in eval mode."""
    model = LatentAE(AEConfig.from_dict(ae_golden["config"]))
    load_into(model, ae_golden["state_dict"], "golden")
    return model.eval()
