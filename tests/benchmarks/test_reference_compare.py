"""The reference comparison's own parts: the flash-attn SDPA shim, the checkout check, the report.

The end-to-end run needs a LongLive-RAG checkout, which CI does not have; BENCHMARKS.md gives
the CPU command (``python -O ... --tiny --device cpu``) that was run against one.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = str(Path(__file__).resolve().parents[2] / "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCH)
    try:
        yield (importlib.import_module("flash_attn_sdpa"), importlib.import_module("reference_setup"),
               importlib.import_module("reference_compare"))
    finally:
        sys.path.remove(BENCH)


def explicit_attention(q, k, v, scale=None, causal=False):
    """softmax(q k^T * scale) v on [B, L, H, d] tensors, in float64."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_batched_entry_point_is_softmax_attention(bench) -> None:
    shim = bench[0]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, generator=gen) for n in (5, 7, 7))
    torch.testing.assert_close(shim.flash_attn_func(q, k, v).double(), explicit_attention(q, k, v),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shim.flash_attn_func(q, k, v, softmax_scale=0.3).double(),
                               explicit_attention(q, k, v, 0.3), rtol=1e-5, atol=1e-5)
    qc = torch.randn(2, 7, 3, 16, generator=gen)
    torch.testing.assert_close(shim.flash_attn_func(qc, k, v, causal=True).double(),
                               explicit_attention(qc, k, v, causal=True), rtol=1e-5, atol=1e-5)


def test_varlen_entry_point_matches_per_sequence_attention(bench) -> None:
    shim = bench[0]
    gen = torch.Generator().manual_seed(1)
    # Equal lengths (the reference's only case: one batched call) and unequal ones (split path).
    for lq, lk in (([4, 4], [6, 6]), ([3, 5], [2, 7])):
        qs = [torch.randn(n, 2, 8, generator=gen) for n in lq]
        ks = [torch.randn(n, 2, 8, generator=gen) for n in lk]
        vs = [torch.randn(n, 2, 8, generator=gen) for n in lk]
        cu = [torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()], dtype=torch.int32) for x in (lq, lk)]
        out = shim.flash_attn_varlen_func(torch.cat(qs), torch.cat(ks), torch.cat(vs), cu[0], cu[1], max(lq), max(lk))
        want = torch.cat([explicit_attention(q[None], k[None], v[None])[0] for q, k, v in zip(qs, ks, vs)])
        assert out.shape == (sum(lq), 2, 8)
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_unsupported_options_raise(bench) -> None:
    shim = bench[0]
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="dropout_p"):
        shim.flash_attn_func(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match="window_size"):
        shim.flash_attn_func(q, q, q, window_size=(2, 0))
    with pytest.raises(ValueError, match="causal"):
        shim.flash_attn_func(q, torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8), causal=True)
    with pytest.raises(ValueError, match="softcap"):
        shim.flash_attn_func(q, q, q, softcap=30.0)


def test_install_makes_flash_attn_importable_and_hides_fa3(bench) -> None:
    shim = bench[0]
    assert "flash_attn" not in sys.modules  # nothing in the test run imports a real one
    try:
        module = shim.install()
        import flash_attn

        assert flash_attn is module and flash_attn.flash_attn_varlen_func is shim.flash_attn_varlen_func
        assert importlib.util.find_spec("flash_attn") is not None  # libraries probing it do not crash
        with pytest.raises(ModuleNotFoundError):  # the reference catches exactly this for FA3
            import flash_attn_interface  # noqa: F401
        assert shim.install() is module  # idempotent
    finally:
        shim.uninstall()
    assert "flash_attn" not in sys.modules and "flash_attn_interface" not in sys.modules


def test_checkout_check_names_missing_files(bench, tmp_path) -> None:
    setup = bench[1]
    (tmp_path / "wan" / "modules").mkdir(parents=True)
    (tmp_path / "wan" / "modules" / "attention.py").write_text("")
    with pytest.raises(SystemExit, match=r"--reference .*missing wan/modules/model\.py.*973884a"):
        setup.check_checkout(tmp_path)
    for name in setup.NEEDED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert setup.check_checkout(tmp_path) == tmp_path.resolve()


def test_block_stamps_mark_every_fifth_call(bench) -> None:
    setup = bench[1]
    layer = torch.nn.Identity()
    stamps = setup.BlockStamps(layer, 5, torch.device("cpu"))
    for _ in range(12):
        layer(torch.zeros(1))
    assert stamps.calls == 12 and len(stamps.stamps) == 2
    stamps.remove()
    layer(torch.zeros(1))
    assert stamps.calls == 12


def test_summary_pairs_each_repeat_with_its_reference_run(bench) -> None:
    compare = bench[2]
    runs = [{"row": "reference", "repeat": 0, "frames_per_s": 5.0, "status": "ok"},
            {"row": "ours", "repeat": 0, "frames_per_s": 6.5, "status": "ok"},
            {"row": "ours", "repeat": 1, "frames_per_s": 5.5, "status": "ok"},
            {"row": "reference", "repeat": 1, "frames_per_s": 5.0, "status": "ok"},
            {"row": "ours-compile", "repeat": 1, "status": "failed: RuntimeError: x"}]
    summary = compare.summarise(runs)
    assert summary["ours"]["vs_reference"] == pytest.approx([1.3, 1.1])
    assert summary["ours"]["vs_reference_min"] == pytest.approx(1.1)
    assert summary["ours"]["frames_per_s_mean"] == pytest.approx(6.0)
    assert summary["ours-compile"]["frames_per_s_mean"] is None
    result = {"environment": {"gpu": "NVIDIA H200", "device": "cuda:0", "torch": "2.11", "cuda": "12.8",
                              "dtype": "bfloat16"},
              "config": {"num_layers": 30, "height": 60, "width": 104, "frames": 120, "steps": [1000], "window": 12,
                         "sink": 1},
              "sdpa_backend": "_scaled_dot_product_flash_attention", "same_weights": True, "stubbed": ["flash_attn"],
              "runs": runs, "summary": summary}
    table = compare.markdown(result)
    assert "NVIDIA H200" in table and "_scaled_dot_product_flash_attention" in table
    assert "1.300/1.100x the reference (per repeat): misses the >= 1.2x target" in table
    rows = [line for line in table.splitlines() if line.startswith("| ours") or line.startswith("| reference")]
    assert len(rows) == 5 and all(row.count("|") == rows[0].count("|") for row in rows)


def test_bad_frames_and_tiny_defaults(bench, capsys) -> None:
    compare = bench[2]
    with pytest.raises(SystemExit):
        compare.parse_args(["--reference", "x", "--frames", "10"])
    assert "--frames-per-block 3" in capsys.readouterr().err
    args = compare.parse_args(["--reference", "x", "--tiny", "--device", "cpu"])
    assert (args.height, args.width) == (8, 8)
    cfg = compare.model_config(args)
    assert (cfg.num_heads, cfg.head_dim, cfg.num_layers) == (12, 128, 1)  # the reference's fixed cache heads
    full = compare.model_config(compare.parse_args(["--reference", "x"]))
    assert (full.num_layers, full.dim, full.text_len, full.text_dim) == (30, 1536, 512, 4096)


def test_our_rows_follow_the_speed_knobs(bench, capsys) -> None:
    compare = bench[2]
    from predict_wan_setup import modes_from

    args = compare.parse_args(["--reference", "x", "--sdpa-backend", "auto", "cudnn", "--rope-cache", "on", "off"])
    names = ["ours" + m.variant for m in modes_from(args)]
    assert names == ["ours", "ours[no-rope-cache]", "ours[cudnn]", "ours[cudnn,no-rope-cache]"]
    assert all(m.memory_size == 0 for m in modes_from(args))  # native only
    with pytest.raises(SystemExit):
        compare.parse_args(["--reference", "x", "--compile", "--sdpa-backend", "auto", "cudnn"])
    assert "one process per backend" in capsys.readouterr().err


def test_fp8_rows_are_compared_with_their_bf16_twins(bench) -> None:
    compare = bench[2]
    base = torch.ones(2, 3)
    errors = compare.fp8_errors({"ours[cudnn]": base, "ours-fp8[cudnn]": base * 1.1,
                                 "ours-compile": base, "ours-compile-fp8": base, "reference": base * 3})
    assert errors == pytest.approx({"ours-fp8[cudnn]": 0.1, "ours-compile-fp8": 0.0})
