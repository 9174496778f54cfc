"""Steps around a run's life in the store: claim checks, resume lease, failure mark, compaction.

Kept out of :class:`lrag.modules.generator.GeneratorModule` so the module stays glue; every step
here is about what a fault leaves behind (see docs/reliability.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lrag.memory.store import MemoryStore
from lrag.runs.lease import LeaseHeldError, RunLease

log = logging.getLogger(__name__)

__all__ = ["check_new_run_folder", "compact_after_run", "lease_for_resume", "mark_failed"]


def check_new_run_folder(store: MemoryStore, run_dir: Path, run_id: str) -> None:
    """Refuse a new run whose folder holds files of a run this store does not know."""
    if run_dir.is_dir() and any(run_dir.iterdir()) and store.get_run(run_id) is None:
        raise FileExistsError(
            f"run folder {run_dir} already exists but {store.uri} has no run {run_id!r} (a run "
            "of another store?); set model.init_args.run_name or out_dir to something new, or "
            "move the folder away."
        )


def lease_for_resume(run_dir: Path, run_id: str, out_dir: str) -> RunLease:
    """The write lease of the run to resume (``SystemExit`` if missing or held by a live process)."""
    if not run_dir.is_dir():
        raise SystemExit(f"--resume {run_id}: the run folder {run_dir} is missing (out_dir "
                         f"{out_dir!r}); resume with the out_dir the run used.")
    lease = RunLease(run_dir, run_id)
    try:
        lease.acquire()
    except LeaseHeldError as err:
        raise SystemExit(f"--resume {run_id}: {err}") from None
    return lease


def mark_failed(store: MemoryStore, run_id: str) -> None:
    """Status ``failed``; a store that cannot be written must not hide the first error."""
    try:
        store.set_status(run_id, "failed")
    except Exception as err:  # noqa: BLE001
        log.error("run %s: could not mark the run failed in %s: %s", run_id, store.uri, err)


def compact_after_run(store: MemoryStore) -> None:
    """Merge a finished run's per-block fragments; a failure is only logged (the run is done)."""
    try:
        before, after = store.compact()
        log.info("compacted %s: %s files -> %s", store.uri, before.files, after.files)
    except Exception as err:  # noqa: BLE001
        log.warning("compacting %s failed (the run is complete; run `lrag memory compact` "
                    "later): %s", store.uri, err)
