"""A discriminator whose dependence on the noise level is the forward process's own.

``CodebookDiscriminator`` models each modality with a codebook of clean anchors
``mu_1..mu_K`` (k-means of clean clips of that modality) and the two modalities' pairing
with a coupling matrix ``W``. If clean pairs were anchor pairs ``(mu_j, nu_k)`` drawn with
probability ``P(j, k)``, the noised density ratio would be, exactly,

    r_t(a, v) = sum_jk p(j | a_t) p(k | v_t) P(j, k) / (P(j) P(k)),

with the anchor posteriors of a variance-preserving forward process at log-SNR ``lambda``
(``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``)::

    log p(j | x_t) = log_softmax_j( g alpha / sigma^2 <mu_j, x_t>
                                    - g alpha^2 / (2 sigma^2) |mu_j|^2 + log pi_j ),

where ``g`` is the pooling factor (average-pooling the video by ``p x p`` divides the noise
variance by ``g = p^2``). The discriminator is this formula with ``W = log P(j,k) / (P(j)
P(k))`` counted from real pairs (:meth:`CodebookDiscriminator.couple`; code pairs never seen
together are off the support, so the ratio's contrast is unbounded, as the true ratio's is),
normalised so that ``E_fake[r] = 1``, and then trained with MMDisCo's losses.

Why this form (docs/training_the_discriminator.md has the measurements): a generic network
learns the ratio where real and fake pairs are easy to tell apart (low noise) and stays
near chance where guidance needs it (``t/T ~ 0.8-0.95``), because telling them apart there
needs every dimension of the clip and the discriminative features learned at low noise are
sparse. Here the noise level enters only through the forward process, so the anchors fix
the ratio at every noise level at once, and training where the ratio is moderate (high
noise, where the cross-entropy does not saturate) sets the coupling everywhere. The
synthetic world's exact ratio (:class:`mmdisco.world.ratio.ExactLogRatio`) is the special
case with one anchor per clip and a diagonal coupling.

Both towers are independent until the last step, so :meth:`pair_logits` scores every audio
with every video of a batch for the price of one forward per sample.

For data that is a finite set of clips (the synthetic world) this is exact; for continuous
data it is a kernel estimate of the ratio, as good as the anchors' coverage of the data at
the noise levels that guide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.diffusion import LOG_SNR_LIMIT
from mmdisco.discriminator.config import config_from_tagged_dict, tagged_config_dict
from mmdisco.io import PretrainedMixin

KIND = "codebook"


@dataclass(frozen=True)
class CodebookConfig:
    """Shapes and sizes of a :class:`CodebookDiscriminator` (JSON-serialisable).

    ``audio_shape`` / ``video_shape`` exclude the batch axis; the video is ``(C, F, H, W)``
    and is average-pooled by ``video_pool`` in H and W before matching. ``max_log_snr`` caps
    the posteriors' sharpness (the anchors' posterior at log-SNR above it is taken at it).
    ``coupling_gain`` multiplies the stored coupling: Adam moves every parameter by about
    its learning rate per step, and the coupling's entries must travel ~10 nats while the
    anchors move by hundredths, so the coupling learns ``coupling_gain`` times faster.
    ``train_codebooks``: let the losses move the anchors too (by default they stay where
    k-means put them and training sets the coupling and priors: moving them cost the video
    gradient at t/T = 0.9 cosine 0.92 -> 0.74 in our runs, and two thirds of a step's time).
    """

    audio_shape: tuple[int, ...]
    video_shape: tuple[int, ...]
    audio_codes: int = 256
    video_codes: int = 256
    video_pool: int = 1
    max_log_snr: float = LOG_SNR_LIMIT
    coupling_gain: float = 100.0
    train_codebooks: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "audio_shape", tuple(int(s) for s in self.audio_shape))
        object.__setattr__(self, "video_shape", tuple(int(s) for s in self.video_shape))
        for name in ("audio_codes", "video_codes", "video_pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CodebookConfig.{name} must be a positive int, got {value!r}")
        if not self.audio_shape or min(self.audio_shape) < 1:
            raise ValueError(f"CodebookConfig.audio_shape must be positive, got {self.audio_shape}")
        if len(self.video_shape) != 4 or min(self.video_shape) < 1:
            raise ValueError(
                f"CodebookConfig.video_shape must be (C, F, H, W), got {self.video_shape}"
            )
        _, _, h, w = self.video_shape
        if h % self.video_pool or w % self.video_pool:
            raise ValueError(
                f"CodebookConfig.video_pool={self.video_pool} must divide the video's H and W "
                f"({h}, {w})"
            )
        if not isinstance(self.train_codebooks, bool):
            raise ValueError(
                "CodebookConfig.train_codebooks must be true or false, "
                f"got {self.train_codebooks!r}"
            )
        for name in ("max_log_snr", "coupling_gain"):
            value = float(getattr(self, name))
            if not torch.isfinite(torch.tensor(value)) or (name == "coupling_gain" and value <= 0):
                raise ValueError(f"CodebookConfig.{name} must be a finite number > 0, got {value}")

    @property
    def pooled_video_shape(self) -> tuple[int, ...]:
        c, f, h, w = self.video_shape
        return (c, f, h // self.video_pool, w // self.video_pool)

    def to_dict(self) -> dict[str, Any]:
        return tagged_config_dict(self, KIND)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodebookConfig:
        return config_from_tagged_dict(cls, data, KIND)


def kmeans(
    points: Tensor, k: int, generator: torch.Generator, iterations: int = 15
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding: ``(N, D)`` points -> each point's cluster
    ``(N,)`` and the cluster sizes ``(k,)``. Deterministic given ``generator``."""
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points ({n}), got k={k}")
    points = points.double()
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    dist = (points - points[chosen[0]]).pow(2).sum(1)
    for _ in range(1, k):
        weights = dist.clamp_min(0)
        if weights.sum() <= 0:  # fewer distinct points than clusters: reuse one
            chosen.append(chosen[-1])
            continue
        chosen.append(int(torch.multinomial(weights / weights.sum(), 1, generator=generator)))
        dist = torch.minimum(dist, (points - points[chosen[-1]]).pow(2).sum(1))
    centres = points[chosen].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).double()
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    assign = torch.cdist(points, centres).argmin(1)
    return assign, torch.bincount(assign, minlength=k)


def _segment_means(values: Tensor, assign: Tensor, k: int) -> Tensor:
    sums = torch.zeros(k, values.shape[1], dtype=torch.float64).index_add_(
        0, assign, values.double()
    )
    counts = torch.bincount(assign, minlength=k).double().clamp_min(1)
    return (sums / counts[:, None]).float()


class CodebookDiscriminator(PretrainedMixin, nn.Module):
    """The anchor-posterior ratio model above, as a discriminator.

    Called like every discriminator (:mod:`mmdisco.guidance`): ``disc(audio, video,
    log_snr_audio, log_snr_video) -> (B,)`` logits; it is unconditional (no text inputs).
    """

    config_class = CodebookConfig
    pretrained_what = "a codebook discriminator"

    def __init__(self, config: CodebookConfig) -> None:
        super().__init__()
        self.config = config
        d_a = int(torch.tensor(config.audio_shape).prod())
        d_v = int(torch.tensor(config.pooled_video_shape).prod())
        trainable = config.train_codebooks
        self.audio_codebook = nn.Parameter(torch.zeros(config.audio_codes, d_a), trainable)
        self.video_codebook = nn.Parameter(torch.zeros(config.video_codes, d_v), trainable)
        self.audio_log_prior = nn.Parameter(torch.zeros(config.audio_codes))
        self.video_log_prior = nn.Parameter(torch.zeros(config.video_codes))
        self.coupling = nn.Parameter(torch.zeros(config.audio_codes, config.video_codes))
        self._anchor_cache: dict[int, tuple] = {}

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_samples(
        cls,
        config: CodebookConfig,
        audio: Tensor,
        video: Tensor,
        seed: int = 0,
        assign_pool: int = 4,
    ) -> CodebookDiscriminator:
        """Anchors from k-means of clean samples of each modality, separately (no pairing
        is used: e.g. the base models' fakes), priors from the cluster sizes, coupling 0.

        Video clusters are found on the video average-pooled by ``assign_pool`` (fast), and
        each anchor is the mean of its cluster at the discriminator's own resolution.
        """
        model = cls(config)
        generator = torch.Generator().manual_seed(seed)
        for name, x, k in (
            ("audio", audio, config.audio_codes),
            ("video", video, config.video_codes),
        ):
            expected = config.audio_shape if name == "audio" else config.video_shape
            if tuple(x.shape[1:]) != expected:
                raise ValueError(
                    f"{name} samples must have shape (N, {', '.join(map(str, expected))}), "
                    f"got {tuple(x.shape)}"
                )
            if name == "video":
                coarse = max(1, assign_pool // config.video_pool) * config.video_pool
                features = _pool(x, coarse).flatten(1)
                values = _pool(x, config.video_pool).flatten(1)
            else:
                features = values = x.flatten(1)
            assign, counts = kmeans(features, k, generator)
            with torch.no_grad():
                getattr(model, f"{name}_codebook").copy_(_segment_means(values, assign, k))
                getattr(model, f"{name}_log_prior").copy_((counts.double() + 1).log().float())
        return model

    @torch.no_grad()
    def couple(self, audio: Tensor, video: Tensor, smoothing: float = 0.0) -> CodebookDiscriminator:
        """Set the coupling from clean real pairs: each pair's nearest anchors ``(j, k)`` are
        counted, and ``W = log P(j, k) / (P(j) P(k))`` of the counts (plus ``smoothing``).

        Code pairs never seen together get a structural zero (``W = -inf`` in effect): the
        true ratio of paired data is zero off its support, and a finite floor would cap the
        ratio's contrast, which is what lets the exact ratio pull a mismatched sample across
        the whole space at low noise. Their entries receive exactly zero gradient, so
        training with MMDisCo's losses refines the support's values and never revives them.
        """
        c = self.config
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"couple() needs pairs: {audio.shape[0]} audio and {video.shape[0]} video samples"
            )
        if not (smoothing >= 0 and torch.isfinite(torch.tensor(float(smoothing)))):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
        ja = _nearest(audio.flatten(1), self.audio_codebook)
        jv = _nearest(_pool(video, c.video_pool).flatten(1), self.video_codebook)
        counts = torch.zeros(c.audio_codes, c.video_codes, dtype=torch.float64)
        counts.index_put_((ja, jv), torch.ones(len(ja), dtype=torch.float64), accumulate=True)
        counts += smoothing
        log_p = counts.log() - counts.sum().log()
        w = (
            log_p
            - torch.logsumexp(log_p, 1, keepdim=True)
            - torch.logsumexp(log_p, 0, keepdim=True)
        )
        w = torch.where(counts > 0, w, torch.full_like(w, _NO_SUPPORT)).clamp_min(_NO_SUPPORT)
        self.coupling.copy_((w / c.coupling_gain).float())
        return self

    # -- forward ---------------------------------------------------------------------------

    def code_log_posteriors(
        self, audio: Tensor, video: Tensor, log_snr_audio: Tensor, log_snr_video: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``log p(j | a_t)`` ``(Ba, Ka)`` and ``log p(k | v_t)`` ``(Bv, Kv)``."""
        c = self.config
        for name, x, shape in (("audio", audio, c.audio_shape), ("video", video, c.video_shape)):
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"CodebookDiscriminator: {name} must have shape "
                    f"(B, {', '.join(map(str, shape))}), got {tuple(x.shape)}"
                )
        log_a = self._log_posterior(
            audio.flatten(1), log_snr_audio, self.audio_codebook, self.audio_log_prior, 1.0
        )
        pooled = _pool(video, c.video_pool).flatten(1)
        log_v = self._log_posterior(
            pooled, log_snr_video, self.video_codebook, self.video_log_prior, c.video_pool**2
        )
        return log_a, log_v

    def _centred(self, codebook: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The anchors' mean, the anchors minus it, and their squared norms (float64).
        Frozen anchors (the default) are computed once per change of the weights."""
        if codebook.requires_grad and torch.is_grad_enabled():
            centre = codebook.detach().mean(0)
            offsets = codebook - centre
            return centre, offsets, offsets.pow(2).sum(1).double()
        key = (id(codebook), codebook._version, codebook.data_ptr(), codebook.device)
        cached = self._anchor_cache.get(id(codebook))
        if cached is None or cached[0] != key:
            centre = codebook.detach().mean(0)
            offsets = codebook.detach() - centre
            cached = (key, centre, offsets, offsets.pow(2).sum(1).double())
            self._anchor_cache[id(codebook)] = cached
        return cached[1], cached[2], cached[3]

    def _log_posterior(
        self, x: Tensor, log_snr: Tensor, codebook: Tensor, log_prior: Tensor, gain: float
    ) -> Tensor:
        # The scores are large (|mu|^2 / sigma^2) and guidance needs their small differences.
        # Centred on the anchors' mean c, the anchor-dependent part of the score is
        # alpha / sigma^2 <mu_j - c, x - alpha c> - alpha^2 / (2 sigma^2) |mu_j - c|^2, whose
        # inner product is small enough for a float32 matmul (the costly part); the rest is
        # float64.
        lam = torch.as_tensor(log_snr, device=x.device, dtype=torch.float64).reshape(-1)
        lam = lam.expand(x.shape[0]).clamp(max=self.config.max_log_snr)
        alpha2 = torch.sigmoid(lam)
        precision = gain * (1.0 + lam.exp())  # g / sigma^2
        centre, offsets, sq_norms = self._centred(codebook)
        shifted = x.float() - alpha2.sqrt().float()[:, None] * centre
        scores = (alpha2.sqrt() * precision)[:, None] * (shifted @ offsets.T).double()
        scores = scores - (0.5 * alpha2 * precision)[:, None] * sq_norms
        return torch.log_softmax(scores + torch.log_softmax(log_prior.double(), 0), dim=1)

    def combine(self, log_audio: Tensor, log_video: Tensor) -> Tensor:
        """Logits from code posteriors: ``(B, Ka), (B, Kv) -> (B,)``; with ``log_audio``
        ``(Ba, 1, Ka)`` and ``log_video`` ``(1, Bv, Kv)`` every pairing ``(Ba, Bv)``."""
        coupling = self.config.coupling_gain * self.coupling
        joint = _log_bilinear(log_audio, coupling, log_video)
        prior_a = torch.log_softmax(self.audio_log_prior, 0)
        prior_v = torch.log_softmax(self.video_log_prior, 0)
        norm = _log_bilinear(prior_a[None], coupling, prior_v[None])[0]
        return (joint - norm).float()

    def forward(
        self,
        audio: Tensor,
        video: Tensor,
        log_snr_audio: Tensor,
        log_snr_video: Tensor,
        **cond: Any,
    ) -> Tensor:
        if cond:
            raise ValueError(f"CodebookDiscriminator is unconditional; got inputs {sorted(cond)}")
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"batch size mismatch: audio has {audio.shape[0]} samples, video {video.shape[0]}"
            )
        return self.combine(
            *self.code_log_posteriors(audio, video, log_snr_audio, log_snr_video)
        ).to(audio.dtype)

    def pair_logits(
        self, audio: Tensor, video: Tensor, log_snr_audio: Tensor, log_snr_video: Tensor
    ) -> Tensor:
        """``(Ba, Bv)``: the logit of audio ``i`` paired with video ``j``, for all ``i, j``
        (audio and video batches of equal size; each sample's own log-SNR)."""
        log_a, log_v = self.code_log_posteriors(audio, video, log_snr_audio, log_snr_video)
        support = len(_support(self.config.coupling_gain * self.coupling)[0])
        rows = max(1, _MAX_TERMS // max(1, support * log_v.shape[0]))
        logits = [self.combine(chunk[:, None], log_v[None]) for chunk in log_a.split(rows)]
        return torch.cat(logits).to(audio.dtype)

    # -- persistence -----------------------------------------------------------------------


_NO_SUPPORT = -1e4  # a coupling entry this low marks "no support": it is left out of sums
_MAX_TERMS = 2**24  # terms per chunk of pair_logits (float64: 128 MiB)


def _nearest(x: Tensor, codebook: Tensor) -> Tensor:
    return torch.cdist(x.double(), codebook.detach().double()).argmin(1)


def _pool(video: Tensor, pool: int) -> Tensor:
    return video if pool == 1 else F.avg_pool3d(video, (1, pool, pool))


def _support(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column indices of the coupling entries that are not "no support"."""
    return (weights.detach() > _NO_SUPPORT / 2).nonzero(as_tuple=True)


def _log_bilinear(log_a: Tensor, weights: Tensor, log_b: Tensor) -> Tensor:
    """``log sum_jk exp(log_a[..., j] + weights[j, k] + log_b[..., k])``, broadcast over the
    leading axes, summed over the coupling's support only, in float64 log-space.

    Log-space matters: at low noise a mismatched pair's ratio is e^-700 and less, below
    what even float64 holds as a number, and its gradient (the pull across the space that
    the exact ratio has) is carried by the largest of those vanishing terms.
    """
    j, k = _support(weights)
    terms = log_a[..., j].double() + weights[j, k].double() + log_b[..., k].double()
    return torch.logsumexp(terms, dim=-1)


def discriminator_kind(config: dict[str, Any]) -> str:
    """``"codebook"`` or ``"network"`` for a saved discriminator's config.json contents."""
    return KIND if config.get("discriminator_type") == KIND else "network"


__all__: Sequence[str] = (
    "CodebookConfig",
    "CodebookDiscriminator",
    "discriminator_kind",
    "kmeans",
)
