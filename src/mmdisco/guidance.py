"""MMDisCo's joint guidance: the discriminator's input-gradient as an epsilon correction.

At the optimum the discriminator's logit ``h`` equals ``log r_t``, the log density ratio
between the joint and the product of the base models' marginals, so (docs/method.md)::

    eps_hat_a = eps_a - scale_a * sigma_a * grad_a h(a_t, v_t)
    eps_hat_v = eps_v - scale_v * sigma_v * grad_v h(a_t, v_t)

A discriminator is any callable ``disc(audio, video, log_snr_audio, log_snr_video, **cond)``
returning one logit per sample, shape ``(B,)``. Its time inputs are log-SNRs, so one
discriminator serves any scheduler and parameterisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmdisco.diffusion import NoiseSchedule, _broadcast

DiscriminatorFn = Callable[..., Tensor]


@dataclass
class DiscriminatorOutput:
    logits: Tensor  # (B,)
    grad_audio: Tensor  # d sum(h) / d audio_t, same shape as audio_t
    grad_video: Tensor


def _check_inputs(
    audio_t: Tensor, video_t: Tensor, timestep_audio: Tensor, timestep_video: Tensor
) -> None:
    batch = audio_t.shape[0]
    for name, x, ok in (
        ("video_t", video_t, (batch,)),
        ("timestep_audio", timestep_audio, (batch, 1)),  # one timestep may serve the batch
        ("timestep_video", timestep_video, (batch, 1)),
    ):
        if x.ndim > 0 and x.shape[0] not in ok:
            raise ValueError(
                f"batch size mismatch: audio_t has {batch} samples but {name} has shape "
                f"{tuple(x.shape)}"
            )
    for name, x in (("audio_t", audio_t), ("video_t", video_t)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def discriminator_gradients(
    disc: DiscriminatorFn,
    audio_t: Tensor,
    video_t: Tensor,
    log_snr_audio: Tensor,
    log_snr_video: Tensor,
    *,
    create_graph: bool = False,
    **cond: Any,
) -> DiscriminatorOutput:
    """Logits and input-gradients of ``disc``.

    Grad is enabled locally, so this works under ``torch.no_grad()``. The caller's tensors
    are never modified: gradients are taken with respect to detached leaves. With
    ``create_graph`` the returned logits and gradients stay differentiable in the
    discriminator's parameters (double backprop for L_DLSM).
    """
    with torch.enable_grad():
        audio = audio_t.detach().requires_grad_()
        video = video_t.detach().requires_grad_()
        logits = disc(audio, video, log_snr_audio, log_snr_video, **cond)
        if logits.shape != (audio.shape[0],):
            raise ValueError(
                f"the discriminator must return one logit per sample, shape ({audio.shape[0]},), "
                f"got {tuple(logits.shape)}"
            )
        # Samples are independent, so the gradient of the sum is each sample's own gradient.
        grad_audio, grad_video = torch.autograd.grad(
            logits.sum(), (audio, video), create_graph=create_graph, allow_unused=True
        )
    # A logit that ignores one modality (e.g. a constant or a one-sided head) has zero gradient.
    grad_audio = torch.zeros_like(audio) if grad_audio is None else grad_audio
    grad_video = torch.zeros_like(video) if grad_video is None else grad_video
    if not create_graph:
        logits, grad_audio, grad_video = logits.detach(), grad_audio.detach(), grad_video.detach()
    return DiscriminatorOutput(logits, grad_audio, grad_video)


def guidance_correction(
    disc: DiscriminatorFn,
    audio_t: Tensor,
    video_t: Tensor,
    timestep_audio: Tensor,
    timestep_video: Tensor,
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
    scale_audio: float = 1.0,
    scale_video: float = 1.0,
    **cond: Any,
) -> tuple[Tensor, Tensor]:
    """Epsilon-space corrections ``(-scale_a sigma_a grad_a h, -scale_v sigma_v grad_v h)``.

    ``timestep_audio`` / ``timestep_video`` are each base model's own timesteps (scalar or
    ``(B,)``); each modality's schedule turns them into sigma and into the log-SNR the
    discriminator sees.
    """
    batch = audio_t.shape[0]
    timestep_audio = torch.as_tensor(timestep_audio, device=audio_t.device)
    timestep_video = torch.as_tensor(timestep_video, device=video_t.device)
    _check_inputs(audio_t, video_t, timestep_audio, timestep_video)
    timestep_audio = schedule_audio.check_timesteps(timestep_audio).expand(batch)
    timestep_video = schedule_video.check_timesteps(timestep_video).expand(batch)
    _, sigma_audio = schedule_audio.alpha_sigma(timestep_audio)
    _, sigma_video = schedule_video.alpha_sigma(timestep_video)
    out = discriminator_gradients(
        disc,
        audio_t,
        video_t,
        schedule_audio.log_snr(timestep_audio).to(audio_t.device),
        schedule_video.log_snr(timestep_video).to(video_t.device),
        **cond,
    )
    delta_audio = (
        -scale_audio * _broadcast(sigma_audio.to(audio_t.device), audio_t) * out.grad_audio
    )
    delta_video = (
        -scale_video * _broadcast(sigma_video.to(video_t.device), video_t) * out.grad_video
    )
    return delta_audio, delta_video
