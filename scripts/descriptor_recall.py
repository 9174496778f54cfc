"""Offline recall@K of frame descriptors on clean, native and oracle-retrieval videos.

The diagnostic behind docs/results/eval.md ("content retrieval only works on videos that are
already consistent"): for every block of every video, rank the candidates the sampler would
have had (evicted frames minus the R newest, blank prefix excluded) by cosine similarity to
the newest frame's descriptor, and score the top K against ground-truth viewport overlap with
the block — the same relevance rule as ``lrag eval``. Videos are generated once per source
with the eval settings, so no retrieval feedback is involved: each descriptor is scored on the
same frames.

    python scripts/descriptor_recall.py --seeds 2000 2001 2002 2003 2004 2005 2006 2007 \
        --embedders asset:embedder_tiny.safetensors --gen_keys 0 -1 0,-1

``--gen_keys`` adds the backbone's own pooled keys at those layers (one comma-separated list per
descriptor): the video's context passes are replayed through the sampler with the eval's
settings and camera, as on resume, and the keys captured there (:mod:`lrag.memory.key_descriptor`).

Use validation seeds (not the eval worlds 1000-1031, not the training worlds 0-63) when
choosing an embedder recipe with it.
"""

from __future__ import annotations

import argparse
import multiprocessing
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
from lrag.eval.runner import Variant, _prefix_latents, candidate_frames, generate_video, load_conditioned_backbone
from lrag.eval.settings import EvalSettings
from lrag.memory.bank import RetrievalMemory
from lrag.memory.retrieval import mmr_topk
from lrag.checkpoints.embedder import load_embedder
from lrag.nets.conditioning import TinyTextEncoder
from lrag.sampling.prefix import condition_on_camera
from lrag.sampling.sampler import ARSampler, SeededNoise
from lrag.sampling.schedule import FlowMatchSchedule

Descriptor = Callable[[Tensor], Tensor]  # [T, C, H, W] -> [T, D]


def fixed_descriptors() -> dict[str, Descriptor]:
    """Descriptors without parameters: channel means, the flat latent, the per-video centred latent."""
    def flat(x: Tensor) -> Tensor:
        return rearrange(x, "t c h w -> t (c h w)")

    return {"avg_pool": lambda x: reduce(x, "t c h w -> t c", "mean"),
            "flat": flat,
            "flat_centred": lambda x: flat(x) - flat(x).mean(dim=0, keepdim=True)}


def generator_keys(s: EvalSettings, net: torch.nn.Module, world: dict, layers: list[int]) -> Descriptor:
    """``video [T, C, H, W] -> [T, D]``: pooled keys of ``layers`` from replayed context passes."""
    def describe(video: Tensor) -> Tensor:
        settings, dev = s.sampler_settings("replace"), torch.device(s.device)
        p = settings.prefix
        memory = RetrievalMemory(s.memory_size, s.recent_exclude, "gen_keys", kv_tier="device", key_layers=layers)
        condition_on_camera(net, memory, world["positions"][None], world["camera"][None], p, dev)
        memory.exclude_before(p)
        sampler = ARSampler(net, FlowMatchSchedule(s.shift, denoising_steps=s.denoising_steps), memory, settings)
        context = TinyTextEncoder(s.text_len, net.backbone.config.text_dim)([world["prompt"]]).to(dev)
        latents = torch.cat([_prefix_latents(s), video[None].float()], dim=1).to(dev)
        noise = SeededNoise(0, 1, s.channels, s.height, s.width, s.frames_per_block, device=dev)
        sampler(noise, context, latents.shape[1], resume_latents=latents)  # every block replayed
        return memory.descriptors()[0, p:].cpu()

    return describe


def retrieve_offline(desc: Tensor, meta: dict, s: EvalSettings, diversity: float = 0.0,
                     centre: bool = False) -> tuple[list[list[int]], list[list[int]]]:
    """Retrieved and relevant frames per block: the sampler's candidate rule and top-K (MMR) cosine.

    ``centre`` subtracts the mean descriptor of the frames seen so far (causal, as the sampler
    could) from query and candidates before the cosine.
    """
    got, relevant = [], []
    for start in range(s.frames_per_block, desc.shape[0], s.frames_per_block):
        cands = candidate_frames(s, start)
        if not cands:
            continue
        d = desc[:start] - desc[:start].mean(dim=0, keepdim=True) if centre else desc[:start]
        _, top = mmr_topk(d[start - 1][None], d[cands][None], min(s.memory_size, len(cands)), diversity)
        got.append([cands[i] for i in top[0].tolist()])
        relevant.append(relevant_frames(meta, range(start, start + s.frames_per_block), cands))
    return got, relevant


def _settings(config: str, num_frames: int) -> EvalSettings:
    raw = yaml.safe_load(Path(config).read_text())
    s = EvalSettings(**{k: v for k, v in raw.items() if k in EvalSettings.__dataclass_fields__})
    s.num_frames = num_frames
    return s


def score_world(args: argparse.Namespace, source: str, seed: int) -> dict[str, float]:
    """Recall@K of every descriptor x rule on one world's video from ``source`` (one process's job)."""
    torch.set_num_threads(1)
    s = _settings(args.config, args.num_frames)
    wcfg = WorldConfig(frame_height=s.height, frame_width=s.width, channels=s.channels,
                       revisit_min=s.revisit_min, revisit_max=s.revisit_max)
    descriptors = fixed_descriptors()
    for path in args.embedders:
        model = load_embedder(resolve_asset(path, "--embedders")).eval()
        descriptors[Path(path.removeprefix("asset:")).stem] = model.encode
    world = render_world(seed, s.num_frames, wcfg)
    if args.gen_keys:
        net = load_conditioned_backbone(s)
        for spec in args.gen_keys:
            descriptors[f"gen_keys:{spec}"] = generator_keys(s, net, world, [int(i) for i in spec.split(",")])
    if source == "clean":
        video = world["latents"].float()
    else:
        v = Variant(source, None if source == "native" else source, "replace")
        video = generate_video(s, load_conditioned_backbone(s), world, v, seed)[0][0]
    out = {}
    for name, fn in descriptors.items():
        with torch.no_grad():
            desc = fn(video)
        for lam in args.diversity:
            for centre in ([False, True] if args.centre else [False]):
                got, rel = retrieve_offline(desc, world["meta"], s, lam, centre)
                _, recall = retrieval_scores(got, rel, s.memory_size)
                out[name + (f" mmr{lam:g}" if lam else "") + (" centred" if centre else "")] = float(recall.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/eval/demo.yaml", help="eval settings (backbone, window, K, R)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="world seeds (use validation worlds)")
    parser.add_argument("--num_frames", type=int, default=120)
    parser.add_argument("--embedders", nargs="*", default=[], help="embedder files (asset:<name> allowed)")
    parser.add_argument("--gen_keys", nargs="*", default=[],
                        help="generator-key descriptors, one layer list each (e.g. 0 -1 0,-1)")
    parser.add_argument("--diversity", type=float, nargs="*", default=[0.0], help="MMR diversity values")
    parser.add_argument("--centre", action="store_true", help="also score causally centred descriptors")
    parser.add_argument("--sources", nargs="*", default=["clean", "oracle", "native"],
                        choices=["clean", "oracle", "native"])
    parser.add_argument("--workers", type=int, default=1, help="processes (one world video each)")
    args = parser.parse_args()

    jobs = [(args, source, seed) for source in args.sources for seed in args.seeds]
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            results = pool.starmap(score_world, jobs)
    else:
        results = [score_world(*job) for job in jobs]
    labels = {"clean": "clean world", "oracle": "oracle-retrieval video", "native": "native video"}
    rows: dict[str, dict[str, str]] = {}
    for source in args.sources:
        per_world = [r for (_, src, _), r in zip(jobs, results) if src == source]
        base = torch.tensor([r["avg_pool"] for r in per_world])
        for name in per_world[0]:
            r = torch.tensor([w[name] for w in per_world])
            ok = ~(r.isnan() | base.isnan())
            wins = int((r[ok] > base[ok]).sum())
            rows.setdefault(name, {})[source] = f"{r[ok].mean():.3f} ({wins}/{int(ok.sum())})"
    s = _settings(args.config, args.num_frames)
    print(f"recall@{s.memory_size}, mean over {len(args.seeds)} worlds x {s.num_frames} frames of the per-world "
          "recall (queries with a relevant frame); in brackets: worlds where it beats avg_pool\n")
    print("| descriptor | " + " | ".join(labels[x] for x in args.sources) + " |")
    print("|---|" + "---|" * len(args.sources))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[x] for x in args.sources) + " |")


if __name__ == "__main__":
    main()
