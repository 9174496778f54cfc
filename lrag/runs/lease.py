"""The write lease of a run: one process at a time generates into a run folder and its store rows.

``<out_dir>/<run_id>/lease.json`` holds the host, pid and start time of the process writing the
run. It is created with ``O_CREAT | O_EXCL``, so of two processes that start (or resume) the
same run at once exactly one gets it; the other is refused with a message naming the holder.
A lease whose process is gone (same host, pid no longer running, or the pid reused by a process
that started later) is stale and taken over: it is first renamed aside, which only one of two
racing processes can do, so a takeover never removes a live lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["LeaseHeldError", "RunLease"]

LEASE_FILE = "lease.json"


class LeaseHeldError(RuntimeError):
    """Another live process holds the run's lease."""


def _process_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of ``pid`` from ``/proc`` (Linux): the state letter (``Z`` for a
    zombie) and the kernel start time in jiffies since boot, which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces, so split after its ')': state is field 3,
    # start time field 22.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def _process_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (jiffies since boot, Linux), to tell a reused pid apart."""
    stat = _process_stat(pid)
    return None if stat is None else stat[1]


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process of a lease on this host still runs (and is the same process).

    A killed process whose parent has not reaped it yet is a zombie: it still has a pid but
    writes nothing any more, so it holds no lease.
    """
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    stat = _process_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return False
    recorded, current = holder.get("proc_start"), None if stat is None else stat[1]
    return recorded is None or current is None or recorded == current


class RunLease:
    """Exclusive write access to one run folder (context manager; released on exit).

    Args:
        run_dir: The run folder; must exist.
        run_id: The run (for messages).
    """

    def __init__(self, run_dir: str | Path, run_id: str) -> None:
        self.path = Path(run_dir) / LEASE_FILE
        self.run_id = run_id
        self._held = False

    def _mine(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                "proc_start": _process_start(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._mine(), f)
        return True

    def holder(self) -> dict[str, Any] | None:
        """The lease's content (None when nobody holds it); unreadable content counts as ``{}``."""
        return self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # a holder killed between create and write: no pid, hence stale

    def acquire(self) -> None:
        """Take the lease, taking over a stale one.

        Raises:
            LeaseHeldError: A live process (or one on another host) holds it.
        """
        for _ in range(3):
            if self._create():
                self._held = True
                return
            holder = self.holder()
            if holder is None:
                continue  # released in between: try again
            if holder.get("host", socket.gethostname()) != socket.gethostname():
                raise LeaseHeldError(
                    f"run {self.run_id} is being written by pid {holder.get('pid')} on host "
                    f"{holder['host']} (since {holder.get('started')}, lease {self.path}); wait "
                    "for it to finish. If that process is gone, delete the lease file and resume."
                )
            if _alive(holder):
                raise LeaseHeldError(
                    f"run {self.run_id} is being written by pid {holder.get('pid')} on this host "
                    f"({holder.get('host')}, since {holder.get('started')}); wait for it to finish "
                    f"or stop it, then resume. Lease: {self.path}."
                )
            aside = self.path.with_name(f"{LEASE_FILE}.stale-{os.getpid()}")
            try:
                os.rename(self.path, aside)  # only one racing process wins the rename
            except FileNotFoundError:
                continue
            if self._read(aside) != holder:
                # Another process took the stale lease over between our read and our rename:
                # this is its live lease; put it back (link fails if a third one got there).
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            log.warning("run %s: taking over the stale lease of pid %s (%s is not running)",
                        self.run_id, holder.get("pid"), holder.get("host"))
            aside.unlink(missing_ok=True)
        raise LeaseHeldError(f"run {self.run_id}: could not take the lease {self.path}; retry.")

    def release(self) -> None:
        """Give the lease back (only if this process holds it)."""
        if self._held:
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "RunLease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
