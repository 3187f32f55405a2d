"""The L_DLSM bank: the frozen base models' predictions on noised real pairs, computed once.

L_DLSM needs, for each noised real pair, both base models' epsilon predictions. They do not
change during training (the base models are frozen), so :func:`build_noise_bank` computes
them once for ``noisings`` noise draws per real pair and stores, per row: the real pair's
index, the two timesteps, a seed that regenerates the two noise tensors, and the residuals
``eps_theta(x_t, t) - eps`` (the prediction the sampler uses: with the pair's caption and the
base model's CFG scale). Training then never calls a base model; the noise is regenerated
from the row's seed (cheaper to store than the noise itself, and exact).

The bank is a shard cache (:mod:`mmdisco.shards`): resumable, checksummed, fingerprinted by
its inputs, and written by several processes under ``accelerate launch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.errors import InputError, check_fraction_range, check_int
from mmdisco.seeding import derive_seed
from mmdisco.shards import read_shards, write_counted_shards
from mmdisco.training.data import PairData
from mmdisco.training.losses import BankRows, epsilon_fn

BANK_FORMAT = "mmdisco-dlsm-bank/1"
_KEYS = ("index", "t_audio", "t_video", "seed", "residual_audio", "residual_video")


@dataclass
class NoiseBank:
    """``M`` noisings of real pairs: ``index`` ``(M,)`` into the real pairs, timesteps,
    noise seeds and the base models' residuals ``eps_theta - eps``."""

    index: Tensor
    t_audio: Tensor
    t_video: Tensor
    seed: Tensor
    residual_audio: Tensor
    residual_video: Tensor
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return self.index.shape[0]

    def rows(self, rows: Tensor, real: PairData, device: torch.device | str = "cpu") -> BankRows:
        """The ``rows`` with their real pairs (from ``real``, the pairs the bank was built
        from) and their noise regenerated."""
        seeds = self.seed[rows].tolist()
        shape_a, shape_v = self.residual_audio.shape[1:], self.residual_video.shape[1:]
        noise_a, noise_v = zip(*(row_noise(s, shape_a, shape_v) for s in seeds), strict=True)
        index = self.index[rows]
        return BankRows(
            real.audio[index].to(device),
            real.video[index].to(device),
            self.t_audio[rows].to(device),
            self.t_video[rows].to(device),
            torch.stack(noise_a).to(device),
            torch.stack(noise_v).to(device),
            self.residual_audio[rows].to(device),
            self.residual_video[rows].to(device),
            {k: v[index].to(device) for k, v in real.cond.items()},
        )


def row_noise(seed: int, shape_audio: Any, shape_video: Any) -> tuple[Tensor, Tensor]:
    """The two noise tensors of the bank row with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(*shape_audio, generator=g), torch.randn(*shape_video, generator=g)


def build_noise_bank(
    audio_model: BaseModel,
    video_model: BaseModel,
    real: PairData,
    out_dir: str | Path,
    *,
    noisings: int = 4,
    noise_range: tuple[float, float] = (0.0, 1.0),
    shared_timesteps: bool = True,
    seed: int = 0,
    shard_size: int = 1024,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute the bank of ``noisings`` noise draws per real pair into ``out_dir``
    (resumable); returns the manifest. Noise levels are uniform on ``noise_range``
    (fractions of the schedule), shared by the two modalities with ``shared_timesteps``, as
    :func:`mmdisco.training.losses.mmdisco_loss` draws them."""
    check_int("noisings", noisings, 1)
    check_int("shard_size", shard_size, 1)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    noise_range = check_fraction_range("noise_range", noise_range)
    total = len(real) * noisings
    fingerprint = {
        "real": real.digest(),
        "noisings": noisings,
        "noise_range": list(noise_range),
        "shared_timesteps": shared_timesteps,
        "seed": seed,
        "shard_size": shard_size,
        "audio_model": audio_model.fingerprint(),
        "video_model": video_model.fingerprint(),
    }

    def make_shard(index: int, start: int, count: int) -> tuple[dict[str, Tensor], None]:
        rows = torch.arange(start, start + count)
        return _bank_shard(audio_model, video_model, real, rows, fingerprint, batch_size), None

    return write_counted_shards(
        out_dir, BANK_FORMAT, fingerprint, total, shard_size, make_shard, "dlsm bank", progress
    )


@torch.no_grad()
def _bank_shard(
    audio_model: BaseModel,
    video_model: BaseModel,
    real: PairData,
    rows: Tensor,
    fingerprint: dict[str, Any],
    batch_size: int,
) -> dict[str, Tensor]:
    """Bank rows ``rows`` (row ``r`` noises real pair ``r % len(real)``): a pure function
    of the rows and the bank's inputs."""
    seed, (lo, hi) = fingerprint["seed"], fingerprint["noise_range"]
    g = torch.Generator().manual_seed(derive_seed(seed, int(rows[0])))
    u_a = lo + (hi - lo) * torch.rand(len(rows), generator=g)
    u_v = (
        u_a
        if fingerprint["shared_timesteps"]
        else lo + (hi - lo) * torch.rand(len(rows), generator=g)
    )
    out: dict[str, list[Tensor]] = {k: [] for k in _KEYS}
    for chunk in torch.arange(len(rows)).split(batch_size):
        index = rows[chunk] % len(real)
        seeds = torch.tensor([derive_seed(seed, int(r), 1) for r in rows[chunk]])
        noise_a, noise_v = zip(
            *(row_noise(s, real.audio.shape[1:], real.video.shape[1:]) for s in seeds.tolist()),
            strict=True,
        )
        captions = None if real.captions is None else [real.captions[i] for i in index.tolist()]
        residuals = []
        for model, x0, u, noise in (
            (audio_model, real.audio, u_a[chunk], torch.stack(noise_a)),
            (video_model, real.video, u_v[chunk], torch.stack(noise_v)),
        ):
            t = model.schedule.timesteps_from_fraction(u)
            x_t = model.schedule.add_noise(x0[index], noise, t).to(model.device)
            cond = None if captions is None else model.encode_prompt(captions)
            eps = epsilon_fn(model, cond)(x_t, t.to(model.device)).float().cpu()
            residuals.append(eps - noise)
            out["t_audio" if model is audio_model else "t_video"].append(t.long())
        out["index"].append(index)
        out["seed"].append(seeds)
        out["residual_audio"].append(residuals[0])
        out["residual_video"].append(residuals[1])
    return {k: torch.cat(v) for k, v in out.items()}


def load_noise_bank(out_dir: str | Path, verify: bool = True) -> NoiseBank:
    """Read a complete bank written by :func:`build_noise_bank`."""
    hint = "build it with mmdisco.training.bank.build_noise_bank (same inputs)"
    shards = read_shards(out_dir, BANK_FORMAT, hint, verify)
    missing = [k for k in _KEYS if k not in shards.tensors]
    if missing:
        raise InputError(f"the shards hold no {missing[0]!r} tensor", str(out_dir))
    return NoiseBank(**{k: shards.tensors[k] for k in _KEYS}, manifest=shards.manifest)
