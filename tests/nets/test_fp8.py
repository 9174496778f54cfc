"""FP8 linear layers: quantisation error, checkpoint compatibility, refresh on load, sampler error."""

from __future__ import annotations

import torch
from torch import nn

from lrag.memory.bank import RetrievalMemory
from lrag.nets.fp8 import E4M3_MAX, Float8Linear, convert_linears, quantize_rows
from lrag.nets.wan import CausalWanModel, build_tiny
from lrag.sampling.sampler import ARSampler, SeededNoise
from lrag.sampling.schedule import FlowMatchSchedule
from lrag.sampling.settings import SamplerSettings


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_quantize_rows_uses_the_whole_range_per_row() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5], [100.0, 3.0, -50.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 1)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((2,), E4M3_MAX))
    assert torch.allclose(q.float() * scale, x, rtol=2**-3)  # 3 mantissa bits


def test_float8_linear_is_close_to_the_full_precision_layer_but_not_equal() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    fp8 = Float8Linear.from_linear(linear)
    x = torch.randn(2, 7, 64)
    want = linear(x)
    got = fp8(x)
    assert got.shape == want.shape
    assert 1e-3 < _rel(got, want) < 0.06
    assert fp8.weight is linear.weight  # shares the parameter: no second full-precision copy


def test_converted_model_keeps_its_state_dict_and_refreshes_on_load() -> None:
    torch.manual_seed(1)
    plain = build_tiny(num_layers=2)
    fp8 = CausalWanModel(plain.config, fp8=True)
    assert set(fp8.state_dict()) == set(plain.state_dict())  # checkpoints load either way
    converted = [m for m in fp8.modules() if isinstance(m, Float8Linear)]
    assert len(converted) == 2 * 10  # per block: q, k, v, o of both attentions + 2 FFN layers
    layer, ref = fp8.blocks[0].ffn[0], plain.blocks[0].ffn[0]
    x = torch.randn(3, layer.in_features)
    before = layer(x)
    fp8.load_state_dict(plain.state_dict())
    assert _rel(layer(x), ref(x)) < 0.06 and _rel(before, ref(x)) > 0.5  # the FP8 copy followed the load
    with torch.no_grad():
        layer.weight.mul_(2.0)
    fp8.refresh_fp8()
    assert _rel(layer(x), 2.0 * ref(x) - ref.bias) < 0.06


def test_dtype_casts_leave_the_fp8_copy_intact() -> None:
    torch.manual_seed(2)
    layer = Float8Linear(32, 32).to(torch.bfloat16)
    assert layer.weight_e4m3.dtype == torch.uint8 and layer.weight_scale.dtype == torch.int32
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    ref = nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())
    assert layer(x).dtype == torch.bfloat16 and _rel(layer(x).float(), ref) < 0.06


def test_sizes_the_kernel_cannot_take_stay_full_precision() -> None:
    net = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 10))
    assert convert_linears(net) == 1
    assert isinstance(net[0], Float8Linear) and type(net[1]) is nn.Linear


@torch.no_grad()
def test_sampler_output_error_is_bounded() -> None:
    torch.manual_seed(3)
    plain = build_tiny(num_layers=2).eval()
    fp8 = CausalWanModel(plain.config, fp8=True).eval()
    fp8.load_state_dict(plain.state_dict())
    gen = torch.Generator().manual_seed(4)
    context = torch.randn(1, 4, plain.config.text_dim, generator=gen)
    outs = []
    for model in (plain, fp8):
        sampler = ARSampler(model, FlowMatchSchedule(denoising_steps=[1000, 500]), RetrievalMemory(2, 1),
                            SamplerSettings(frames_per_block=2, window=8, sink=1))
        outs.append(sampler(SeededNoise(5, 1, 16, 4, 4, 2), context, 12))
    err = _rel(outs[1], outs[0])
    assert 1e-4 < err < 0.1, err
