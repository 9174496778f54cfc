import pytest
import torch

from lrag.sampling.schedule import FlowMatchSchedule


def test_warped_steps_match_the_readme() -> None:
    s = FlowMatchSchedule(shift=5.0)
    assert torch.allclose(s.timesteps, torch.tensor([1000.0, 937.5, 833.3333, 625.0]))
    assert torch.allclose(s.sigma(s.timesteps), torch.tensor([1.0, 0.9375, 0.83333, 0.625]), atol=1e-5)


def test_unwarped_steps_are_the_list() -> None:
    assert FlowMatchSchedule(warp=False).timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]


def test_grid_formula() -> None:
    s = FlowMatchSchedule(shift=3.0, num_train_timesteps=10, denoising_steps=[10, 5])
    u = torch.linspace(1, 0, 11)[:-1]
    assert torch.allclose(s.scheduler_sigmas, 3 * u / (1 + 2 * u))
    assert torch.allclose(s.scheduler_timesteps, s.scheduler_sigmas * 10)


def test_add_noise_then_x0_from_true_flow_recovers_x0() -> None:
    s = FlowMatchSchedule()
    x0, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    t = torch.full((2, 3), 833.3333)
    xt = s.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).unflatten(0, (2, 3))
    back = s.x0_from_flow(xt, noise - x0, t)
    assert torch.allclose(back, x0, atol=1e-5)
    assert back.dtype == torch.float32


def test_sigma_is_taken_at_the_nearest_grid_timestep() -> None:
    s = FlowMatchSchedule()
    assert s.sigma(torch.tensor(0.0)).item() == pytest.approx(s.scheduler_sigmas[-1].item())
    assert s.sigma(torch.tensor(936.0)).item() == pytest.approx(0.9375, abs=2e-3)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"shift": 0}, "shift"), ({"denoising_steps": []}, "denoising_steps"),
     ({"denoising_steps": [250, 500]}, "decreasing"), ({"context_noise": -1}, "context_noise")],
)
def test_bad_knobs_raise_naming_the_knob(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FlowMatchSchedule(**kwargs)


def test_shape_mismatch_raises() -> None:
    s = FlowMatchSchedule()
    with pytest.raises(ValueError, match="prefix"):
        s.x0_from_flow(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(3))


def test_add_noise_scalar_and_tensor_timesteps_agree_and_nan_is_refused() -> None:
    sched = FlowMatchSchedule(5.0)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    scalar = sched.add_noise(x0, noise, 750.0)
    assert torch.equal(scalar, sched.add_noise(x0, noise, torch.tensor(750.0)))
    assert torch.equal(scalar, sched.add_noise(x0, noise, torch.full((2,), 750.0)))
    with pytest.raises(ValueError, match="NaN/inf"):
        sched.add_noise(x0, noise, float("nan"))


def test_grids_are_copied_once_per_device_and_dtype() -> None:
    sched = FlowMatchSchedule(5.0)
    t = torch.full((2, 3), 500.0)
    sched.x0_from_flow(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), t)
    first = dict(sched._on_device)
    sched.x0_from_flow(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), t)
    assert sched._on_device.keys() == first.keys() and all(sched._on_device[k] is v for k, v in first.items())
