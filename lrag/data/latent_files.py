"""Load user-supplied latent files (``.pt`` / ``.npy``) safely, with errors that say what is wrong.

Nothing here unpickles: ``.npy`` loads with ``allow_pickle=False`` and ``.pt`` with
``torch.load(weights_only=True)``. The file's first bytes are looked at before a library is asked
to parse it, so an empty, truncated, pickled or garbage file gets a message naming the file and
its real problem instead of a library's internal exception (numpy calls any non-``.npy`` bytes
"pickled data"; torch calls a truncated archive a "miniz error").
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from lrag.data.shard_check import npy_data_bytes, read_npy_header
from lrag.data.shards import LatentFormatError, validate_latents

LATENT_SUFFIXES = (".pt", ".npy")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_SAVE_HINT = {".npy": "save it with np.save(path, latents)",
              ".pt": "save it with torch.save(latents, path)"}


def _check_file(path: Path) -> bytes:
    """The file's first bytes; refuse directories, unreadable and empty files by their name."""
    if path.is_dir():
        raise LatentFormatError(f"{path}: is a directory, expected a {path.suffix} file; rename "
                                "or move it out of SRC.")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except PermissionError as err:
        raise LatentFormatError(f"{path}: permission denied ({err.strerror}); make it readable "
                                "(chmod +r) or move it out of SRC.") from err
    except OSError as err:
        raise LatentFormatError(f"{path}: cannot read ({err.strerror or err}).") from err
    if not head:
        raise LatentFormatError(f"{path}: empty file (0 bytes); {_SAVE_HINT[path.suffix]}.")
    return head


def _load_npy(path: Path, head: bytes) -> np.ndarray:
    if not head.startswith(_NPY_MAGIC):
        kind = "a Python pickle" if head.startswith(_PICKLE_PROTO) else "no NumPy header"
        raise LatentFormatError(f"{path}: not a .npy array ({kind}); "
                                f"{_SAVE_HINT['.npy']} (pickles are never loaded).")
    with path.open("rb") as handle:
        try:
            shape, dtype, header_len = read_npy_header(handle)
        except ValueError as err:
            raise LatentFormatError(f"{path}: corrupt .npy header ({err}); re-save the file.") \
                from err
    if dtype.hasobject:
        raise LatentFormatError(f"{path}: the array holds Python objects (dtype {dtype}), which "
                                "are pickles; save a float array instead.")
    expected, size = npy_data_bytes(shape, dtype, header_len), os.path.getsize(path)
    if size < expected:
        raise LatentFormatError(f"{path}: truncated ({size} bytes; its header {shape} {dtype} "
                                f"needs {expected}); re-save or re-copy the file.")
    return np.load(path, allow_pickle=False)


def _load_pt(path: Path, head: bytes) -> torch.Tensor:
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO)):
        raise LatentFormatError(f"{path}: not a torch.save file (neither a zip archive nor a "
                                f"legacy pickle stream); {_SAVE_HINT['.pt']}.")
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        raise LatentFormatError(f"{path}: truncated or corrupt torch.save archive (no zip "
                                "directory at its end); re-save or re-copy the file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; keep only the refused global, if it names one.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" (refused global {found.group(1)})" if found else ""
        raise LatentFormatError(
            f"{path}: holds pickled Python objects{what}, which torch.load(weights_only=True) "
            f"never runs; {_SAVE_HINT['.pt']}.") from err
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise LatentFormatError(f"{path}: corrupt torch.save file ({first}); re-save or re-copy "
                                "it.") from err
    if not isinstance(obj, torch.Tensor):
        raise LatentFormatError(f"{path}: holds a {type(obj).__name__}, expected a single tensor "
                                f"[T, C, H, W]; {_SAVE_HINT['.pt']}.")
    return obj


def load_latent_file(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """Load and validate one latent clip ``[T, C, H, W]`` from a ``.npy`` or ``.pt`` file.

    Args:
        path: The file; its suffix picks the loader.
        channels: Required channel count, or ``None`` for any.

    Returns:
        The latents as a numpy array (bfloat16 tensors become float32).

    Raises:
        LatentFormatError: naming the file, what is wrong with it and how to fix it.
    """
    path = Path(path)
    if path.suffix not in LATENT_SUFFIXES:
        raise LatentFormatError(f"{path}: unsupported suffix {path.suffix!r}; latent files are "
                                f"{' or '.join(LATENT_SUFFIXES)}.")
    head = _check_file(path)
    arr = _load_npy(path, head) if path.suffix == ".npy" else _load_pt(path, head)
    return validate_latents(arr, source=str(path), channels=channels)
