"""What the rectified-flow video adapters share (LTX-Video, LTX-2, Wan, HunyuanVideo 1.5):
the VAE's size rules, the latent grid they imply, and a FlowMatchEuler scheduler that takes
its pipeline's default sigmas inside ``set_timesteps(N)``."""

from __future__ import annotations

from typing import Any

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor


def check_video_size(
    model: str, num_frames: int, height: int, width: int, *, space: int, time: int, why: str = ""
) -> None:
    """Refuse a size the VAE cannot encode: sides a positive multiple of ``space`` (``why``
    says where that number comes from) and ``time * k + 1`` frames."""
    for name, size in (("height", height), ("width", width)):
        if size <= 0 or size % space:
            raise ValueError(f"{name}={size}: {model} needs a positive multiple of {space}{why}")
    if num_frames < 1 or (num_frames - 1) % time:
        raise ValueError(
            f"num_frames={num_frames}: {model} needs {time}k + 1 frames (its VAE compresses "
            f"time by {time}), e.g. {(num_frames - 1) // time * time + 1}"
        )


def video_latent_grid(
    num_frames: int, height: int, width: int, *, space: int, time: int
) -> tuple[int, int, int]:
    """``(F', H', W')`` of the latents of ``num_frames`` frames of ``height x width`` pixels
    (the first frame is encoded on its own, then ``time`` frames per latent frame)."""
    return (num_frames - 1) // time + 1, height // space, width // space


class FlowSigmasScheduler(FlowMatchEulerDiscreteScheduler):
    """FlowMatchEuler whose ``set_timesteps(N)`` takes :meth:`pipeline_sigmas` (the sigmas a
    pipeline passes) and, where the config shifts dynamically, the shift ``mu`` that the
    adapter's ``make_scheduler`` set."""

    mu: float | None = None
    init_noise_sigma = 1.0  # the generic sampler's interface; flow starts from N(0, I)

    def pipeline_sigmas(self, num_inference_steps: int) -> np.ndarray:
        raise NotImplementedError

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        sigmas: Any = None,
        mu: float | None = None,
        timesteps: Any = None,
    ) -> None:
        if num_inference_steps and sigmas is None and timesteps is None:
            sigmas = self.pipeline_sigmas(num_inference_steps)
        if self.config.use_dynamic_shifting and mu is None:
            mu = self.mu
        super().set_timesteps(
            num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps
        )
