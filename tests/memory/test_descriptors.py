"""FrameDescriptors on hand-made frames: what each descriptor computes and keeps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrag.memory.descriptors import FrameDescriptors


def test_avg_pool_is_the_spatial_mean_and_reset_forgets() -> None:
    d = FrameDescriptors("avg_pool", None, None)
    frames = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).view(2, 3, 4, 2, 2)
    out = d.describe(frames)
    assert out.shape == (2, 3, 4) and len(d) == 3
    assert torch.equal(out, frames.mean(dim=(-2, -1)))
    assert torch.equal(d.stacked(), out) and d.keys == []  # no key capture without a rule that needs it
    d.reset()
    assert len(d) == 0


class _Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1)


def test_ae_uses_the_embedder_and_needs_one() -> None:
    d = FrameDescriptors("ae", None, None)
    frames = torch.randn(1, 2, 4, 2, 2)
    with pytest.raises(ValueError, match="embedder_path"):
        d.describe(frames)
    d.set_embedder(_Flatten())
    assert torch.equal(d.describe(frames)[0, 1], 2.0 * frames[0, 1].flatten())
