"""``BlockWriter``: persistence of finished blocks on a background thread, strictly in order.

The sampler hands every finished block over (as host tensors, see :mod:`lrag.runs.handover`)
and goes on with the next block; one writer thread persists the blocks in the order they were
handed over. What that buys and what it promises:

* **The GPU loop never waits for disk, LanceDB or the video encoder** while the queue has room.
  The queue is bounded (``depth`` blocks waiting, plus the one being written), so host memory
  stays bounded too; a writer slower than the sampler blocks the producer only when it is full.
* **One clear error, at the next block.** The first exception of the writer is kept; the next
  :meth:`BlockWriter.submit` (or :meth:`BlockWriter.flush`) raises it, so generation stops one
  block after the failure at most. Blocks after the failed one are never written: the store and
  the run folder hold exactly blocks ``0 .. failed - 1``, which ``--resume`` continues.
* **Nothing handed over is lost on an exception or Ctrl-C in the main loop**: :meth:`close`
  writes every queued block before it returns (a ``kill -9`` loses the queued blocks, never a
  half-written one: a block is listed in the store only after its files are in place).

``depth=0`` is the synchronous mode: ``submit`` writes the block itself, in the caller's thread,
with the same code (for debugging and for comparing outputs with the threaded mode).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

__all__ = ["BlockWriter", "PersistenceError"]

T = TypeVar("T")

_STOP = object()  # end-of-stream marker on the queue


class PersistenceError(RuntimeError):
    """Persisting a finished block failed; the message names the run, block and target."""


class BlockWriter(Generic[T]):
    """Runs ``sink(item)`` for every submitted item, in order, on one background thread.

    Args:
        sink: Persists one item; its exception stops the writer and is raised in the caller at
            the next :meth:`submit` / :meth:`flush` / :meth:`close`.
        depth: Items that may wait in the queue (the one being written not counted); ``0`` runs
            ``sink`` synchronously inside :meth:`submit`.
        name: Thread name (shows in stack dumps).
    """

    def __init__(self, sink: Callable[[T], None], depth: int = 2, name: str = "lrag-writer") -> None:
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"BlockWriter depth must be an int >= 0 (0 = synchronous), got {depth!r}")
        self.sink, self.depth = sink, depth
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if depth:
            self._queue = queue.Queue(maxsize=depth)
            # Daemon: a process that dies with the main thread must not hang on the writer;
            # close() is what waits for the queued items.
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    # -- producer side -----------------------------------------------------------------
    def submit(self, item: T) -> None:
        """Hand ``item`` over; blocks only while the queue is full.

        Raises:
            BaseException: the writer's first failure (for an earlier item), if any.
        """
        self._raise_failure()
        if self._closed:
            raise RuntimeError("BlockWriter.submit after close()")
        if self._queue is None:
            self._write(item)
            self._raise_failure()
            return
        self._queue.put(item)

    def flush(self) -> None:
        """Wait until every submitted item is written; raise the writer's failure, if any."""
        if self._queue is not None:
            self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        """Write what is queued, stop the thread (idempotent). Does not raise the writer's failure:
        call :meth:`flush` first where it must surface; :attr:`error` keeps it."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None and self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()

    @property
    def error(self) -> BaseException | None:
        """The writer's first failure (None while every item was written)."""
        return self._error

    def __enter__(self) -> BlockWriter[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer side ---------------------------------------------------------------------
    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self, item: T) -> None:
        if self._error is not None:
            return  # after a failure nothing more is written: the store stays a prefix of blocks
        try:
            self.sink(item)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, never swallowed
            self._error = err

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._write(item)
            finally:
                self._queue.task_done()
