"""Configs stored by earlier versions, read as the current version writes them.

Every run keeps its resolved config YAML in the store (``runs.config_yaml``) and in
``<run>/config.yaml``; ``--resume`` compares it with the config of the resuming process. When a
class moves or knobs are regrouped, old configs are translated here, by one explicit map, before
any comparison, so runs stored before the change stay resumable.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from lrag.sampling.settings import SAMPLER_KNOBS

__all__ = ["CLASS_PATHS", "fill_defaults", "migrate_config"]

#: Old class path -> new one (version 0.1 layout -> the tiered layout of issue 10).
CLASS_PATHS: dict[str, str] = {
    "lrag.modules.nets.wan.CausalWanModel": "lrag.nets.wan.CausalWanModel",
    "lrag.modules.backbone_fit.CameraConditioned": "lrag.nets.camera.CameraConditioned",
    "lrag.modules.backbone_fit.GroundTruthMemory": "lrag.memory.oracle.GroundTruthMemory",
    "lrag.modules.conditioning.TinyTextEncoder": "lrag.nets.conditioning.TinyTextEncoder",
    "lrag.modules.conditioning.UMT5TextEncoder": "lrag.nets.conditioning.UMT5TextEncoder",
    "lrag.modules.codecs.LinearRGBCodec": "lrag.nets.codecs.LinearRGBCodec",
    "lrag.modules.codecs.WanVAECodec": "lrag.nets.codecs.WanVAECodec",
    "lrag.modules.schedule.FlowMatchSchedule": "lrag.sampling.schedule.FlowMatchSchedule",
    "lrag.modules.nets.autoencoder.LatentAE": "lrag.nets.autoencoder.LatentAE",
    "lrag.modules.predict_summary.PredictSummary": "lrag.callbacks.predict_summary.PredictSummary",
}


def _rename(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rename(v) for k, v in node.items()}
        if isinstance(out.get("class_path"), str):
            out["class_path"] = CLASS_PATHS.get(out["class_path"], out["class_path"])
        return out
    if isinstance(node, list):
        return [_rename(v) for v in node]
    return node


def _drop_none(node: Any) -> Any:
    # A knob added later with a None default (e.g. CausalWanModel.preset) changes nothing that was generated.
    if isinstance(node, dict):
        return {k: _drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_none(v) for v in node]
    return node


def migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """A parsed run config in the current layout (class paths, grouped sampler knobs).

    >>> old = {"model": {"class_path": "lrag.modules.generator.GeneratorModule",
    ...        "init_args": {"window": 10, "sink": 1, "schedule": {"class_path": "lrag.modules.schedule.FlowMatchSchedule"}}}}
    >>> new = migrate_config(old)["model"]["init_args"]
    >>> new["sampling"], new["schedule"]["class_path"]
    ({'window': 10, 'sink': 1}, 'lrag.sampling.schedule.FlowMatchSchedule')
    """
    config = _drop_none(_rename(config))
    model = config.get("model")
    if isinstance(model, dict):
        args = model.get("init_args", model)
        flat = {k: args.pop(k) for k in SAMPLER_KNOBS if k in args}
        if flat:
            args["sampling"] = {**flat, **(args.get("sampling") or {})}
    return config


def _default(cls_path: str, name: str) -> tuple[bool, Any]:
    module, _, attr = cls_path.rpartition(".")
    try:
        param = inspect.signature(getattr(importlib.import_module(module), attr)).parameters.get(name)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False, None
    if param is None or param.default is inspect.Parameter.empty:
        return False, None
    return True, param.default


def fill_defaults(config: Any, current: Any) -> Any:
    """``config`` with the knobs only ``current`` has, set to their constructor defaults.

    A knob added after a run was stored did not exist for it; the run behaved like the knob's
    default (new knobs default to the old behaviour). Filling the default in, instead of skipping
    the key, still catches a resume that sets such a knob to something else.
    """
    if isinstance(config, dict) and isinstance(current, dict):
        out = {k: fill_defaults(v, current.get(k)) for k, v in config.items()}
        args, now = out.get("init_args"), current.get("init_args")
        if isinstance(out.get("class_path"), str) and isinstance(args, dict) and isinstance(now, dict):
            for name in now.keys() - args.keys():
                known, value = _default(out["class_path"], name)
                if known and (value is None or isinstance(value, (bool, int, float, str))):
                    args[name] = value
        return out
    return config
