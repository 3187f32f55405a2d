"""A base model with an exact denoiser: cheap to sample, and its samples have known moments."""

from __future__ import annotations

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel


class ShrinkModel(BaseModel):
    """Exact denoiser for x_0 ~ N(mean, 0.25 I) (DDPM, 50 steps): cheap but non-trivial."""

    scheduler_config = {  # noqa: RUF012
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 50,
        "beta_schedule": "linear",
        "beta_start": 1e-3,
        "beta_end": 0.2,
        "prediction_type": "epsilon",
        "clip_sample": False,
    }

    def __init__(self, modality: str, shape: tuple[int, ...], mean: float) -> None:
        self.modality, self.shape, self.mean = modality, shape, mean
        self.prompts_seen: list[list[str]] = []

    def predict(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(torch.as_tensor(t).expand(x_t.shape[0]))
        a, s = alpha.view(-1, *[1] * (x_t.ndim - 1)), sigma.view(-1, *[1] * (x_t.ndim - 1))
        var = a**2 * 0.25 + s**2
        return s * (x_t - a * self.mean) / var

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape

    def encode_prompt(self, prompts: list[str]):
        self.prompts_seen.append(list(prompts))
        return None
