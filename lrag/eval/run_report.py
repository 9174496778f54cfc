"""``lrag eval run RUN_ID``: consistency against time for any stored run, no ground truth needed.

Reads the run's rows from the memory store (``runs``, ``frames`` with descriptor embeddings and
latent locations, ``retrievals``) and its latents from the block shards the ``frames`` rows
point to (relative to the run directory, :mod:`lrag.runs.outputs`), then writes to the output
folder (default ``<run_dir>/eval``):

* ``report.md`` and ``report.json``: the numbers of :mod:`lrag.eval.run_stats` (descriptor
  self-similarity against Δt, frame-statistics drift, flicker, what retrieval selected);
* ``run_report.png``: those four as panels.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from lrag.runs.compat import migrate_config
from lrag.sampling.settings import SAMPLER_KNOBS
from lrag.data.shards import iter_clips
from lrag.eval.plots import plot_run_report
from lrag.eval.report import json_safe
from lrag.eval.run_stats import flicker, frame_stats, retrieval_summary, self_similarity_by_gap, video_summary
from lrag.memory.store import MemoryStore

log = logging.getLogger(__name__)

__all__ = ["RunData", "RunReportError", "RunReportPaths", "load_run", "run_numbers", "write_run_report"]

RUN_REPORT_VERSION = 1
#: Gaps listed in report.md (all gaps are in report.json and the figure).
_TABLE_GAPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class RunReportError(ValueError):
    """The run cannot be reported as asked; the message names what and the fix."""


@dataclass
class RunData:
    """One stored run, read back for the report.

    Attributes:
        run_id: The run.
        info: Its ``runs`` row (:meth:`MemoryStore.get_run`).
        run_dir: Folder the shard paths are relative to.
        latents: ``[F, C, H, W]`` float32, frames ``0 .. F-1``.
        blocks: ``[F]`` block index per frame.
        embeddings: ``[F, D]`` the stored descriptor of each frame.
        descriptor: How the embeddings were made (``frames.descriptor``).
        retrievals: Columns ``block_index, query_frame, rank, retrieved_frame, score``.
    """

    run_id: str
    info: dict
    run_dir: Path
    latents: Tensor
    blocks: Tensor
    embeddings: Tensor
    descriptor: str
    retrievals: dict[str, list]


@dataclass(frozen=True)
class RunReportPaths:
    """Files written by :func:`write_run_report`."""

    markdown: Path
    json: Path
    figure: Path


def _knob(info: dict, name: str) -> Any:
    """A ``model.init_args`` value of the run's recorded config (None if absent).

    Sampler knobs (``window``, ...) are looked up under ``sampling:``; configs stored before
    they were grouped are read through :func:`lrag.runs.compat.migrate_config`.
    """
    try:
        config = migrate_config(yaml.safe_load(info.get("config_yaml") or "") or {})
    except yaml.YAMLError:
        return None
    model = config.get("model", {}) or {}
    args = model.get("init_args", model) or {}
    return (args.get("sampling") or {}).get(name) if name in SAMPLER_KNOBS else args.get(name)


def _find_run_dir(info: dict, db: Path, run_dir: str | Path | None) -> Path:
    run_id = info["run_id"]
    if run_dir is not None:
        tried = [Path(run_dir)]
    else:  # where `lrag predict` put it (its out_dir), else next to the store (the default layout)
        out_dir = _knob(info, "out_dir")
        tried = ([Path(out_dir) / run_id] if out_dir else []) + [db.parent / run_id]
    for path in tried:
        if path.is_dir():
            return path
    raise RunReportError(f"run {run_id!r}: no run directory at {', '.join(map(str, tried))}; "
                         "pass --run_dir <out_dir>/<run_id> (the folder with blocks/).")


def _leading_frames(frame_index: np.ndarray, run_id: str) -> int:
    """Frames ``0 .. n-1`` present without a hole (an interrupted run stops at its last block)."""
    expected = np.arange(len(frame_index))
    holes = np.nonzero(frame_index != expected)[0]
    n = int(holes[0]) if holes.size else len(frame_index)
    if n < len(frame_index):
        log.warning("run %s: frame %d is missing; reporting frames 0..%d", run_id, n, n - 1)
    if n < 2:
        raise RunReportError(f"run {run_id!r}: {n} stored frame(s); the report needs at least 2 "
                             "(finish or resume the run: `lrag predict ... --resume RUN_ID`).")
    return n


def _read_latents(run_dir: Path, shards: list[str], keys: list[str], frames: np.ndarray) -> Tensor:
    """Latents of ``frames`` from the shards the store rows point to (``[F, C, H, W]`` float32)."""
    paths = {s: (run_dir / s if not Path(s).is_absolute() else Path(s)) for s in dict.fromkeys(shards)}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise RunReportError(f"latent shard {missing[0]} (and {len(missing) - 1} more) is missing; pass "
                             "--run_dir pointing at the run folder the store rows refer to.")
    by_key = {}
    for clip in iter_clips([str(p) for p in paths.values()]):
        by_key[clip.key] = (int(clip.meta.get("frame_offset", 0)), clip.latents)
    out = []
    for key, f in zip(keys, frames.tolist()):
        if key not in by_key:
            raise RunReportError(f"frame {f}: clip {key!r} is not in its shard; the run folder does "
                                 "not match the store (pass the right --run_dir).")
        offset, clip = by_key[key]
        out.append(torch.from_numpy(np.asarray(clip[f - offset], dtype=np.float32)))
    return torch.stack(out)


def load_run(db: str | Path, run_id: str, run_dir: str | Path | None = None) -> RunData:
    """Read run ``run_id`` from the store at ``db`` and its latents from its run folder.

    Args:
        db: The LanceDB memory store (``runs/memory.lancedb`` by default in ``lrag predict``).
        run_id: A run of that store (``lrag memory runs`` lists them).
        run_dir: The run folder; by default ``<out_dir>/<run_id>`` of the run's config, else
            ``<db parent>/<run_id>``.
    """
    db = Path(db)
    if not db.exists():
        raise RunReportError(f"memory store {db} does not exist; pass --db with the store "
                             "`lrag predict` wrote (its model.init_args.store_uri).")
    store = MemoryStore(db)
    info = store.get_run(run_id)
    if info is None:
        known = [r["run_id"] for r in store.list_runs()][-5:]
        raise RunReportError(f"memory store {db}: unknown run {run_id!r}; recent runs: "
                             f"{', '.join(known) or 'none'} (`lrag memory runs --db {db}`).")
    rows = store.frames(run_id, with_previews=False)
    frame_index = np.asarray(rows["frame_index"].to_numpy(), dtype=np.int64)
    n = _leading_frames(frame_index, run_id)
    rows = rows.slice(0, n)
    folder = _find_run_dir(info, db, run_dir)
    emb = np.asarray(rows["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False))
    return RunData(
        run_id=run_id, info=info, run_dir=folder,
        latents=_read_latents(folder, rows["shard"].to_pylist(), rows["key"].to_pylist(), frame_index[:n]),
        blocks=torch.tensor(rows["block_index"].to_pylist(), dtype=torch.long),
        embeddings=torch.from_numpy(emb.reshape(n, -1).astype(np.float32)),
        descriptor=str(rows["descriptor"][0]),
        retrievals=store.retrievals(run_id).select(
            ["block_index", "query_frame", "rank", "retrieved_frame", "score"]).to_pydict(),
    )


def run_numbers(data: RunData, max_gap: int | None = None) -> dict[str, Any]:
    """The report's numbers: ``{"summary": {name: value}, "series": {...}}``.

    Args:
        data: The run (:func:`load_run`).
        max_gap: Largest Δt of the self-similarity curve (default: the whole video).
    """
    frames = data.latents.shape[0]
    gaps, sim, pairs = self_similarity_by_gap(data.embeddings, max_gap or frames - 1)
    summary = video_summary(data.latents, data.blocks)
    summary["self_similarity_gap1"] = float(sim[0])
    summary["self_similarity_mean"] = float(sim.mean())
    window = _knob(data.info, "window")
    if isinstance(window, int) and window < frames:
        # frames that just left the attention window: what retrieval has to bring back
        summary["self_similarity_beyond_window"] = float(sim[gaps >= window].mean()) if (gaps >= window).any() \
            else math.nan
    r = data.retrievals
    summary.update({f"retrieval_{k}": v for k, v in retrieval_summary(
        r["query_frame"], r["retrieved_frame"], r["score"], r["rank"]).items()})
    mean, std = frame_stats(data.latents)
    series = {"self_similarity": {"gap": gaps.tolist(), "cosine": sim.tolist(), "pairs": pairs.tolist()},
              "frame_mean": mean.tolist(), "frame_std": std.tolist(), "flicker": flicker(data.latents).tolist(),
              "block_index": data.blocks.tolist(), "retrievals": r}
    return {"summary": summary, "series": series}


def _markdown(data: RunData, numbers: dict[str, Any]) -> str:
    s, info = numbers["summary"], data.info
    f = lambda v: "–" if not (isinstance(v, (int, float)) and math.isfinite(v)) else f"{v:.4g}"  # noqa: E731
    lines = [f"# Run report: `{data.run_id}`", "",
             f"Backbone `{info.get('backbone')}`, descriptor `{data.descriptor}`, "
             f"{int(s['frames'])} latent frames ({info.get('frames_planned')} planned, status "
             f"{info.get('status')}), window {_knob(info, 'window')}. No ground truth is used.", "",
             "| measure | value | meaning |", "|---|---|---|"]
    rows = [
        ("flicker", "mean squared change between consecutive frames (0 = frozen; 2σ² for unrelated frames)"),
        ("flicker_within_block", "the same inside a generated block"),
        ("flicker_across_blocks", "the same across block boundaries (seams)"),
        ("frame_mean_slope", "change of the per-frame latent mean per frame"),
        ("frame_std_slope", "change of the per-frame latent std per frame"),
        ("frame_std_change_pct", "std of the last eighth vs the first eighth of the video, %"),
        ("self_similarity_gap1", "cosine of the descriptors of neighbouring frames"),
        ("self_similarity_beyond_window", "mean cosine of frames at least a window apart"),
        ("self_similarity_mean", "mean cosine over all gaps"),
        ("retrieval_retrievals", "retrieved frames (all blocks and ranks)"),
        ("retrieval_age_mean", "mean age of a retrieved frame (query frame − retrieved frame)"),
        ("retrieval_age_median", "median age"),
        ("retrieval_age_min", "youngest retrieved frame"),
        ("retrieval_age_max", "oldest retrieved frame"),
        ("retrieval_distinct_frames", "distinct frames ever retrieved"),
        ("retrieval_score_top_mean", "mean cosine score of the rank-0 retrieval"),
        ("retrieval_score_mean", "mean cosine score over all ranks"),
    ]
    lines += [f"| {k} | {f(s.get(k, math.nan))} | {why} |" for k, why in rows if k in s]
    sim = numbers["series"]["self_similarity"]
    table = [(g, c) for g, c in zip(sim["gap"], sim["cosine"]) if g in _TABLE_GAPS]
    lines += ["", "## Descriptor self-similarity against Δt", "",
              "| Δt (frames) | " + " | ".join(str(g) for g, _ in table) + " |",
              "|---|" + "---|" * len(table),
              "| cosine | " + " | ".join(f"{c:.3f}" for _, c in table) + " |", ""]
    return "\n".join(lines)


def write_run_report(data: RunData, out_dir: str | Path | None = None,
                     max_gap: int | None = None) -> RunReportPaths:
    """Compute the numbers of ``data`` and write ``report.md``, ``report.json``, ``run_report.png``.

    Args:
        data: The run (:func:`load_run`).
        out_dir: Output folder (created); default ``<run_dir>/eval``.
        max_gap: Largest Δt of the self-similarity curve (default: the whole video).
    """
    out = Path(out_dir) if out_dir is not None else data.run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    numbers = run_numbers(data, max_gap)
    md = out / "report.md"
    md.write_text(_markdown(data, numbers) + "\n")
    doc = {"version": RUN_REPORT_VERSION, "kind": "run", "run_id": data.run_id, "run_dir": str(data.run_dir),
           "descriptor": data.descriptor, "window": _knob(data.info, "window"), **numbers}
    js = out / "report.json"
    js.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
    fig = plot_run_report(numbers["series"], out / "run_report.png", data.run_id, _knob(data.info, "window"))
    log.info("run report of %s written to %s", data.run_id, out)
    return RunReportPaths(md, js, fig)

