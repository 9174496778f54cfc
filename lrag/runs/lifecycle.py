"""Steps around a run's life in the store: claim checks, resume lease, failure mark, compaction.

Kept out of :class:`lrag.modules.generator.GeneratorModule` so the module stays glue; every step
here is about what a fault leaves behind (see docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lrag.memory.schema import StoreError
from lrag.memory.store import MemoryStore
from lrag.runs.lease import LeaseHeldError, RunLease
from lrag.runs.outputs import RunOutputs
from lrag.runs.resume import VideoRun, check_resume_config, check_run_folder
from lrag.runs.truth import world_from_meta

log = logging.getLogger(__name__)

__all__ = ["check_new_run_folder", "claim_run_folder", "compact_after_run", "lease_for_resume", "mark_failed",
           "open_resumed_run"]


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


def claim_run_folder(store: MemoryStore, outputs: RunOutputs, config_yaml: str,
                     truth: dict[str, Any] | None) -> RunLease:
    """Take the write lease of a run just registered in the store and write its inputs
    (``config.yaml``, ``world.json``); on failure the run is marked failed (or, if another
    process holds the lease, left to it) and the error raised."""
    run_id, lease = outputs.run_id, None
    try:
        lease = RunLease(outputs.dir, run_id)
        lease.acquire()
        outputs.write_config(config_yaml)
        if truth is not None:
            outputs.write_ground_truth(truth)
    except LeaseHeldError as err:
        # Another process started a run of this id at the same instant (both passed the
        # store's check): it owns the folder; marking the id failed would hit its run.
        raise StoreError(f"{err} Two processes started run {run_id!r} at once; give "
                         "concurrent starts distinct run_name values.") from None
    except BaseException:
        if lease is not None:
            lease.release()
        mark_failed(store, run_id)
        raise
    return lease


def open_resumed_run(store: MemoryStore, run_id: str, out_dir: str, config_yaml: str,
                     backbone_weights: Callable[[], str],
                     make_outputs: Callable[[str, str, int], RunOutputs],
                     device: torch.device) -> VideoRun:
    """The interrupted run ``run_id``, checked and leased, with its finished blocks loaded.

    Args:
        store: The run memory.
        run_id: The run to continue.
        out_dir: Parent folder of the run directories.
        config_yaml: The resolved config of this process (must keep the run's latent knobs).
        backbone_weights: Digest of the backbone tensors now (called only when the run has one).
        make_outputs: ``(run_id, prompt, seed) -> RunOutputs`` of the run folder.
        device: Where the finished latents go (the sampler replays their context passes).

    Raises:
        SystemExit: unknown or complete run, changed config, folder not the run's, held lease.
    """
    info = store.get_run(run_id)
    if info is None:
        raise SystemExit(f"--resume {run_id}: no such run in {store.uri}; list runs with `lrag memory runs`.")
    if info["status"] == "complete":
        raise SystemExit(f"--resume {run_id}: the run is already complete.")
    check_resume_config(info, config_yaml, backbone_weights, out_dir)
    run_dir = Path(out_dir) / run_id
    lease = lease_for_resume(run_dir, run_id, out_dir)
    try:
        prompt, seed = info["prompts"][0], int(info["seed"])
        check_run_folder(info, run_dir)  # world.json and config.yaml are the run's own
        outputs = make_outputs(run_id, prompt, seed)
        done = store.completed_blocks(run_id)
        outputs.drop_blocks_from(done)
        latents = outputs.read_blocks(done)
        log.info("resuming %s after %d finished blocks", run_id, done)
        store.set_status(run_id, "running")
        resume = latents[None].to(device) if done else None
        truth = outputs.read_ground_truth()
    except BaseException:
        lease.release()
        raise
    return VideoRun(run_id=run_id, prompt=prompt, seed=seed, outputs=outputs,
                    world=world_from_meta(truth) if truth is not None else None,
                    schedule=list(info["prompt_schedule"]), done_blocks=done,
                    resume_latents=resume, lease=lease)
