"""Check latent shards before reading them: empty, truncated or malformed tars are found up front.

A WebDataset pipeline that meets a truncated tar raises from inside a worker, in the middle of an
epoch. :func:`verify_shard` reads only tar headers, the ``.npy`` headers of the latents and the
small JSON members, so a shard set is checked in a fraction of the time a read takes, and the
callers (``lrag data inspect``, :class:`~lrag.data.datamodule.LatentShardDataModule`) can either
stop before any work or drop the bad shards with a warning naming each of them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tarfile
import tokenize
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Literal

import numpy as np

from lrag.data.shards import LATENTS_EXT, META_EXT, LatentFormatError

log = logging.getLogger(__name__)

#: What to do with a bad shard: stop with its error, or leave it out with a warning.
BadShardPolicy = Literal["fail", "skip"]
BAD_SHARD_POLICIES: tuple[str, ...] = ("fail", "skip")


def _open_tar(path: str) -> tarfile.TarFile:
    if os.path.isdir(path):
        raise LatentFormatError(f"{path}: is a directory, not a .tar shard; move it out of the "
                                "shard folder or rename it.")
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise LatentFormatError(f"{path}: empty file (0 bytes), not a tar shard; delete it or "
                                    "re-create the shard set.")
        # Plain "r:" (no compression probing) gives tarfile's own error instead of four.
        return tarfile.open(path, mode="r:")
    except PermissionError as err:
        raise LatentFormatError(f"{path}: permission denied ({err.strerror}); make the shard "
                                "readable (chmod +r) or leave it out.") from err
    except FileNotFoundError as err:
        raise LatentFormatError(f"{path}: does not exist (removed while listing?).") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        raise LatentFormatError(f"{path}: not a readable tar shard ({err}); re-create it.") \
            from err


def read_npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse a ``.npy`` header from ``handle``: ``(shape, dtype, header bytes)``.

    Raises:
        ValueError: not a ``.npy`` stream, or a header numpy cannot parse.
    """
    version = np.lib.format.read_magic(handle)
    reader = {(1, 0): np.lib.format.read_array_header_1_0,
              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if reader is None:
        raise ValueError(f"unsupported .npy version {version}")
    try:
        shape, _, dtype = reader(handle)
    except (SyntaxError, tokenize.TokenError) as err:  # numpy tokenizes a damaged header dict
        raise ValueError(f"unparsable header: {err}") from err
    return tuple(shape), dtype, handle.tell()


def npy_data_bytes(shape: tuple[int, ...], dtype: np.dtype, header_len: int) -> int:
    """Total size in bytes of a ``.npy`` file with this header."""
    return header_len + math.prod(shape) * dtype.itemsize


def _check_npy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> None:
    """The latents member's ``.npy`` header parses and its data length matches the shape."""
    try:
        shape, dtype, header_len = read_npy_header(tar.extractfile(member))
    except ValueError as err:
        raise LatentFormatError(f"{where}: bad .npy header ({err}); the shard is corrupt, "
                                "re-create it.") from err
    if dtype.hasobject:
        raise LatentFormatError(f"{where}: .npy holds Python objects (dtype {dtype}); shards hold "
                                "float16 latents only.")
    expected = npy_data_bytes(shape, dtype, header_len)
    if member.size != expected:
        raise LatentFormatError(f"{where}: {member.size} bytes, but its header {shape} {dtype} "
                                f"needs {expected}; the shard is corrupt, re-create it.")


def _check_end_marker(tar: tarfile.TarFile, path: str) -> None:
    """A complete tar ends with zero blocks; without one it was cut at a member boundary.

    tarfile (and so WebDataset) treats the end of the file as the end of the archive, so a shard
    cut exactly between two samples reads as a shorter, valid shard. A member header is never
    all zeros, so one zero block after the last member proves nothing was cut off.
    """
    handle = tar.fileobj
    handle.seek(tar.offset)
    block = handle.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise LatentFormatError(f"{path}: no end-of-archive marker after byte {tar.offset}; the "
                                "shard was cut short (samples after it are lost), re-create it.")


def verify_shard(path: str | os.PathLike) -> int:
    """Check one shard's structure without decoding the latents; returns its number of clips.

    Checks: the file is a non-empty, readable tar; no member runs past the end of the file
    (truncation); every sample has ``<key>.latents.npy`` and ``<key>.json``; each ``.npy`` header
    parses and its byte count matches its shape and dtype; each JSON member parses to an object.

    Raises:
        LatentFormatError: naming the shard (and sample), what is wrong, and the fix.
    """
    path = os.fspath(path)
    tar = _open_tar(path)
    try:
        file_size = os.path.getsize(path)
        samples: dict[str, set[str]] = {}
        for member in tar:
            if not member.isfile():
                continue
            where = f"{path}: member {member.name!r}"
            if member.offset_data + member.size > file_size:
                raise LatentFormatError(f"{where} ends at byte {member.offset_data + member.size}"
                                        f" but the file has {file_size}; the shard is truncated, "
                                        "re-create it.")
            key, dot, ext = os.path.basename(member.name).partition(".")
            key = os.path.join(os.path.dirname(member.name), key)
            if not dot:
                continue
            samples.setdefault(key, set()).add(ext)
            if ext == LATENTS_EXT:
                _check_npy_member(tar, member, where)
            elif ext == META_EXT:
                try:
                    meta = json.loads(tar.extractfile(member).read())
                except (ValueError, UnicodeDecodeError) as err:
                    raise LatentFormatError(f"{where}: invalid JSON ({err}); the shard is "
                                            "corrupt, re-create it.") from err
                if not isinstance(meta, dict):
                    raise LatentFormatError(f"{where}: JSON is a {type(meta).__name__}, expected "
                                            "an object of metadata fields.")
        _check_end_marker(tar, path)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise LatentFormatError(f"{path}: truncated or corrupt tar ({err}); re-create it.") \
            from err
    finally:
        tar.close()
    incomplete = sorted(k for k, exts in samples.items() if not {LATENTS_EXT, META_EXT} <= exts)
    if incomplete:
        raise LatentFormatError(f"{path}: sample(s) {incomplete[:3]} lack <key>.{LATENTS_EXT} or "
                                f"<key>.{META_EXT}; the shard is incomplete, re-create it.")
    clips = sum(1 for exts in samples.values() if LATENTS_EXT in exts)
    if clips == 0:
        raise LatentFormatError(f"{path}: holds no clips; delete it or re-create the shard set.")
    return clips


@dataclass
class ShardCheck:
    """Result of :func:`check_shards`: the usable shards with their clip counts, and the rest."""

    good: dict[str, int]
    bad: dict[str, str]  # shard -> error message


def check_shards(shards: Iterable[str], policy: BadShardPolicy = "fail") -> ShardCheck:
    """Verify every shard; on a bad one stop (``"fail"``) or log a warning and drop it (``"skip"``).

    Raises:
        LatentFormatError: the first bad shard under ``"fail"``, or no good shard left under
            ``"skip"``.
    """
    if policy not in BAD_SHARD_POLICIES:
        raise ValueError(f"bad shard policy {policy!r}: choose one of {BAD_SHARD_POLICIES}.")
    result = ShardCheck(good={}, bad={})
    for shard in shards:
        try:
            result.good[shard] = verify_shard(shard)
        except LatentFormatError as err:
            if policy == "fail":
                raise
            log.warning("skipping bad shard: %s", err)
            result.bad[shard] = str(err)
    if not result.good:
        raise LatentFormatError(f"all {len(result.bad)} shard(s) are bad; nothing to read.")
    return result
