"""The knobs of one ``lrag eval`` run, declared once with their help (no torch).

:class:`EvalSettings` is read by :mod:`lrag.eval.runner` (which needs torch) and by the
``lrag eval`` parser (:mod:`lrag.commands.eval`), which builds one option per field from the
field's type, default and ``help`` metadata. Keeping the declaration free of torch lets
``lrag eval --help`` answer at once; torch is imported only when an evaluation runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lrag.assets import resolve_asset

from lrag.sampling.settings import SamplerSettings

__all__ = ["EvalSettings", "descriptor_spec"]


def _knob(default: Any, help: str) -> Any:
    """A field with its one-line CLI help; a list default is copied for every instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EvalSettings:
    """Everything one ``lrag eval`` run needs (the CLI fills it from YAML and flags).

    The generation knobs must match the backbone's training config
    (``configs/backbone/demo.yaml``); each field's ``help`` metadata says what it means.
    """

    seeds: list[int] = _knob([1000, 1001], "World seeds to evaluate (must not be training worlds).")
    num_frames: int = _knob(48, "Latent frames generated per world (a multiple of frames_per_block).")
    backbone_preset: str = _knob("tiny", "Tiny backbone preset (lrag.nets.wan).")
    backbone_checkpoint: str | None = _knob(
        None, "Backbone-fit weights: `lrag export` .safetensors, asset:<file> (shipped) or a "
              "BackboneFitModule .ckpt; null = random initialisation of backbone_preset.")
    backbone_fit_config: str | None = _knob(
        None, "`lrag fit` YAML of a .ckpt that records no backbone_config (older checkpoints).")
    camera: str = _knob("motion", "Camera conditioning of the checkpoint: none | motion | position "
                                  "(must match training).")
    text_len: int = _knob(8, "Prompt tokens of the TinyTextEncoder (as in training).")
    frames_per_block: int = _knob(3, "Latent frames denoised together per AR step (as in training).")
    window: int = _knob(10, "Attention window in latent frames, sink included (as in training).")
    sink: int = _knob(1, "Leading frames kept in attention forever (as in training).")
    memory_size: int = _knob(2, "K, the retrieved frames per block of every retrieval variant.")
    recent_exclude: int = _knob(1, "R, the newest evicted frames that are never retrieval candidates.")
    budgets: list[str] = _knob(["replace"], "Attention budget modes to compare: replace and/or add.")
    positions: str = _knob("slot", "Temporal RoPE rule of sink/local frames: auto | absolute | slot "
                                   "(as in training).")
    memory_position: str = _knob("zero", "RoPE time of retrieved frames: zero (the sink's, as trained) | slot | "
                                         "ordered (slots before the local window, oldest retrieved frame first).")
    sink_mode: str = _knob("blank", "blank (a zero block is the sink, as in training) | first.")
    descriptors: list[str] = _knob(
        ["avg_pool", "oracle"],
        "Retrieval variants: avg_pool, oracle (camera-path ground truth), ae:<path>, gen_keys[:<layers>][:queries] "
        "(the backbone's own pooled keys, e.g. gen_keys:0,1); avg_pool and ae:<path> may end in +rerank<M> "
        "(shortlist M, re-ranked by generator keys) or +fuse<P> (P % of the score from generator keys), any "
        "content descriptor in +stride<N> (every N-th frame kept) and +seq<L> (match sequences of L frames).")
    diversity: float = _knob(0.0, "MMR weight of the cosine top-K (0 = plain top-K; higher skips "
                                  "near-duplicates of a pick).")
    key_layers: list[int] = _knob([-1], "Backbone layers of gen_keys without :<layers> and of +rerank/+fuse "
                                        "(negative: from the last).")
    key_query: str = _knob("keys", "gen_keys query side: keys (newest frame's pooled keys) or queries "
                                   "(its pooled queries).")
    workers: int = _knob(1, "Processes, each evaluating a share of the worlds (results do not depend on it).")
    shift: float = _knob(5.0, "Flow-matching timestep shift of the sampler (as in training).")
    denoising_steps: list[int] = _knob([1000, 750, 500, 250], "Timesteps of the few-step sampler (as in training).")
    height: int = _knob(8, "Latent height of the worlds (as in training).")
    width: int = _knob(8, "Latent width of the worlds (as in training).")
    channels: int = _knob(16, "Latent channels of the worlds (as in training).")
    revisit_min: int = _knob(16, "Shortest loop / out-and-back period of the camera path, in frames.")
    revisit_max: int = _knob(40, "Longest loop / out-and-back period of the camera path, in frames.")
    train_seeds: list[int] = _knob([], "Extra seeds known to be training worlds (checked against seeds).")
    sink_swap: int | None = _knob(
        None, "Sink-swap check: a world seed (not evaluated) whose first frame replaces the blank sink "
              "frame in every variant; null = blank sink as in training.")
    out_dir: str = _knob("runs/eval", "Folder for report.md, report.json, plots and tb/.")
    device: str = _knob("cpu", "Torch device, e.g. cpu or cuda.")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"eval workers={self.workers}: must be >= 1.")
        for desc in self.descriptors:
            if desc != "oracle":
                descriptor_spec(desc, self)  # a typo fails before any video is generated
        for budget in self.budgets:  # the sampler knobs are checked where they are declared
            self.sampler_settings(budget).check_length(self.num_frames)

    def sampler_settings(self, budget: str) -> SamplerSettings:
        """The :class:`SamplerSettings` of one budget arm (the other knobs are shared)."""
        return SamplerSettings(frames_per_block=self.frames_per_block, window=self.window, sink=self.sink,
                               budget=budget, positions=self.positions, memory_position=self.memory_position,
                               sink_mode=self.sink_mode)


_GEN_KEYS = re.compile(r"gen_keys(?::(-?\d+(?:,-?\d+)*))?(?::(keys|queries))?")


def descriptor_spec(desc: str, s: EvalSettings) -> dict[str, Any]:
    """``RetrievalMemory`` keyword arguments of a content descriptor string (see the module doc)."""
    base, *tails = desc.split("+")
    kw: dict[str, Any] = {"key_layers": list(s.key_layers), "key_query": s.key_query}
    for tail in tails:
        if m := re.fullmatch(r"stride(\d+)", tail):  # RetrievalMemory.store_stride: any descriptor
            kw["store_stride"] = int(m.group(1))
            continue
        if m := re.fullmatch(r"seq(\d+)", tail):  # RetrievalMemory.sequence: any descriptor
            kw["sequence"] = int(m.group(1))
            continue
        m = re.fullmatch(r"(rerank|fuse)(\d+)", tail)
        if m is None or base.startswith("gen_keys"):
            raise ValueError(f"descriptors: {desc!r}: suffixes are +rerank<M> or +fuse<P> (after avg_pool or "
                             "ae:<path>, e.g. avg_pool+rerank8, ae:<path>+fuse50), +stride<N> (keep every "
                             "N-th evicted frame) and +seq<L> (match sequences of L frames).")
        if m.group(1) == "rerank":
            kw["rerank"] = int(m.group(2))
        else:  # RetrievalMemory.key_fusion: P % of the score from the generator's keys
            kw["key_fusion"] = int(m.group(2)) / 100
    keys = _GEN_KEYS.fullmatch(base)
    if keys is not None:
        if keys.group(1):
            kw["key_layers"] = [int(i) for i in keys.group(1).split(",")]
        kw["key_query"] = keys.group(2) or s.key_query
        return {"descriptor": "gen_keys", **kw}
    if base.startswith("ae:"):
        return {"descriptor": "ae", "embedder_path": resolve_asset(base[3:], f"descriptors: {desc}"), **kw}
    if base != "avg_pool":
        raise ValueError(f"descriptors: {desc!r} is unknown; use avg_pool, oracle, ae:<path>, "
                         "gen_keys[:<layers>][:queries], optionally +rerank<M> or +fuse<P>.")
    return {"descriptor": "avg_pool", **kw}
