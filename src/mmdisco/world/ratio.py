"""The world's exact log density ratio, usable wherever a discriminator is.

The world has finitely many equally likely paired clips (4 classes x 66 event patterns = 264
for the defaults). In the base models' spaces the real pairs are therefore the points
``(a_i, v_i)``, ``i = 1..N``, each with probability ``1 / N``, and noising them at log-SNR
``lambda`` (``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``, variance
preserving) gives Gaussian mixtures in closed form. With

    s_i(x) = (alpha <x, x_i> - alpha^2 |x_i|^2 / 2) / sigma^2

(the Gaussian kernel's log up to terms that do not depend on ``i``), the joint, the audio
marginal and the video marginal are log-sum-exps of ``s^a_i + s^v_i``, ``s^a_i`` and ``s^v_i``
over the N points, and the terms that do not depend on ``i`` cancel in

    log r_t(a, v) = log N + LSE_i(s^a_i + s^v_i) - LSE_i(s^a_i) - LSE_i(s^v_i)
                  = log (N * sum_i p(i | a_t) p(i | v_t)).

The second line reads: the ratio is N times the probability that the clip the audio points
to and the clip the video points to are the same. It is the optimum of MMDisCo's
discriminator when the base models match the world's marginals, so it is both the ceiling
of the method (guide with it at scale 1) and the reference a trained discriminator is
measured against (:mod:`mmdisco.world.calibration`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.world.generator import Clips, WorldConfig, render_audio, render_video


def all_clips(config: WorldConfig | None = None) -> Clips:
    """Every distinct clip of the world, each once: the support of its (uniform) distribution.

    Classes x event tuples (x columns when ``config.random_x``), in lexicographic order.
    """
    config = config or WorldConfig()
    span = config.frame_size - config.object_size + 1
    columns = range(span) if config.random_x else [(span - 1) // 2]
    rows = list(itertools.product(range(config.num_classes), config.event_support, columns))
    classes = torch.tensor([c for c, _, _ in rows], dtype=torch.long)
    events = torch.tensor([e for _, e, _ in rows], dtype=torch.long)
    positions = torch.tensor([x for _, _, x in rows], dtype=torch.long)
    return Clips(
        video=render_video(classes, events, positions, config),
        audio=render_audio(classes, events, config),
        classes=classes,
        events=events,
        positions=positions,
    )


class ExactLogRatio(nn.Module):
    """``log r_t(a_t, v_t)`` for data uniform over N paired points, as a discriminator.

    Called like any discriminator (:mod:`mmdisco.guidance`): ``ratio(audio, video,
    log_snr_audio, log_snr_video) -> (B,)`` logits. Computed in float64 and returned in the
    input's dtype; differentiable in both inputs.

    ``audio_points[i]`` and ``video_points[i]`` are the two halves of pair ``i`` in the base
    models' spaces. Points may repeat within a modality (two clips that sound the same): the
    formula counts every pair once and stays exact.
    """

    def __init__(self, audio_points: Tensor, video_points: Tensor) -> None:
        super().__init__()
        if audio_points.shape[0] != video_points.shape[0] or audio_points.shape[0] == 0:
            raise ValueError(
                f"need the same, non-zero number of audio and video points, got "
                f"{audio_points.shape[0]} and {video_points.shape[0]}"
            )
        self.audio_shape = tuple(audio_points.shape[1:])
        self.video_shape = tuple(video_points.shape[1:])
        audio = audio_points.detach().reshape(len(audio_points), -1).double()
        video = video_points.detach().reshape(len(video_points), -1).double()
        self.register_buffer("audio_points", audio, persistent=False)
        self.register_buffer("video_points", video, persistent=False)
        self.register_buffer("audio_sqnorm", audio.pow(2).sum(1), persistent=False)
        self.register_buffer("video_sqnorm", video.pow(2).sum(1), persistent=False)

    @property
    def num_points(self) -> int:
        return self.audio_points.shape[0]

    @classmethod
    def from_world(
        cls, audio_model: Any, video_model: Any, config: WorldConfig | None = None
    ) -> ExactLogRatio:
        """The ratio of ``config``'s world in the spaces of the two base models (their
        ``encode``), e.g. the shipped world models."""
        clips = all_clips(config)
        with torch.no_grad():
            audio = audio_model.encode(clips.audio).cpu()
            video = video_model.encode(clips.video).cpu()
        return cls(audio, video)

    def _scores(self, x: Tensor, log_snr: Tensor, points: Tensor, sqnorm: Tensor) -> Tensor:
        """``s_i(x)`` for every sample and point: ``(B, N)`` float64."""
        batch = x.shape[0]
        flat = x.reshape(batch, -1).double()
        lam = torch.as_tensor(log_snr, device=x.device).double().reshape(-1).expand(batch)
        alpha = torch.sigmoid(lam).sqrt()[:, None]
        inv_var = (1.0 + torch.exp(lam))[:, None]  # 1 / sigma^2 = 1 / sigmoid(-lambda)
        return (alpha * flat @ points.T - 0.5 * alpha**2 * sqnorm) * inv_var

    def log_posterior(self, x: Tensor, log_snr: Tensor, modality: str) -> Tensor:
        """``log p(i | x_t)`` over the N pairs for one modality's noisy sample: ``(B, N)``."""
        if modality == "audio":
            scores = self._scores(x, log_snr, self.audio_points, self.audio_sqnorm)
        elif modality == "video":
            scores = self._scores(x, log_snr, self.video_points, self.video_sqnorm)
        else:
            raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
        return torch.log_softmax(scores, dim=1)

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor,
        log_snr_video: Tensor,
        **cond: Any,
    ) -> Tensor:
        if cond:
            raise ValueError(f"the world is unconditional; got inputs {sorted(cond)}")
        for name, x, shape in (
            ("audio", audio, self.audio_shape),
            ("video", video, self.video_shape),
        ):
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"ExactLogRatio: {name} must have shape (B, {', '.join(map(str, shape))}), "
                    f"got {tuple(x.shape)}"
                )
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"ExactLogRatio: {audio.shape[0]} audio samples but {video.shape[0]} video"
            )
        s_a = self._scores(audio, log_snr_audio, self.audio_points, self.audio_sqnorm)
        s_v = self._scores(video, log_snr_video, self.video_points, self.video_sqnorm)
        log_r = (
            torch.logsumexp(s_a + s_v, dim=1)
            - torch.logsumexp(s_a, dim=1)
            - torch.logsumexp(s_v, dim=1)
            + math.log(self.num_points)
        )
        return log_r.to(audio.dtype)
