"""Write a shard set next to its destination and swap it in only when it is complete.

``lrag data synth|import`` write into a hidden sibling folder of ``DST``. If the producer fails
(a bad input file, a VAE error, Ctrl-C), the staging folder is removed and ``DST`` is exactly as
before. On success the new ``{prefix}-*.tar`` files are moved into ``DST``; with ``--overwrite``
the old ones are first moved into a second hidden sibling and deleted only after the new set is
in place, so no failure ever leaves ``DST`` with neither set. Renames stay on one file system
because both folders are siblings of ``DST``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class StagingError(RuntimeError):
    """The destination cannot be written (exists as a file, no permission, old shards present)."""


def existing_shards(folder: Path, prefix: str) -> list[Path]:
    """Finished ``{prefix}-NNNNNN.tar`` shards in ``folder`` (empty if it does not exist)."""
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def check_destination(dst: str | os.PathLike, prefix: str, overwrite: bool) -> Path:
    """Refuse a destination that cannot take a new shard set, before any work is done.

    Raises:
        StagingError: ``dst`` is a file, holds ``{prefix}`` shards without ``overwrite``, or its
            parent cannot be written.
    """
    folder = Path(dst)
    if folder.exists() and not folder.is_dir():
        raise StagingError(f"{dst} exists and is not a folder; choose another DST.")
    old = existing_shards(folder, prefix)
    if old and not overwrite:
        raise StagingError(f"{dst} already holds {len(old)} '{prefix}-*.tar' shard(s); pass "
                           "--overwrite to replace them or choose another folder/--prefix.")
    parent = folder.parent if str(folder.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise StagingError(f"{parent}: permission denied; cannot create the staging folder for "
                           f"{dst} there (choose a writable DST).")
    return folder


def _commit(staging: Path, folder: Path, prefix: str) -> None:
    """Move the staged shards into ``folder``, replacing its old ``{prefix}`` shards."""
    folder.mkdir(parents=True, exist_ok=True)
    old = existing_shards(folder, prefix)
    backup = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    moved_in: list[Path] = []
    try:
        for path in old:
            os.replace(path, backup / path.name)
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
            moved_in.append(folder / path.name)
    except BaseException:
        # Put the old set back exactly; the new shards that made it across are removed.
        for path in moved_in:
            path.unlink(missing_ok=True)
        for path in backup.iterdir():
            os.replace(path, folder / path.name)
        backup.rmdir()
        raise
    shutil.rmtree(backup)


@contextmanager
def staged_shard_dir(dst: str | os.PathLike, prefix: str, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit swap its shards into ``dst``.

    Args:
        dst: The shard set's destination folder (created on success if missing).
        prefix: Shard file-name prefix; only ``{prefix}-*.tar`` files of ``dst`` are replaced.
        overwrite: Allow replacing existing ``{prefix}`` shards.

    Raises:
        StagingError: see :func:`check_destination`; raised before the body runs.
    """
    folder = check_destination(dst, prefix, overwrite)
    parent = folder.parent if str(folder.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=parent))
    except PermissionError as err:
        raise StagingError(f"{parent}: permission denied ({err.strerror}); choose a writable "
                           "DST.") from err
    try:
        yield staging
        _commit(staging, folder, prefix)
    finally:
        # Gone after a commit; after a failure it holds the partial output, never wanted.
        shutil.rmtree(staging, ignore_errors=True)
