"""Few-step flow-matching schedule: a plain object, not an ``nn.Module``.

The backbone predicts the flow ``v = noise - x0``; a noisy latent at sigma ``s`` is
``x_t = (1 - s) * x0 + s * noise`` and timesteps live on ``0..num_train_timesteps``.
The numbers follow the reference ``FlowMatchScheduler(shift, sigma_min=0,
extra_one_step=True).set_timesteps(num_train_timesteps)`` exactly (see
``tests/fixtures/wan_reference/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FlowMatchSchedule"]


class FlowMatchSchedule:
    """Shifted flow-matching schedule with a short list of denoising steps.

    Args:
        shift: Timestep shift ``s -> shift*s / (1 + (shift-1)*s)``; 5.0 for the
            Self-Forcing / LongLive family.
        num_train_timesteps: Size of the training timestep grid (1000 for Wan).
        denoising_steps: Denoising step list on the 0..num_train_timesteps scale,
            highest first, e.g. ``[1000, 750, 500, 250]``.
        warp: Map each step ``s`` to the shifted grid, ``timesteps[N - s]``, as the
            reference pipeline does with ``warp_denoising_step``.
        context_noise: Timestep used for the context pass that writes the clean
            block into the KV cache (0 = clean).

    Raises:
        ValueError: If a knob is out of range (the message names the knob).
    """

    def __init__(
        self,
        shift: float = 5.0,
        num_train_timesteps: int = 1000,
        denoising_steps: Sequence[int] = (1000, 750, 500, 250),
        warp: bool = True,
        context_noise: float = 0.0,
    ) -> None:
        if shift <= 0:
            raise ValueError(f"FlowMatchSchedule.shift must be > 0, got {shift}")
        if num_train_timesteps < 1:
            raise ValueError(f"FlowMatchSchedule.num_train_timesteps must be >= 1, got {num_train_timesteps}")
        steps = [int(s) for s in denoising_steps]
        if not steps or any(not 0 < s <= num_train_timesteps for s in steps):
            raise ValueError(
                f"FlowMatchSchedule.denoising_steps must be a non-empty list in (0, {num_train_timesteps}], "
                f"got {list(denoising_steps)}"
            )
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"FlowMatchSchedule.denoising_steps must be strictly decreasing, got {steps}")
        if not 0 <= context_noise <= num_train_timesteps:
            raise ValueError(f"FlowMatchSchedule.context_noise must be in [0, {num_train_timesteps}], got {context_noise}")
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.denoising_steps = steps
        self.warp = bool(warp)
        self.context_noise = float(context_noise)
        # float32 on purpose: the reference keeps its grid in float32 and the golden
        # numbers depend on those rounded values.
        s = torch.linspace(1.0, 0.0, self.num_train_timesteps + 1)[:-1]
        self.scheduler_sigmas = self.shift * s / (1 + (self.shift - 1) * s)
        self.scheduler_timesteps = self.scheduler_sigmas * self.num_train_timesteps
        self.timesteps = self._step_timesteps()
        self._on_device: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def _step_timesteps(self) -> Tensor:
        steps = torch.tensor(self.denoising_steps, dtype=torch.long)
        if not self.warp:
            return steps.to(torch.float32)
        grid = torch.cat([self.scheduler_timesteps, torch.zeros(1)])
        return grid[self.num_train_timesteps - steps]

    def _grid(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``scheduler_sigmas`` / ``scheduler_timesteps`` on ``device`` in ``dtype``, copied once.

        A fresh host->GPU copy per call would be pageable, so it would stall the host until the
        GPU drains - several times per block in the sampler.
        """
        key = (name, device, dtype)
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device=device, dtype=dtype)
        return self._on_device[key]

    def _nearest(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """Index of the grid timestep nearest to each entry of ``t`` (any shape)."""
        grid = self._grid("scheduler_timesteps", t.device, dtype)
        flat = t.reshape(-1).to(dtype)
        return torch.argmin((grid.unsqueeze(0) - flat.unsqueeze(1)).abs(), dim=1).reshape(t.shape)

    def sigma(self, t: Tensor | float, dtype: torch.dtype = torch.float32) -> Tensor:
        """Sigma at the grid timestep nearest to ``t`` (same shape as ``t``)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        if not torch.isfinite(t).all():
            raise ValueError(f"FlowMatchSchedule.sigma: timestep contains NaN/inf: {t}")
        return self._grid("scheduler_sigmas", t.device, dtype)[self._nearest(t, dtype)]

    @staticmethod
    def _expand(coeff: Tensor, like: Tensor, name: str) -> Tensor:
        if coeff.shape != like.shape[: coeff.ndim]:
            raise ValueError(
                f"FlowMatchSchedule.{name}: timestep shape {tuple(coeff.shape)} must be a prefix of "
                f"the latent shape {tuple(like.shape)} (e.g. [B, F] for [B, F, C, H, W])"
            )
        return coeff.reshape(*coeff.shape, *([1] * (like.ndim - coeff.ndim)))

    def x0_from_flow(self, x_t: Tensor, flow: Tensor, t: Tensor) -> Tensor:
        """Clean latent ``x0 = x_t - sigma(t) * flow``, computed in float64.

        Args:
            x_t: Noisy latent, e.g. ``[B, F, C, H, W]``.
            flow: Backbone prediction (noise - x0), same shape as ``x_t``.
            t: Timesteps whose shape is a prefix of ``x_t.shape`` (e.g. ``[B, F]``).

        Returns:
            ``x0`` in the dtype of ``flow``.
        """
        if x_t.shape != flow.shape:
            raise ValueError(f"x0_from_flow: x_t {tuple(x_t.shape)} and flow {tuple(flow.shape)} differ")
        sig = self._grid("scheduler_sigmas", t.device, torch.float64)[self._nearest(t, torch.float64)]
        sig = self._expand(sig, x_t, "x0_from_flow")
        return (x_t.double() - sig * flow.double()).to(flow.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
        """Noisy latent ``(1 - sigma) * x0 + sigma * noise`` in the dtype of ``noise``.

        Args:
            x0: Clean latent.
            noise: Standard normal noise, same shape as ``x0``.
            t: Scalar timestep or per-sample timesteps (shape a prefix of ``x0.shape``).
        """
        if x0.shape != noise.shape:
            raise ValueError(f"add_noise: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ")
        if isinstance(t, (int, float)):  # the sampler's case: check on the host, fill on the device (no sync)
            if not math.isfinite(t):
                raise ValueError(f"FlowMatchSchedule.sigma: timestep contains NaN/inf: {t}")
            t = torch.full(x0.shape[:1], float(t), dtype=torch.float32, device=x0.device)
            sig = self._grid("scheduler_sigmas", t.device, torch.float32)[self._nearest(t, torch.float32)]
        else:
            t = torch.as_tensor(t, dtype=torch.float32, device=x0.device)
            sig = self.sigma(t.expand(x0.shape[:1]) if t.ndim == 0 else t)
        sig = self._expand(sig, x0, "add_noise")
        return ((1 - sig) * x0 + sig * noise).type_as(noise)

    def __repr__(self) -> str:
        return (
            f"FlowMatchSchedule(shift={self.shift}, steps={self.denoising_steps}, warp={self.warp}, "
            f"timesteps={[round(float(t), 3) for t in self.timesteps]}, context_noise={self.context_noise})"
        )
