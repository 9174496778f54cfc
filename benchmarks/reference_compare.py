"""Our native sampler against the reference implementation's, one process, one card.

Issue 11, target 3: our native latent frames/s >= 1.2x the reference's (LongLive-RAG at 973884a)
on the same card in the same session. Both run the Wan2.1-T2V-1.3B causal model with the same
random weights (ours are loaded into the reference model; the key names are the same), random
text embeddings ``[1, 512, 4096]``, 832x480 (60x104 latents), 3 frames per block, steps
[1000, 750, 500, 250] warped + the context pass, window 12, sink 1, bf16. No text encoder, no VAE.

* reference: its ``CausalWanModel`` driven by its own ``CausalInferencePipeline.inference``
  (see ``reference_setup.py`` for what is stubbed; its attention kernel is SDPA through
  ``flash_attn_sdpa.py``, like ours).
* ours: ``ARSampler`` in native mode, built as ``predict_wan.py`` builds it; ``--compile`` adds a
  row with our ``torch.compile`` option (every block minus its self-attention call). Our speed
  knobs (``--sdpa-backend``, ``--rope-cache``) give one row of ours per value (``ours[cudnn]``);
  the reference keeps its own attention path.
* ``--fp8`` adds rows of ours with ``CausalWanModel(fp8=True)`` (e4m3 block matmuls; with
  ``--compile`` also compiled), same weights, and reports each one's final-latent relative L2
  error against its bf16 twin (``fp8_rel_err``).
* ``--reference-lora R`` adds a row: the reference with its own peft LoRA of rank R unmerged on
  every block Linear, as its ``inference.py`` runs the LongLive config (R = 256); we merge LoRA
  at load time, so this is the reference as shipped.

Rows run interleaved (reference, ours, ..., then reversed) after one untimed warm-up call each.
Block ends are CUDA events (no sync of ours; the reference syncs itself through ``.item()``).

    python benchmarks/reference_compare.py --reference .devcarry/reference --repeats 2 --compile \\
        --sdpa-backend auto cudnn --json benchmarks/results/reference_compare_h200.json
    python -O benchmarks/reference_compare.py --reference ../LongLive-RAG --tiny --device cpu --frames 9
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from predict_wan_measure import EDGE_BLOCKS, sync  # noqa: E402
from predict_wan_report import COMPILE_ONE_BACKEND, write_json  # noqa: E402
from predict_wan_setup import (  # noqa: E402
    DTYPES, GIB, Mode, apply_knobs, environment, init_backbone, make_noise, make_sampler, modes_from, setup_device,
)
from reference_setup import (  # noqa: E402
    REFERENCE_COMMIT, AttrDict, BlockStamps, build_model, build_pipeline, load_reference, seconds_between, stamp,
)

log = logging.getLogger("reference_compare")
TARGET = 1.2  # issue 11 target 3: ours / reference


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", required=True, help="root of a LongLive-RAG checkout (973884a) or its needed files")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--frames", type=int, default=120, help="latent frames per video")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of every row")
    p.add_argument("--warmup-blocks", type=int, default=1, help="blocks of the untimed warm-up call per row")
    p.add_argument("--num-layers", type=int, default=None, help="override the 1.3B model's 30 layers")
    p.add_argument("--height", type=int, default=None, help="latent height (60; 8 with --tiny)")
    p.add_argument("--width", type=int, default=None, help="latent width (104; 8 with --tiny)")
    p.add_argument("--frames-per-block", type=int, default=3)
    p.add_argument("--window", type=int, default=12, help="KV window in frames, sink included")
    p.add_argument("--sink", type=int, default=1)
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 750, 500, 250], help="denoising steps (warped)")
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="add rows: ours with torch.compile of every block minus its self-attention call")
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"])
    p.add_argument("--fp8", action="store_true",
                   help="add rows: ours with FP8 (e4m3) block matmuls, and their output error against bf16")
    p.add_argument("--sdpa-backend", nargs="+", default=["auto"],
                   choices=["auto", "flash", "cudnn", "efficient", "math"],
                   help="our CausalWanModel.attention_backend; one row of ours per value")
    p.add_argument("--rope-cache", nargs="+", default=["on"], choices=["on", "off"],
                   help="our CausalWanModel.rope_cache; 'on off' gives both rows")
    p.add_argument("--reference-lora", type=int, default=0, metavar="RANK",
                   help="add a row: the reference with an unmerged peft LoRA of this rank (LongLive: 256)")
    p.add_argument("--tiny", action="store_true",
                   help="CPU check: 1 layer, FFN 256, text 16x64, 8x8 latents (heads stay 12x128: the reference's "
                        "pipeline hard-codes them)")
    p.add_argument("--json", default=None, help="write results here (rewritten after every run)")
    args = p.parse_args(argv)
    args.height = args.height or (8 if args.tiny else 60)
    args.width = args.width or (8 if args.tiny else 104)
    if args.compile and len(args.sdpa_backend) > 1:
        p.error(COMPILE_ONE_BACKEND)
    if args.frames <= 0 or args.frames % args.frames_per_block:
        p.error(f"--frames {args.frames}: must be a positive multiple of --frames-per-block {args.frames_per_block}")
    # What make_sampler and modes_from read for a native sampler.
    args.recent_exclude, args.descriptor, args.memory_size = 0, "avg_pool", 0
    args.modes, args.kv_tier = ["native"], []
    return args


def model_config(args: argparse.Namespace):
    from lrag.nets.wan import preset_config

    overrides = {"num_layers": 1, "ffn_dim": 256, "text_dim": 64, "text_len": 16} if args.tiny else {}
    if args.num_layers is not None:
        overrides["num_layers"] = args.num_layers
    return preset_config("wan_1_3b", **overrides)


def sdpa_backend(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, lq: int, lk: int) -> str:
    """The aten kernel SDPA dispatches to at the self-attention shape (profiled once)."""
    q = torch.randn(1, heads, lq, head_dim, device=device, dtype=dtype)
    kv = torch.randn(1, heads, lk, head_dim, device=device, dtype=dtype)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
    names = [e.name for e in prof.events() if e.name.startswith("aten::_")]
    kernels = [n for n in names if "attention" in n and n != "aten::_scaled_dot_product_attention"]
    return kernels[-1].removeprefix("aten::") if kernels else (names[-1] if names else "unknown")


class Row:
    """One measured implementation: a name and a call ``run(frames, seed) -> (latents, stamps)``."""

    def __init__(self, name: str, run) -> None:
        self.name, self.run = name, run


def reference_row(name: str, ref, model: torch.nn.Module, context: torch.Tensor, args, tokens: int) -> Row:
    pipe = build_pipeline(ref, model, context, args, tokens)
    stamps = BlockStamps(pipe.generator, len(args.steps) + 1, context.device)
    gen = torch.Generator(device=context.device)

    def run(frames: int, seed: int):
        noise = torch.randn(1, frames, model.in_dim, args.height, args.width, generator=gen.manual_seed(seed),
                            device=context.device, dtype=context.dtype)
        torch.manual_seed(seed)  # its re-noise draws from the global generator (randn_like)
        stamps.reset()
        start = stamp(context.device)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _, latents = pipe.inference(noise, ["benchmark"], return_latents=True, skip_vae_decode=True)
        return latents, [start, *stamps.stamps]

    return Row(name, run)


def ours_row(name: str, model: torch.nn.Module, context: torch.Tensor, args, mode: Mode | None = None) -> Row:
    mode = mode or Mode("native", 0, "device")
    sampler = make_sampler(mode, model, args, None)

    def run(frames: int, seed: int):
        apply_knobs(mode, model)  # our rows may share one model
        marks = [stamp(context.device)]
        latents = sampler(make_noise(sampler, args, context, seed), context, frames,
                          on_block=lambda _result: marks.append(stamp(context.device)))
        return latents, marks

    return Row(name, run)


def measure(row: Row, frames: int, repeat: int, args, device: torch.device,
            keep: dict[str, torch.Tensor] | None = None) -> dict:
    """One timed call; failures become the record's status. ``keep`` collects each row's latents
    (first repeat) for the FP8 error."""
    record = {"row": row.name, "frames": frames, "repeat": repeat}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    tic = time.perf_counter()
    try:
        with torch.no_grad():
            latents, marks = row.run(frames, args.seed)
    except (RuntimeError, ValueError, AssertionError) as err:
        log.error("%s failed: %s", row.name, err)
        return {**record, "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    sync(device)
    wall = time.perf_counter() - tic
    end = marks[-1]
    blocks = [seconds_between(a, b) for a, b in zip(marks, marks[1:])]
    elapsed = seconds_between(marks[0], end)
    finite = bool(torch.isfinite(latents).all())
    if keep is not None and row.name not in keep:
        keep[row.name] = latents.float().cpu()
    record.update({
        "wall_s": wall, "timed_s": elapsed, "frames_per_s": frames / elapsed, "blocks": len(blocks),
        "block_ms_first5": 1e3 * statistics.fmean(blocks[:EDGE_BLOCKS]),
        "block_ms_last5": 1e3 * statistics.fmean(blocks[-EDGE_BLOCKS:]),
        "block_ms_median": 1e3 * statistics.median(blocks),
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "finite": finite, "latent_std": float(latents.float().std()),
        "status": "ok" if finite and len(blocks) == frames // args.frames_per_block else "non-finite or short",
    })
    log.info("%s: %.2f latent frames/s", row.name, record["frames_per_s"])
    return record


def fp8_errors(latents: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per FP8 row, the relative L2 error of its final latents against its bf16 twin's."""
    errors = {}
    for name, got in latents.items():
        twin = latents.get(name.replace("-fp8", ""))
        if "-fp8" in name and twin is not None:
            errors[name] = float((got - twin).norm() / twin.norm())
    return errors


def summarise(runs: list[dict]) -> dict:
    """Per row: mean frames/s; per repeat: each row / the reference of the same repeat."""
    ok = [r for r in runs if r["status"] == "ok"]
    ref = {r["repeat"]: r["frames_per_s"] for r in ok if r["row"] == "reference"}
    for r in ok:
        if r["repeat"] in ref:
            r["vs_reference"] = r["frames_per_s"] / ref[r["repeat"]]
    rows = {}
    for name in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in ok if r["row"] == name]
        ratios = [r["vs_reference"] for r in mine if "vs_reference" in r]
        rows[name] = {"frames_per_s_mean": statistics.fmean(r["frames_per_s"] for r in mine) if mine else None,
                      "vs_reference": ratios,
                      "vs_reference_min": min(ratios) if ratios else None}
    return rows


def markdown(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    head = ("| implementation | repeat | latent frames/s | vs reference | ms/block first 5 | ms/block last 5 "
            "| ms/block median | peak GPU GiB | finite | status |")
    lines = [
        f"### reference_compare: {cfg['num_layers']} layers, {cfg['height']}x{cfg['width']} latents, "
        f"{cfg['frames']} frames, steps {cfg['steps']} + context pass, window {cfg['window']}, sink {cfg['sink']}",
        "",
        f"Device: {env['gpu'] or env['device']}, torch {env['torch']}, CUDA {env['cuda']}, dtype {env['dtype']}, "
        f"SDPA kernel (self-attention shape) `{result['sdpa_backend']}`; reference {REFERENCE_COMMIT[:7]}, "
        f"same random weights: {'yes' if result['same_weights'] else 'no'}; stubbed {', '.join(result['stubbed'])}.",
        "", head, "|" + "---|" * head.count(" | ") + "---|",
    ]

    def f(value, spec: str) -> str:
        return "-" if value is None else (("yes" if value else "**NO**") if isinstance(value, bool) else
                                          format(value, spec))

    for r in result["runs"]:
        lines.append(f"| {r['row']} | {r['repeat']} | {f(r.get('frames_per_s'), '.2f')} | "
                     f"{f(r.get('vs_reference'), '.3f')} | {f(r.get('block_ms_first5'), '.0f')} | "
                     f"{f(r.get('block_ms_last5'), '.0f')} | {f(r.get('block_ms_median'), '.0f')} | "
                     f"{f(r.get('peak_gpu_gib'), '.2f')} | {f(r.get('finite'), '')} | {r['status']} |")
    lines.append("")
    for name, s in result["summary"].items():
        if name == "reference" or s["vs_reference_min"] is None:
            continue
        ratios = "/".join(f"{x:.3f}" for x in s["vs_reference"])
        if name.startswith("ours"):
            verdict = "meets" if s["vs_reference_min"] >= TARGET else "misses"
            lines.append(f"- {name}: {s['frames_per_s_mean']:.2f} latent frames/s, {ratios}x the reference "
                         f"(per repeat): {verdict} the >= {TARGET}x target.")
        else:  # a variant of the reference (LoRA unmerged, as its inference.py runs)
            lines.append(f"- {name}: {s['frames_per_s_mean']:.2f} latent frames/s, {ratios}x the plain reference.")
    for name, err in result.get("fp8_rel_err", {}).items():
        lines.append(f"- {name}: final latents' relative L2 error against its bf16 twin {err:.4f}.")
    return "\n".join(lines) + "\n"


def build_rows(args, device: torch.device, dtype: torch.dtype) -> tuple[list[Row], dict]:
    cfg = model_config(args)
    ref = load_reference(args.reference)
    ours = init_backbone(cfg, device, dtype, args.seed)
    tokens = (args.height // cfg.patch_size[1]) * (args.width // cfg.patch_size[2])
    gen = torch.Generator(device=device).manual_seed(args.seed)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen, device=device, dtype=dtype)
    ref_model = build_model(ref, cfg, args.window, args.sink, device, dtype, ours.state_dict())
    ours_modes = modes_from(args)  # native, once per --sdpa-backend x --rope-cache value
    rows = [reference_row("reference", ref, ref_model, context, args, tokens)]
    rows += [ours_row("ours" + m.variant, ours, context, args, m) for m in ours_modes]
    if args.compile:  # same seed: same weights
        compiled = init_backbone(cfg, device, dtype, args.seed, compile_blocks=True, compile_mode=args.compile_mode)
        rows += [ours_row("ours-compile" + m.variant, compiled, context, args, m) for m in ours_modes]
    if args.fp8:
        fp8 = init_backbone(cfg, device, dtype, args.seed, fp8=True)
        rows += [ours_row("ours-fp8" + m.variant, fp8, context, args, m) for m in ours_modes]
        if args.compile:
            fp8c = init_backbone(cfg, device, dtype, args.seed, compile_blocks=True, compile_mode=args.compile_mode,
                                 fp8=True)
            rows += [ours_row("ours-compile-fp8" + m.variant, fp8c, context, args, m) for m in ours_modes]
    if args.reference_lora:
        from utils.lora_utils import configure_lora_for_model  # the reference's own (peft)

        lora_model = build_model(ref, cfg, args.window, args.sink, device, dtype, ours.state_dict())
        lora_cfg = AttrDict(type="lora", rank=args.reference_lora, alpha=args.reference_lora, dropout=0.0)
        with contextlib.redirect_stdout(io.StringIO()):
            wrapped = configure_lora_for_model(lora_model, "generator", lora_cfg, is_main_process=False)
        wrapped = wrapped.to(device=device, dtype=dtype).eval().requires_grad_(False)
        rows.append(reference_row(f"reference-lora{args.reference_lora}", ref, wrapped, context, args, tokens))
    info = {"stubbed": ref.stubbed, "same_weights": True, "num_layers": cfg.num_layers,
            "sdpa_backend": sdpa_backend(device, dtype, cfg.num_heads, cfg.head_dim, tokens * args.frames_per_block,
                                         tokens * args.window)}
    return rows, info


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; 0 when every run finished with finite latents, else 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    torch.set_grad_enabled(False)
    device, dtype = setup_device(args)
    rows, info = build_rows(args, device, dtype)
    result = {"environment": environment(device, dtype), "sdpa_backend": info["sdpa_backend"],
              "stubbed": info["stubbed"], "same_weights": info["same_weights"], "reference_commit": REFERENCE_COMMIT,
              "config": {**{k: v for k, v in vars(args).items() if k != "json"}, "num_layers": info["num_layers"]},
              "runs": [], "summary": {}}
    for row in rows:  # warm-up: kernels, cuDNN autotuning, torch.compile
        log.info("warm-up %s", row.name)
        with torch.no_grad():
            row.run(args.warmup_blocks * args.frames_per_block, args.seed + 1)
        sync(device)
    kept: dict[str, torch.Tensor] = {}
    for repeat in range(args.repeats):
        for row in rows if repeat % 2 == 0 else rows[::-1]:  # alternate so drift hits every row alike
            result["runs"].append(measure(row, args.frames, repeat, args, device, kept))
            result["summary"] = summarise(result["runs"])
            result["fp8_rel_err"] = fp8_errors(kept)
            write_json(args.json, result)
    print(markdown(result), flush=True)
    return 0 if all(r["status"] == "ok" for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
