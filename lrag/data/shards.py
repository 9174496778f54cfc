"""WebDataset latent shards: one tar sample per clip.

A sample holds ``<key>.latents.npy`` (float16 ``[T, C, H, W]``) and ``<key>.json`` (``source``,
``prompt``, ``frame_offset``, ``fps``, ``layout: "TCHW"`` plus producer-specific extras). Shards
are named ``{prefix}-{index:06d}.tar`` and are written as ``*.tar.tmp`` first, then renamed, so a
crashed writer never leaves a half-written ``.tar`` behind and every finished shard stays
readable. See ``data/README.md`` for the format.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds

log = logging.getLogger(__name__)

LAYOUT = "TCHW"
LATENTS_EXT = "latents.npy"
META_EXT = "json"
#: Defaults for the metadata fields a producer leaves out. ``fps`` is latent frames per second.
DEFAULT_META: dict[str, Any] = {"prompt": "", "frame_offset": 0, "fps": None}
#: WebDataset groups tar members into samples by the text before the first dot of the file name,
#: so a key must not contain dots; we also keep it shell- and URL-friendly.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-/]*$")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_MEMBER_MTIME = 0.0


class LatentFormatError(ValueError):
    """Latents or a shard do not follow the format; the message names source, field and fix."""


@dataclass(frozen=True)
class ShardLocation:
    """Where a clip was written: ``shard`` is the file name relative to the writer's folder."""

    shard: str
    key: str


@dataclass
class Clip:
    """One clip read back from a shard.

    Attributes:
        key: Sample key, unique within a shard set.
        latents: float16 array ``[T, C, H, W]``.
        meta: The sample's JSON metadata (always has ``source, prompt, frame_offset, fps, layout``).
    """

    key: str
    latents: np.ndarray
    meta: dict[str, Any]


def validate_latents(
    arr: np.ndarray | torch.Tensor, source: str, channels: int | None = None
) -> np.ndarray:
    """Check that ``arr`` is a finite floating ``[T, C, H, W]`` latent clip.

    Args:
        arr: Candidate latents (numpy array or torch tensor).
        source: Where the latents came from (file name, sample key); quoted in errors.
        channels: Required channel count ``C``; ``None`` accepts any.

    Returns:
        The latents as a numpy array (same dtype; bfloat16 tensors become float32).

    Raises:
        LatentFormatError: naming ``source``, the offending field and how to fix it.
    """
    if isinstance(arr, torch.Tensor):
        tensor = arr.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        arr = tensor.numpy()
    if not isinstance(arr, np.ndarray):
        raise LatentFormatError(
            f"{source}: latents are a {type(arr).__name__}, expected a numpy array or torch "
            "tensor [T, C, H, W]; save the tensor itself, not a container around it."
        )
    if arr.ndim != 4:
        hint = " (drop the batch dimension: x[0])" if arr.ndim == 5 and arr.shape[0] == 1 else ""
        raise LatentFormatError(
            f"{source}: shape {tuple(arr.shape)} has rank {arr.ndim}, expected rank 4 "
            f"[T, C, H, W]{hint}."
        )
    if min(arr.shape) == 0:
        raise LatentFormatError(f"{source}: shape {tuple(arr.shape)} has an empty dimension.")
    if channels is not None and arr.shape[1] != channels:
        raise LatentFormatError(
            f"{source}: shape {tuple(arr.shape)} has {arr.shape[1]} channels at dim 1, expected "
            f"{channels} (layout [T, C, H, W]); transpose the tensor or pass --channels "
            f"{arr.shape[1]} if that is intended."
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise LatentFormatError(
            f"{source}: dtype {arr.dtype} is not floating; latents must be float16/32/64 "
            "(convert with .astype(np.float32) if the values are real latents)."
        )
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise LatentFormatError(
            f"{source}: {bad} non-finite value(s) (NaN/inf) in the latents; regenerate or drop "
            "this clip (lrag data import --skip-bad skips such files)."
        )
    return arr


def _to_float16(arr: np.ndarray, source: str) -> np.ndarray:
    peak = float(np.max(np.abs(arr)))
    if peak > _FLOAT16_MAX:
        raise LatentFormatError(
            f"{source}: largest |value| {peak:.3g} overflows float16 (max {_FLOAT16_MAX:.0f}); "
            "latents this large are not from a VAE - check the scaling."
        )
    return np.ascontiguousarray(arr, dtype=np.float16)


def _complete_meta(meta: dict[str, Any], key: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise LatentFormatError(f"{key}: meta is a {type(meta).__name__}, expected a dict.")
    layout = meta.get("layout", LAYOUT)
    if layout != LAYOUT:
        raise LatentFormatError(
            f"{key}: meta layout {layout!r} is not supported; latents are always {LAYOUT!r}."
        )
    full = {"source": key, **DEFAULT_META, **meta, "layout": LAYOUT}
    try:
        json.dumps(full)
    except TypeError as err:
        raise LatentFormatError(
            f"{key}: meta is not JSON-serialisable ({err}); use str/int/float/list/dict values."
        ) from err
    return full


def shard_name(prefix: str, index: int) -> str:
    """File name of shard ``index`` of a set: ``{prefix}-{index:06d}.tar``."""
    return f"{prefix}-{index:06d}.tar"


class ShardWriter:
    """Write latent clips into WebDataset tar shards, atomically per shard.

    Numbering continues after any shard (finished or ``.tmp``) already in ``out_dir`` with the same
    prefix, so a resumed producer never overwrites earlier output. Leaving the ``with`` block,
    normally or through an exception, finalises the open shard: every clip whose ``write``
    returned is then readable.

    Args:
        out_dir: Folder for the shards (created if missing).
        prefix: Shard file-name prefix.
        max_clips_per_shard: Clips per shard before a new one is started.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "latents",
                 max_clips_per_shard: int = 64) -> None:
        if max_clips_per_shard < 1:
            raise ValueError(f"max_clips_per_shard={max_clips_per_shard}: must be >= 1.")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", prefix):
            raise ValueError(f"prefix={prefix!r}: use letters, digits, '_' or '-' only.")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_clips_per_shard = max_clips_per_shard
        self._index = self._next_free_index()
        self._tar: wds.TarWriter | None = None
        self._count = 0
        self._keys: set[str] = set()
        self.shards: list[str] = []  # finished shard names, in order

    def _next_free_index(self) -> int:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d{{6}})\.tar(\.tmp)?$")
        used = [int(m.group(1)) for p in self.out_dir.iterdir() if (m := pattern.match(p.name))]
        return max(used, default=-1) + 1

    @property
    def _current_name(self) -> str:
        return shard_name(self.prefix, self._index)

    def write(self, key: str, latents: np.ndarray | torch.Tensor,
              meta: dict[str, Any]) -> ShardLocation:
        """Validate and append one clip; returns where it lives.

        Args:
            key: Unique sample key (letters, digits, ``_ - /``; no dots).
            latents: ``[T, C, H, W]`` floating latents; stored as float16.
            meta: JSON-serialisable metadata; missing standard fields get defaults.

        Raises:
            LatentFormatError: bad key, latents or meta (nothing is written then).
        """
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise LatentFormatError(
                f"key {key!r}: use letters, digits, '_', '-' or '/', starting with a letter or "
                "digit (WebDataset splits sample keys at the first dot)."
            )
        if key in self._keys:
            raise LatentFormatError(f"key {key!r}: already written by this writer; keys must be "
                                    "unique within a shard set.")
        arr = _to_float16(validate_latents(latents, source=key), key)
        full_meta = _complete_meta(meta, key)
        if self._tar is None:
            self._open()
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        self._tar.write({"__key__": key, LATENTS_EXT: buf.getvalue(),
                         META_EXT: json.dumps(full_meta).encode("utf-8")})
        self._keys.add(key)
        location = ShardLocation(shard=self._current_name, key=key)
        self._count += 1
        if self._count >= self.max_clips_per_shard:
            self._finish()
        return location

    def _open(self) -> None:
        tmp = self.out_dir / (self._current_name + ".tmp")
        # encoder=False: we hand over bytes; the default encoder would also pickle objects.
        # A fixed member mtime makes shards byte-reproducible (same clips, same file).
        self._tar = wds.TarWriter(str(tmp), encoder=False, mtime=_MEMBER_MTIME)
        self._count = 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        name = self._current_name
        os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
        self.shards.append(name)
        log.debug("finished shard %s (%d clips)", name, self._count)
        self._index += 1
        self._count = 0

    def close(self) -> None:
        """Finalise the open shard (if any). Safe to call twice."""
        self._finish()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def resolve_shards(urls: str | os.PathLike | Iterable[str]) -> list[str]:
    """Expand a folder, glob, brace pattern, single ``.tar`` or list into sorted shard paths.

    Raises:
        FileNotFoundError: nothing matched; the message names the input and how to make data.
    """
    if not isinstance(urls, (str, os.PathLike)):
        paths = [str(u) for u in urls]
    else:
        text = str(urls)
        if os.path.isdir(text):
            paths = sorted(glob.glob(os.path.join(text, "*.tar")))
        elif any(ch in text for ch in "*?["):
            paths = sorted(p for p in glob.glob(text) if p.endswith(".tar"))
        elif "{" in text:
            paths = list(wds.shardlists.expand_urls(text))
        else:
            paths = [text] if os.path.exists(text) else []
    if not paths:
        raise FileNotFoundError(
            f"no .tar shards found at {str(urls)!r}; pass a folder of shards, a glob or a list, "
            "or create some with `lrag data synth DST`."
        )
    return paths


def decode_clip(sample: dict[str, Any], validate: bool = True) -> Clip:
    """Turn a raw WebDataset sample (bytes per member) into a :class:`Clip`.

    Only ``.npy`` (``allow_pickle=False``) and JSON are decoded: the library's default decoders
    would also unpickle ``.pyd``/``.pickle`` members of an untrusted shard.

    Args:
        sample: ``{"__key__", "__url__", "latents.npy": bytes, "json": bytes}``.
        validate: Check the latents with :func:`validate_latents` (``inspect`` turns this off
            to count non-finite values instead of failing on them).
    """
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')!r}"
    missing = [ext for ext in (LATENTS_EXT, META_EXT) if ext not in sample]
    if missing:
        raise LatentFormatError(f"{where}: missing member(s) {missing}; every sample needs "
                                f"<key>.{LATENTS_EXT} and <key>.{META_EXT}.")
    try:
        latents = np.load(io.BytesIO(sample[LATENTS_EXT]), allow_pickle=False)
        meta = json.loads(sample[META_EXT])
    except (ValueError, OSError) as err:
        raise LatentFormatError(f"{where}: cannot decode ({err}); the shard is corrupt, "
                                "re-create it.") from err
    if validate:
        validate_latents(latents, source=where)
    return Clip(key=sample["__key__"], latents=latents, meta=meta)


def iter_clips(urls: str | os.PathLike | Iterable[str], validate: bool = True) -> Iterator[Clip]:
    """Read every clip of a shard set in order (no shuffling, no worker splitting).

    Args:
        urls: A folder of shards, a glob, a brace pattern, one ``.tar`` or a list of paths.
        validate: Raise :class:`LatentFormatError` on malformed or non-finite latents.
    """
    decode = decode_clip if validate else functools.partial(decode_clip, validate=False)
    dataset = wds.WebDataset(resolve_shards(urls), shardshuffle=False, nodesplitter=None,
                             workersplitter=None, empty_check=False).map(decode)
    yield from dataset


def count_clips(shard: str | os.PathLike) -> int:
    """Number of samples in one shard, from tar headers only (no decoding)."""
    import tarfile

    try:
        with tarfile.open(shard) as tar:
            return sum(1 for name in tar.getnames() if name.endswith("." + LATENTS_EXT))
    except tarfile.TarError as err:
        raise LatentFormatError(f"{shard}: not a readable tar shard ({err}); re-create it.") from err
