"""The toy networks of Table 5: a 1-D epsilon-prediction MLP and a 2-D MLP discriminator.

Both are MLPs whose hidden layers are ``Linear -> LayerNorm -> (1 + scale) * x + shift -> SiLU``
with ``(scale, shift)`` regressed from a noise-level embedding ("adaptive" time input).
The noise-level MLP only runs on the *distinct* noise levels of a batch: in sampling every
sample shares one level, so the wide embedding MLP (most of the parameters) costs one row.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.diffusion import DiscreteSchedule

NUM_TRAIN_TIMESTEPS = 500
BETA_START, BETA_END = 1e-4, 0.02


def toy_scheduler_config() -> dict[str, Any]:
    """The base models' diffusers DDPMScheduler config (Table 5; no clipping: data span +-3)."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "variance_type": "fixed_small",
        "clip_sample": False,
    }


def toy_schedule() -> DiscreteSchedule:
    return DiscreteSchedule.linear(NUM_TRAIN_TIMESTEPS, BETA_START, BETA_END)


def fourier_embedding(x: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """``[cos(2 pi x / p_k), sin(2 pi x / p_k)]`` for ``dim / 2`` periods geometric in range."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    periods = torch.logspace(
        math.log10(min_period), math.log10(max_period), dim // 2, dtype=torch.float32
    ).to(x.device)
    args = 2 * math.pi * x.float()[:, None] / periods[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class AdaptiveMLP(nn.Module):
    """MLP on ``x`` whose hidden layers are modulated by an embedding of a condition ``c``.

    The first hidden layer is not layer-normalised: LayerNorm of an affine map of a 1-D or
    2-D input, ``LN(w x + b)``, tends to ``sign(x) * LN(w)`` away from the origin, so it would
    erase where the input lies (the modes at +-3 came out blurred before this was found).
    """

    def __init__(
        self, in_dim: int, widths: Sequence[int], out_dim: int, cond_dim: int, emb_dim: int
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )
        dims = [in_dim, *widths]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(
            nn.Identity() if i == 0 else nn.LayerNorm(w, elementwise_affine=False)
            for i, w in enumerate(widths)
        )
        self.modulations = nn.ModuleList(nn.Linear(emb_dim, 2 * w) for w in widths)
        for mod in self.modulations:  # start as a plain LayerNorm MLP
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        self.out = nn.Linear(dims[-1], out_dim)
        self.act = nn.SiLU()

    def modulation(self, cond: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer ``(scale, shift)``, one row per row of ``cond``."""
        emb = self.embed(cond)
        return [tuple(mod(emb).chunk(2, dim=1)) for mod in self.modulations]  # type: ignore[misc]

    def forward(
        self,
        x: Tensor,
        cond: Tensor | None,
        index: Tensor | None = None,
        table: list[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """``cond`` holds one row per distinct condition (or ``table`` its precomputed
        modulation); ``index`` (B,) picks each sample's row (None: one row per sample, or
        one row shared by all)."""
        if table is None:
            table = self.modulation(cond)
        for linear, norm, (scale, shift) in zip(self.linears, self.norms, table, strict=True):
            if index is not None:
                scale, shift = scale[index], shift[index]
            x = self.act(norm(linear(x)) * (1 + scale) + shift)
        return self.out(x)


def _distinct(keys: Tensor) -> tuple[Tensor, Tensor | None]:
    """Distinct rows of ``keys`` (B, K) and the inverse index; one row without index if all
    rows are equal (the sampling case)."""
    if (keys == keys[:1]).all():
        return keys[:1], None
    return torch.unique(keys, dim=0, return_inverse=True)


class BaseMLP(nn.Module):
    """Epsilon-prediction network for 1-D data: widths 16, 64, 256, 64, 16, timestep dim 256.

    The timestep MLP (256 -> 1024 -> 1024) brings the count to about 2.2M parameters as in
    Table 5; it runs once per distinct timestep, and not at all once :meth:`freeze` has
    tabulated the modulations of the 500 integer timesteps (frozen base models are called
    with hundreds of distinct timesteps per discriminator training batch).
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 64, 256, 64, 16),
        time_dim: int = 256,
        emb_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.mlp = AdaptiveMLP(1, widths, 1, time_dim, emb_dim)
        self._table: list[tuple[Tensor, Tensor]] | None = None

    def _embed(self, t: Tensor) -> Tensor:
        return fourier_embedding(t, self.time_dim, 2.0, 4.0 * NUM_TRAIN_TIMESTEPS)

    @torch.no_grad()
    def freeze(self) -> BaseMLP:
        """Eval mode, no grads, and a lookup table of the time modulations."""
        self.eval().requires_grad_(requires_grad=False)
        self._table = self.mlp.modulation(self._embed(torch.arange(NUM_TRAIN_TIMESTEPS)))
        return self

    def train(self, mode: bool = True) -> BaseMLP:
        if mode:
            self._table = None  # weights may change again
        return super().train(mode)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"BaseMLP expects x of shape (B, 1), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        if self._table is not None and not t.is_floating_point():
            keys, index = _distinct(t[:, None])
            table = [(sc[keys[:, 0]], sh[keys[:, 0]]) for sc, sh in self._table]
            return self.mlp(x, None, index, table)
        keys, index = _distinct(t.float()[:, None])
        return self.mlp(x, self._embed(keys[:, 0]), index)


class ToyBaseModel(BaseModel):
    """A trained :class:`BaseMLP` behind the :class:`BaseModel` interface (epsilon, DDPM)."""

    def __init__(self, net: BaseMLP, modality: str = "audio") -> None:
        if modality not in ("audio", "video"):
            raise ValueError(f"modality must be 'audio' or 'video', got {modality!r}")
        self.net = net if net._table is not None else net.freeze()
        self.modality = modality
        self.scheduler_config = toy_scheduler_config()

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.net(x_t, t)

    def latent_shape(self) -> tuple[int, ...]:
        return (1,)


class MLPDiscriminator(nn.Module):
    """Joint discriminator h(x_t, y_t, log-SNR_x, log-SNR_y) -> logit (B,) (Table 5).

    Hidden widths 64, 32, 8; the time input is a 64-dim Fourier embedding of the two log-SNRs
    (32 each, periods 1..200 over the clipped range [-20, 20]), turned by a 296-wide MLP into
    per-layer scale and shift: about 171K parameters as in the paper. ``audio`` is x and
    ``video`` is y, both (B, 1).
    """

    def __init__(
        self, widths: Sequence[int] = (64, 32, 8), time_dim: int = 64, emb_dim: int = 296
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.mlp = AdaptiveMLP(2, widths, 1, time_dim, emb_dim)

    def forward(
        self, audio: Tensor, video: Tensor, log_snr_audio: Tensor, log_snr_video: Tensor
    ) -> Tensor:
        batch = audio.shape[0]
        if audio.shape != (batch, 1) or video.shape != (batch, 1):
            raise ValueError(
                "MLPDiscriminator expects audio and video of shape (B, 1), got "
                f"{tuple(audio.shape)} and {tuple(video.shape)}"
            )
        snr = torch.stack(
            [
                torch.as_tensor(s, device=audio.device).float().reshape(-1).expand(batch)
                for s in (log_snr_audio, log_snr_video)
            ],
            dim=1,
        )
        keys, index = _distinct(snr)
        half = self.time_dim // 2
        cond = torch.cat([fourier_embedding(keys[:, i], half, 1.0, 200.0) for i in range(2)], dim=1)
        return self.mlp(torch.cat([audio, video], dim=1), cond, index)[:, 0]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
