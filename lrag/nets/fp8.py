"""FP8 (e4m3) matmuls for the DiT blocks' linear layers: an inference speed option.

Hopper GPUs (H100/H200) multiply e4m3 matrices at twice the bf16 rate. :class:`Float8Linear`
keeps the full-precision weight as its parameter (state dicts and checkpoints stay the same)
and multiplies with an e4m3 copy of it, scaled per output channel, against activations
quantised per token at call time (``torch._scaled_mm`` with row-wise scales). The copy is made
when the layer is built and again whenever a state dict is loaded into the model.

The error is that of 3 mantissa bits: a few percent per matmul, partly averaged out over a
block. Only the blocks' projections and FFN are converted; embeddings and the head stay in
full precision. Measured at Wan-1.3B size on an H200 (BENCHMARKS.md) it is *slower* than bf16
(0.72x compiled, 3.8 % output error): the per-token activation quantisation (an amax, a
division, a cast) costs more than the e4m3 multiply saves on GEMMs of this size.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

__all__ = ["E4M3_MAX", "Float8Linear", "convert_linears", "quantize_rows"]

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
#: Largest finite e4m3 value.
E4M3_MAX = float(torch.finfo(E4M3).max)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric e4m3 with one scale per row: ``x [M, K]`` -> ``(q [M, K] e4m3, scale [M, 1] float32)``."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / E4M3_MAX
    return (xf / scale).to(E4M3), scale


class Float8Linear(nn.Linear):
    """``nn.Linear`` that multiplies in e4m3 (see the module docstring); inference only.

    The e4m3 weight and its scales are buffers kept as integer views, so ``module.to(dtype)``
    leaves them alone (it casts every floating-point buffer, float8 included).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("weight_e4m3", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("weight_scale", torch.empty(0, dtype=torch.int32), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module.refresh())
        self.refresh()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        """A converted layer sharing ``linear``'s parameters."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.refresh()
        return new

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-quantise the weight (after it changed: loading, training, a device move)."""
        if self.weight.device.type == "meta":
            return
        q, scale = quantize_rows(self.weight)
        self.weight_e4m3 = q.view(torch.uint8)
        self.weight_scale = scale.view(torch.int32)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight_e4m3.device != x.device or self.weight_e4m3.shape != self.weight.shape:
            self.refresh()
        rows = x.reshape(-1, self.in_features)
        xq, x_scale = quantize_rows(rows)
        w = self.weight_e4m3.view(E4M3)
        w_scale = self.weight_scale.view(torch.float32)
        # CUDA's row-wise scaled matmul writes bf16 only.
        out_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        out = torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=out_dtype).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def convert_linears(module: nn.Module, multiple: int = 16) -> int:
    """Replace every ``nn.Linear`` under ``module`` by a :class:`Float8Linear` sharing its parameters.

    Layers whose sizes are not multiples of ``multiple`` (what the CUDA kernel needs) stay as
    they are. Returns how many layers were converted.
    """
    converted = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and not isinstance(child, Float8Linear):
            if child.in_features % multiple or child.out_features % multiple:
                log.info("fp8: %s (%d -> %d) stays in full precision (sizes not multiples of %d)",
                         name, child.in_features, child.out_features, multiple)
                continue
            setattr(module, name, Float8Linear.from_linear(child))
            converted += 1
        else:
            converted += convert_linears(child, multiple)
    return converted
