"""Acceptance test (issue 6): every part matches the reference golden fixture on CPU fp32."""

from pathlib import Path

import pytest
import torch

from lrag.golden import compare_golden, main

GOLDEN = Path(__file__).parent / "fixtures" / "wan_reference" / "wan_tiny_golden.pt"


@pytest.mark.slow
def test_every_golden_part_within_the_readme_bar() -> None:
    torch.set_num_threads(2)
    checks = compare_golden(GOLDEN)
    names = {c.name for c in checks}
    for required in ("bidirectional.output", "causal_step.native.flow", "causal_step.latentmem.k[1]",
                     "native.final_latents", "rag_pool.final_latents", "rag_ae.final_latents",
                     "rag_pool.retrieved_indices", "rag_ae.retrieved_indices", "rag_ae.step_x0_debug.block_4"):
        assert required in names
    failed = [(c.name, c.max_abs, c.max_rel, c.note) for c in checks if not c.ok]
    assert not failed


def test_cli_exit_code_is_nonzero_for_a_wrong_file(tmp_path: Path) -> None:
    bad = tmp_path / "not_golden.pt"
    torch.save({"config": {}}, bad)
    with pytest.raises(ValueError, match="not a wan golden fixture"):
        main([str(bad)])


def test_the_rounding_allowance_still_refuses_a_different_function() -> None:
    import torch

    from lrag.golden import within_bar

    ref = torch.linspace(-4, 4, 1000)
    exact = ref.double() + 4e-5  # the reference's own rounding: 1e-5 relative, inside 2e-5
    assert within_bar(exact.float() + 1e-6, ref, exact)[0]  # ours: at float32 rounding of exact
    assert not within_bar(exact.float() + 1e-6, ref)[0]  # without the float64 value: the plain bar
    assert not within_bar(exact.float() + 1e-4, ref, exact)[0]  # ours off the exact value
    assert not within_bar(ref + 2e-4, ref, ref.double() + 2e-4)[0]  # exact is another function
