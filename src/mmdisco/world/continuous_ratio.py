"""The continuous world's exact log density ratio, and its exact marginal log densities.

Noising a clean clip ``x_0(z)`` gives ``x_t ~ N(alpha x_0(z), sigma^2 I)``. Write ``s`` for
the shared state (shade, event pair: uniform over a lattice) and ``n`` for a modality's
nuisance. Then

    log r_t(a, v) = log S + LSE_s(l_a(s) + l_v(s)) - LSE_s(l_a(s)) - LSE_s(l_v(s)),
    l_m(s) = log E_n exp((alpha <x_t, x_0(s, n)> - alpha^2 |x_0(s, n)|^2 / 2) / sigma^2)

(terms that depend on neither ``s`` nor ``n`` cancel). The structure makes this cheap:

* each image is the background plus a separable part: video = coverage rows (event pair)
  x coverage columns (position) x colour (shade); audio = gain x band profile (shade) x the
  sum of the two events' envelopes. So ``<x_t, x_0>`` is a few small contractions (the two
  events of the audio add, so each event time is correlated once, not once per pair);
* the video is piecewise linear in the position between whole pixels and the audio linear in
  the gain, so on each piece the exponent is a quadratic ``A + B u - K u^2`` of ``u in
  [0, 1]`` and its integral is a difference of normal CDFs (:func:`log_integral`): the
  nuisance is integrated in closed form, inside its own modality.

Everything is float64; there is no quadrature error (the shared variables are the world's own
lattice). ``tests/test_continuous_world.py`` checks it against brute-force enumeration with a
fine grid over the nuisance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.world.continuous import (
    FLOOR_LEVEL,
    ContinuousWorldConfig,
    band_profiles,
    colours,
    coverage,
    envelopes,
    row_coverage,
)


def log_diff_ndtr(hi: Tensor, lo: Tensor) -> Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``hi > lo``, stable in both tails."""
    flip = lo > 0
    hi, lo = torch.where(flip, -lo, hi), torch.where(flip, -hi, lo)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi))


def log_integral(a: Tensor, b: Tensor, k: Tensor) -> Tensor:
    """``log int_0^1 exp(a + b u - k u^2) du`` for ``k > 0`` (closed form)."""
    k = k.clamp_min(1e-12)
    mu, c = b / (2 * k), torch.sqrt(2 * k)
    return a + b * mu / 2 + 0.5 * torch.log(math.pi / k) + log_diff_ndtr(c * (1 - mu), -c * mu)


def quadratic_max(a: Tensor, b: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``max_u`` and ``argmax_u`` of ``a + b u - k u^2`` over ``u in [0, 1]``."""
    u = (b / (2 * k.clamp_min(1e-12))).clamp(0.0, 1.0)
    return a + b * u - k * u * u, u


class ContinuousWorldTerms(nn.Module):
    """The world's fixed templates, and the quadratic exponents ``(A, B, K)`` of each
    modality's likelihood for a batch of noisy clips (shape ``(N, shades, pairs, pieces)``)."""

    def __init__(self, config: ContinuousWorldConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ContinuousWorldConfig()
        rows = row_coverage(c)  # (P, F, H)
        starts = torch.arange(c.frame_size - c.object_size + 1, dtype=torch.float64)
        pair_index = torch.tensor(c.event_pairs)
        env = envelopes(c)  # (D, T, K)
        both = env[:, pair_index[:, 0]] + env[:, pair_index[:, 1]]  # (D, P, K)
        background = torch.full(c.video_shape, -1.0, dtype=torch.float64)
        background[..., -1, :] = FLOOR_LEVEL
        lift = colours(c) + 1.0
        profiles = band_profiles(c)
        for name, value in (
            ("rows", rows),
            ("row_energy", rows.pow(2).sum((1, 2))),  # (P,)
            ("columns", coverage(starts, c.object_size, c.frame_size)),  # (J + 1, W)
            ("lift", lift),  # (S, 3)
            ("lift_energy", lift.pow(2).sum(1)),  # (S,)
            ("video_background", background),
            ("profiles", profiles),  # (S, bands)
            ("profile_energy", profiles.pow(2).sum(1)),  # (S,)
            ("envelopes", env),
            ("pair_index", pair_index),
            ("pair_energy", both.pow(2).sum(-1)),  # (D, P)
        ):
            self.register_buffer(name, value, persistent=False)

    @property
    def num_states(self) -> int:
        return self.config.num_shades * len(self.config.event_pairs)

    def video_terms(self, x: Tensor, alpha: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exponents over (shade, pair, position piece ``[j, j + 1]``) for video ``x``."""
        a, v = alpha.double()[:, None, None, None], var.double()[:, None, None, None]
        resid = x.double() - alpha.double()[:, None, None, None, None] * self.video_background
        by_column = torch.einsum("ncfhw,jw->ncfhj", resid, self.columns)
        by_pair = torch.einsum("ncfhj,pfh->ncpj", by_column, self.rows)
        inner = torch.einsum("ncpj,sc->nspj", by_pair, self.lift)  # <x', mask_j (x) lift>
        energy = self.lift_energy[:, None, None] * self.row_energy[:, None]  # (S, P, 1)
        k = a**2 * energy / v
        size = self.config.object_size
        base = (a * inner[..., :-1] - 0.5 * a**2 * energy * size) / v
        slope = a * (inner[..., 1:] - inner[..., :-1]) / v + k
        return base, slope, k.expand_as(base)

    def audio_terms(self, x: Tensor, alpha: Tensor, var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exponents over (shade, pair, decay) for audio ``x``, ``u`` the gain's fraction."""
        c = self.config
        a, v = alpha.double()[:, None, None, None], var.double()[:, None, None, None]
        resid = x.double() + alpha.double()[:, None, None]  # background -1
        by_shade = torch.einsum("nbk,sb->nsk", resid, self.profiles)
        by_time = torch.einsum("nsk,dtk->nsdt", by_shade, self.envelopes)
        inner = by_time[..., self.pair_index[:, 0]] + by_time[..., self.pair_index[:, 1]]
        inner = inner.transpose(2, 3)  # (N, S, P, D)
        energy = self.profile_energy[:, None, None] * self.pair_energy.T  # (S, P, D)
        lin, quad = a * inner / v, a**2 * energy / (2 * v)
        g0, span = c.gain_min, c.gain_max - c.gain_min
        return (
            lin * g0 - quad * g0**2,
            (lin - 2 * quad * g0) * span,
            (quad * span**2).expand_as(lin),
        )

    def log_likelihoods(self, x: Tensor, alpha: Tensor, var: Tensor, modality: str) -> Tensor:
        """``l_m(s)`` for every shared state: ``(N, shades, pairs)`` float64 (the nuisance
        integrated against its uniform prior)."""
        if modality == "video":
            pieces = log_integral(*self.video_terms(x, alpha, var))
            width = self.config.frame_size - self.config.object_size
            return torch.logsumexp(pieces, dim=-1) - math.log(width)
        if modality == "audio":
            pieces = log_integral(*self.audio_terms(x, alpha, var))
            return torch.logsumexp(pieces, dim=-1) - math.log(len(self.config.decays))
        raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")


def _alpha_var(log_snr: Tensor, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    lam = torch.as_tensor(log_snr, device=device).double().reshape(-1).expand(batch)
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam)


class ContinuousLogRatio(nn.Module):
    """``log r_t(a_t, v_t)`` of the continuous world, called like any discriminator:
    ``ratio(audio, video, log_snr_audio, log_snr_video) -> (B,)``, differentiable in both
    inputs, computed in float64 (in chunks of ``chunk`` pairs) and returned in the audio's
    dtype."""

    def __init__(self, config: ContinuousWorldConfig | None = None, chunk: int = 64) -> None:
        super().__init__()
        self.terms = ContinuousWorldTerms(config)
        self.chunk = chunk

    @property
    def config(self) -> ContinuousWorldConfig:
        return self.terms.config

    def _check(self, audio: Tensor, video: Tensor) -> None:
        c = self.config
        for name, x, shape in (("audio", audio, c.audio_shape), ("video", video, c.video_shape)):
            if tuple(x.shape[1:]) != tuple(shape):
                dims = ", ".join(map(str, shape))
                raise ValueError(
                    f"ContinuousLogRatio: {name} must have shape (B, {dims}), got {tuple(x.shape)}"
                )
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"ContinuousLogRatio: {audio.shape[0]} audio samples but {video.shape[0]} video"
            )

    def _log_ratio(self, audio: Tensor, video: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        la = state_log_likelihoods(self.terms, audio, snr_a, "audio")
        lv = state_log_likelihoods(self.terms, video, snr_v, "video")
        return (
            torch.logsumexp(la + lv, dim=1)
            - torch.logsumexp(la, dim=1)
            - torch.logsumexp(lv, dim=1)
            + math.log(self.terms.num_states)
        )

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
        self._check(audio, video)
        batch = audio.shape[0]
        snr_a = torch.as_tensor(log_snr_audio, device=audio.device).reshape(-1).expand(batch)
        snr_v = torch.as_tensor(log_snr_video, device=video.device).reshape(-1).expand(batch)
        out = [
            self._log_ratio(audio[sl], video[sl], snr_a[sl], snr_v[sl])
            for sl in (slice(i, i + self.chunk) for i in range(0, batch, self.chunk))
        ]
        return torch.cat(out).to(audio.dtype)


def state_log_likelihoods(
    terms: ContinuousWorldTerms, x: Tensor, log_snr: Tensor, modality: str
) -> Tensor:
    """``l_m(s)`` of one modality at log-SNR ``log_snr`` for every shared state, ``(N,
    states)`` float64, shade major: the log posterior over the states up to a constant per
    clip (``softmax`` of it is the posterior)."""
    alpha, var = _alpha_var(log_snr, x.shape[0], x.device)
    return terms.log_likelihoods(x, alpha, var, modality).flatten(1)


def log_marginal(terms: ContinuousWorldTerms, x: Tensor, log_snr: Tensor, modality: str) -> Tensor:
    """``log p_t(x)`` of one modality of the world at log-SNR ``log_snr`` (exact, float64,
    differentiable): its gradient is the exact score an ideal base model would learn."""
    alpha, var = _alpha_var(log_snr, x.shape[0], x.device)
    ll = terms.log_likelihoods(x, alpha, var, modality).flatten(1)
    return torch.logsumexp(ll, dim=1) + _log_background(terms, x, alpha, var, modality)


def _log_background(
    terms: ContinuousWorldTerms, x: Tensor, alpha: Tensor, var: Tensor, modality: str
) -> Tensor:
    """What ``log p_t(x)`` adds to ``LSE_s l_m(s)``: the state prior and the Gaussian of
    ``x_t`` around the noised background (the terms the ratio cancels)."""
    background = terms.video_background if modality == "video" else -torch.ones_like(x[0])
    resid = x.double() - alpha.reshape(-1, *[1] * (x.ndim - 1)) * background.double()
    dims = x[0].numel()
    return (
        -math.log(terms.num_states)
        - resid.pow(2).flatten(1).sum(1) / (2 * var)
        - 0.5 * dims * torch.log(2 * math.pi * var)
    )


def exact_guided_scores(
    terms: ContinuousWorldTerms,
    audio: Tensor,
    video: Tensor,
    log_snr: Tensor,
    scale: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """The ideal base models' scores plus ``scale * grad log r_t`` (audio, video; float64):
    what guiding the world's exact marginals by its exact ratio gives, with each modality's
    ``l_m`` computed and differentiated once instead of twice. In ``l_m`` the two add up to
    ``(1 - s) grad LSE_s l_m + s grad LSE_s (l_a + l_v)``: one backward through ``l_m``
    weighted by the mixture of the marginal and the joint posterior over the states."""
    a = audio.detach().double().requires_grad_()
    v = video.detach().double().requires_grad_()
    alpha, var = _alpha_var(log_snr, a.shape[0], a.device)
    la = terms.log_likelihoods(a, alpha, var, "audio").flatten(1)
    lv = terms.log_likelihoods(v, alpha, var, "video").flatten(1)
    with torch.no_grad():
        joint = torch.softmax(la + lv, dim=1)
        weights = [
            (1 - s) * torch.softmax(ll, dim=1) + s * joint
            for ll, s in ((la, scale[0]), (lv, scale[1]))
        ]
    background = _log_background(terms, a, alpha, var, "audio") + _log_background(
        terms, v, alpha, var, "video"
    )
    grads = torch.autograd.grad(
        (la, lv, background), (a, v), (weights[0], weights[1], torch.ones_like(background))
    )
    return grads[0], grads[1]
