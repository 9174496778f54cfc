"""Offline recall@K of frame descriptors on clean, native and oracle-retrieval videos.

The diagnostic behind docs/results/eval.md ("content retrieval only works on videos that are
already consistent"): for every block of every video, rank the candidates the sampler would
have had (evicted frames minus the R newest, blank prefix excluded) by cosine similarity to
the newest frame's descriptor, and score the top K against ground-truth viewport overlap with
the block — the same relevance rule as ``lrag eval``. Videos are generated once per source
with the eval settings, so no retrieval feedback is involved: each descriptor is scored on the
same frames.

    python scripts/descriptor_recall.py --seeds 2000 2001 2002 2003 2004 2005 2006 2007 \
        --embedders asset:embedder_tiny.safetensors

Use validation seeds (not the eval worlds 1000-1031, not the training worlds 0-63) when
choosing an embedder recipe with it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch
import yaml
from einops import rearrange, reduce
from torch import Tensor

from lrag.assets import resolve_asset
from lrag.data.ground_truth import relevant_frames
from lrag.data.world_config import WorldConfig
from lrag.data.world_datamodule import render_world
from lrag.eval.functional import retrieval_scores
from lrag.eval.runner import EvalSettings, Variant, candidate_frames, generate_video, load_conditioned_backbone
from lrag.memory.retrieval import cosine_topk
from lrag.checkpoints.embedder import load_embedder

Descriptor = Callable[[Tensor], Tensor]  # [T, C, H, W] -> [T, D]


def fixed_descriptors() -> dict[str, Descriptor]:
    """Descriptors without parameters: channel means, the flat latent, the per-video centred latent."""
    def flat(x: Tensor) -> Tensor:
        return rearrange(x, "t c h w -> t (c h w)")

    return {"avg_pool": lambda x: reduce(x, "t c h w -> t c", "mean"),
            "flat": flat,
            "flat_centred": lambda x: flat(x) - flat(x).mean(dim=0, keepdim=True)}


def retrieve_offline(desc: Tensor, meta: dict, s: EvalSettings) -> tuple[list[list[int]], list[list[int]]]:
    """Retrieved and relevant frames per block: the sampler's candidate rule and top-K cosine."""
    got, relevant = [], []
    for start in range(s.frames_per_block, desc.shape[0], s.frames_per_block):
        cands = candidate_frames(s, start)
        if not cands:
            continue
        _, top = cosine_topk(desc[start - 1][None], desc[cands][None], min(s.memory_size, len(cands)))
        got.append([cands[i] for i in top[0].tolist()])
        relevant.append(relevant_frames(meta, range(start, start + s.frames_per_block), cands))
    return got, relevant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/eval/demo.yaml", help="eval settings (backbone, window, K, R)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="world seeds (use validation worlds)")
    parser.add_argument("--num_frames", type=int, default=120)
    parser.add_argument("--embedders", nargs="*", default=[], help="embedder files (asset:<name> allowed)")
    args = parser.parse_args()

    raw = yaml.safe_load(Path(args.config).read_text())
    s = EvalSettings(**{k: v for k, v in raw.items() if k in EvalSettings.__dataclass_fields__})
    s.num_frames = args.num_frames
    net = load_conditioned_backbone(s)
    wcfg = WorldConfig(frame_height=s.height, frame_width=s.width, channels=s.channels,
                       revisit_min=s.revisit_min, revisit_max=s.revisit_max)
    descriptors = fixed_descriptors()
    for path in args.embedders:
        model = load_embedder(resolve_asset(path, "--embedders")).eval()
        descriptors[Path(path.removeprefix("asset:")).stem] = model.encode

    sources = {"clean world": None, "oracle-retrieval video": "oracle", "native video": "native"}
    rows: dict[str, dict[str, float]] = {name: {} for name in descriptors}
    for label, variant in sources.items():
        hits: dict[str, tuple[list, list]] = {name: ([], []) for name in descriptors}
        for seed in args.seeds:
            world = render_world(seed, s.num_frames, wcfg)
            if variant is None:
                video = world["latents"].float()
            else:
                v = Variant(variant, None if variant == "native" else variant, "replace")
                video = generate_video(s, net, world, v, seed)[0][0]
            for name, fn in descriptors.items():
                with torch.no_grad():
                    got, rel = retrieve_offline(fn(video), world["meta"], s)
                hits[name][0].extend(got)
                hits[name][1].extend(rel)
        for name, (got, rel) in hits.items():
            _, recall = retrieval_scores(got, rel, s.memory_size)
            rows[name][label] = float(recall.mean())
    print(f"recall@{s.memory_size} over {len(args.seeds)} worlds x {s.num_frames} frames (queries with a relevant frame)\n")
    print("| descriptor | " + " | ".join(sources) + " |")
    print("|---|" + "---|" * len(sources))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[label]:.3f}" for label in sources) + " |")


if __name__ == "__main__":
    main()
