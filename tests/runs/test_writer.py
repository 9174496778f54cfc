"""``BlockWriter``: order, the queue bound, failures surfaced at the next block, flush on close."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lrag.runs.persist import hand_over
from lrag.runs.writer import BlockWriter
from lrag.memory.bank import RetrievalRecord
from lrag.sampling.sampler import BlockResult


class GatedSink:
    """Records items; each write waits until the test opens the gate (a slow disk)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.written: list[int] = []
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, item: int) -> None:
        self.started.release()
        self.gate.wait(timeout=30)
        if item == self.fail_on:
            raise OSError(28, "No space left on device", f"/runs/blocks/block-{item:05d}.tar")
        self.written.append(item)


def _submit_in_thread(writer: BlockWriter, item: int) -> threading.Thread:
    thread = threading.Thread(target=writer.submit, args=(item,), daemon=True)
    thread.start()
    return thread


def test_items_are_written_in_order_and_flush_waits_for_all():
    sink = GatedSink()
    sink.gate.set()
    with BlockWriter(sink, depth=3) as writer:
        for i in range(20):
            writer.submit(i)
        writer.flush()
        assert sink.written == list(range(20))


def test_a_slow_writer_blocks_the_producer_only_when_the_queue_is_full():
    sink = GatedSink()
    writer = BlockWriter(sink, depth=2)
    writer.submit(0)
    assert sink.started.acquire(timeout=10)  # item 0 is being written (stuck at the gate)
    tic = time.perf_counter()
    writer.submit(1)
    writer.submit(2)  # the queue holds 2: neither call waits for the slow writer
    assert time.perf_counter() - tic < 1.0
    blocked = _submit_in_thread(writer, 3)
    blocked.join(timeout=0.5)
    assert blocked.is_alive()  # queue full: the producer waits ...
    sink.gate.set()
    blocked.join(timeout=10)
    assert not blocked.is_alive()  # ... until the writer takes the next item
    writer.flush()
    writer.close()
    assert sink.written == [0, 1, 2, 3]


def test_depth_zero_writes_inside_submit():
    sink = GatedSink()
    sink.gate.set()
    writer = BlockWriter(sink, depth=0)
    writer.submit(7)
    assert sink.written == [7]  # already written when submit returns
    assert not any(t.name == "lrag-writer" for t in threading.enumerate())  # no thread started


def test_a_failure_is_raised_at_the_next_submit_and_nothing_after_it_is_written():
    sink = GatedSink(fail_on=1)
    sink.gate.set()
    writer = BlockWriter(sink, depth=2)
    writer.submit(0)
    writer.submit(1)
    with pytest.raises(OSError, match="No space left") as err:
        for i in range(2, 50):  # the failure surfaces at one of the next hand-overs
            writer.submit(i)
            time.sleep(0.01)
    assert "block-00001.tar" in str(err.value)
    writer.close()
    assert sink.written == [0]  # blocks after the failed one are never written
    assert isinstance(writer.error, OSError)
    with pytest.raises(OSError):
        writer.flush()


def test_close_writes_everything_queued_before_an_interrupt_propagates():
    sink = GatedSink()
    writer = BlockWriter(sink, depth=4)
    for i in range(5):
        writer.submit(i)
    closer = threading.Thread(target=writer.close)
    closer.start()
    time.sleep(0.1)
    assert closer.is_alive() and sink.written == []  # close waits for the queued items
    sink.gate.set()
    closer.join(timeout=10)
    assert sink.written == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("depth", [-1, 1.5, "2"])
def test_bad_depth_is_named(depth):
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        BlockWriter(lambda item: None, depth=depth)


def test_hand_over_copies_what_the_sampler_may_reuse():
    latents = torch.randn(1, 3, 4, 2, 2)
    record = RetrievalRecord(query_frame=6, frames=torch.tensor([[0, 2]]), scores=torch.tensor([[0.9, 0.5]]))
    result = BlockResult(2, 6, latents, torch.randn(1, 3, 8), record, 0.1)
    frames = torch.randint(0, 255, (1, 3, 4, 4, 3), dtype=torch.uint8)
    item = hand_over(result, frames, pool_frames=5, kv_bytes=1024)
    expected = latents.clone()
    latents.zero_()
    frames.zero_()
    record.scores.zero_()
    item.wait()  # CPU: no event, returns at once
    assert torch.equal(item.result.latents, expected)
    assert item.frames.shape == (3, 4, 4, 3) and item.frames.any()
    assert item.result.retrieval.scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.5)]]
    assert (item.result.block, item.pool_frames, item.kv_bytes) == (2, 5, 1024)
