"""Closed-loop sweep of retrieval variants on the VALIDATION worlds, one Markdown table.

Every variant is generated and scored exactly as ``lrag eval`` does (:func:`lrag.eval.runner.eval_worlds`:
same backbone, noise, camera and scoring), one (position rule, world) job per worker process, and
summarised per variant as the mean over worlds with its 95 % bootstrap interval
(:func:`lrag.eval.report.aggregate`), the change against native on the same world, and how many
worlds improve. Variants:

* with the config's ``memory_position`` (``zero``): native, avg_pool, the shipped WTD embedder,
  the generator's own keys (``gen_keys`` at a few layers, keys and queries as the query side),
  the two-stage search (avg_pool / embedder shortlist of ``--rerank`` re-ranked by keys), oracle;
* with ``memory_position: slot`` and ``ordered``: the ``--position_descriptors`` again.

    python scripts/validation_sweep.py --workers 16 --device cpu      # worlds 2000-2031, 120 frames

Use it to choose; the held-out worlds 1000-1099 are refused (report them once, after choosing,
with ``lrag eval``). Needs torch, einops, numpy, matplotlib and tensorboard only (no store, no
shards, no jsonargparse). Writes ``<out>/validation.md`` and ``<out>/runs.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import time
from pathlib import Path

import torch
import yaml

from lrag.eval.report import BASELINE, RunResult, aggregate, json_safe
from lrag.eval.runner import EvalSettings, eval_worlds, variants

HELD_OUT = range(1000, 1100)  # held-out eval worlds (1000-1047 used so far, the rest reserved): never used to choose
EMBEDDER = "ae:asset:embedder_tiny.safetensors"
POSITIONS = ("slot", "ordered")


def default_descriptors(rerank: int) -> list[str]:
    """The variants run with the config's memory_position (native is always added)."""
    return ["avg_pool", EMBEDDER, "gen_keys:0", "gen_keys:-1", "gen_keys:0,-1", "gen_keys:-1:queries",
            f"avg_pool+rerank{rerank}", f"{EMBEDDER}+rerank{rerank}", f"{EMBEDDER}+stride3", f"{EMBEDDER}+stride5",
            "oracle"]


def _job(s: EvalSettings, seed: int, only: list[str] | None, suffix: str) -> list[RunResult]:
    torch.set_num_threads(1)  # one core per worker: the tiny model gains nothing from more
    out = eval_worlds(s, [seed], threads=1, only=only)
    for r in out:
        r.variant += suffix
    return out


def _cell(row: dict, key: str, pct: bool = False) -> str:
    mean, lo, hi = (row.get(k, math.nan) for k in (key, f"{key}_lo", f"{key}_hi"))
    if not math.isfinite(mean):
        return "–"
    if pct:
        return f"{mean:+.1f} % [{lo:+.1f}, {hi:+.1f}]" if math.isfinite(lo) else f"{mean:+.1f} %"
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) else f"{mean:.4f}"


def _improved(row: dict, key: str) -> str:
    frac, of = row.get(f"{key}_improved", math.nan), row.get(f"{key}_improved_of", math.nan)
    return f"{round(frac * of)}/{int(of)}" if math.isfinite(frac) and of > 0 else "–"


def _beats_avg_pool(results: list[RunResult], variant: str) -> str:
    """Worlds where the variant's retrieval recall beats avg_pool's (strictly), of those with both."""
    recall = {(r.world, r.variant): r.scalars.get("retrieval_recall", math.nan) for r in results}
    pairs = [(v, recall.get((w, "rag-avg_pool"), math.nan)) for (w, name), v in recall.items() if name == variant]
    pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    return f"{sum(a > b for a, b in pairs)}/{len(pairs)}" if pairs and variant != "rag-avg_pool" else "–"


def markdown_table(results: list[RunResult], header: str) -> str:
    """One row per variant: means with 95 % bootstrap intervals over worlds and changes vs native."""
    agg = aggregate(results)
    lines = [header, "",
             "| variant | worlds | revisit inconsistency ↓ [95 % CI] | Δ vs native (mean of per-world) [95 % CI] "
             "| worlds improved | R@K [95 % CI] | R@K beats avg_pool | Δ frame variance | Δ quality drift slope |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, row in agg.items():
        lines.append(
            f"| {variant} | {int(row['worlds'])} | {_cell(row, 'revisit_inconsistency')} | "
            f"{_cell(row, 'revisit_inconsistency_change_pct', True)} | {_improved(row, 'revisit_inconsistency')} | "
            f"{_cell(row, 'retrieval_recall')} | {_beats_avg_pool(results, variant)} | "
            f"{_cell(row, 'frame_variance_change_pct', True)} | {_cell(row, 'quality_drift_slope_change_pct', True)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/eval/demo.yaml", help="eval settings (backbone, window, K, R)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(2000, 2032)),
                        help="validation world seeds (not the held-out 1000-1099)")
    parser.add_argument("--num_frames", type=int, default=120)
    parser.add_argument("--workers", type=int, default=1, help="processes, one (position rule, world) job each")
    parser.add_argument("--device", default="cpu", help="cpu (recommended for the tiny model) or cuda")
    parser.add_argument("--rerank", type=int, default=8, help="first-stage shortlist size M of the +rerank variants")
    parser.add_argument("--descriptors", nargs="+", default=None,
                        help="variants with the config's memory_position (default: see default_descriptors)")
    parser.add_argument("--position_descriptors", nargs="*", default=[EMBEDDER, "oracle"],
                        help=f"variants repeated with memory_position {' and '.join(POSITIONS)} (none: skip)")
    parser.add_argument("--backbone_checkpoint", default=None,
                        help="another backbone than the config's (e.g. one trained without memory exposure)")
    parser.add_argument("--out", default="runs/validation_sweep")
    args = parser.parse_args(argv)

    leaked = sorted(set(args.seeds) & set(HELD_OUT))
    if leaked:
        raise SystemExit(f"validation_sweep: seeds {leaked[:4]}... are held-out eval worlds (1000-1099); "
                         "choose on validation worlds (default 2000-2031) and report held-out once with lrag eval.")
    raw = yaml.safe_load(Path(args.config).read_text())
    base = EvalSettings(**{k: v for k, v in raw.items() if k in EvalSettings.__dataclass_fields__})
    base = dataclasses.replace(base, seeds=list(args.seeds), num_frames=args.num_frames, device=args.device,
                               descriptors=args.descriptors or default_descriptors(args.rerank),
                               out_dir=args.out, workers=1)
    if args.backbone_checkpoint:
        base = dataclasses.replace(base, backbone_checkpoint=args.backbone_checkpoint)
    groups = [(base, None, "")]
    for pos in POSITIONS:
        if args.position_descriptors and pos != base.memory_position:
            s = dataclasses.replace(base, memory_position=pos, descriptors=list(args.position_descriptors))
            groups.append((s, [v.name for v in variants(s) if v.name != BASELINE], f"@{pos}"))
    jobs = [(s, seed, only, suffix) for s, only, suffix in groups for seed in args.seeds]

    tic = time.perf_counter()
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            parts = pool.starmap(_job, jobs, chunksize=1)
    else:
        parts = [_job(*job) for job in jobs]
    seconds = time.perf_counter() - tic
    order = {v: i for i, v in enumerate(dict.fromkeys(r.variant for part in parts for r in part))}
    results = sorted((r for part in parts for r in part), key=lambda r: (order[r.variant], r.world))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"## Validation sweep: worlds {min(args.seeds)}–{max(args.seeds)} ({len(args.seeds)}), "
              f"{args.num_frames} frames, `{args.config}`, memory_position {base.memory_position} unless "
              f"@slot/@ordered; {len(jobs)} jobs on {args.workers} workers ({args.device}), "
              f"{seconds:.0f} s wall\n\n`python scripts/validation_sweep.py --workers {args.workers} "
              f"--device {args.device} --num_frames {args.num_frames} --seeds {' '.join(map(str, args.seeds))}"
              + (f" --backbone_checkpoint {args.backbone_checkpoint}" if args.backbone_checkpoint else "") + "`")
    text = markdown_table(results, header)
    (out / "validation.md").write_text(text)
    (out / "runs.json").write_text(json.dumps(json_safe([dataclasses.asdict(r) for r in results])))
    print(text)
    print(f"table: {out / 'validation.md'}  runs: {out / 'runs.json'}")


if __name__ == "__main__":
    main()
