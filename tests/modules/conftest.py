"""Shared fixtures of the module tests."""

from __future__ import annotations

from typing import Callable

import pytest

from lrag.nets.codecs import LinearRGBCodec


class FailingCodec(LinearRGBCodec):
    """A real codec that raises on its ``fail_at_call``-th decode (a crash mid-run)."""

    def __init__(self, fail_at_call: int) -> None:
        super().__init__(channels=16, upscale=2)
        self.calls, self.fail_at_call = 0, fail_at_call

    def decode(self, latents, check_finite: bool = True):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise RuntimeError("codec exploded")
        return super().decode(latents, check_finite)


@pytest.fixture
def failing_codec() -> Callable[[int], FailingCodec]:
    """Factory: ``failing_codec(n)`` fails on the n-th decode call."""
    return FailingCodec
