"""Training data for the discriminator: pairs of latents held in memory, and their order.

Both real pairs (media encoded into the base models' spaces) and fake pairs (the cache of
:mod:`mmdisco.training.fakes`) are :class:`PairData`. Latents of the models MMDisCo targets are
small enough to keep in memory, which buys a data order that is a pure function of
``(seed, step)``: :class:`BatchOrder` walks seeded epoch permutations, so a resumed run sees
exactly the batches an uninterrupted one would, on any number of processes, with no sampler
state to save.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.io import tensor_digest
from mmdisco.seeding import derive_seed
from mmdisco.training.fakes import load_fakes


@dataclass
class PairData:
    """``n`` audio-video pairs in the base models' spaces, plus optional per-pair
    discriminator inputs (e.g. ``text_audio`` / ``text_video`` pooled text embeddings) and
    captions (the base models' prompts, so that L_DLSM corrects the captioned prediction)."""

    audio: Tensor
    video: Tensor
    cond: dict[str, Tensor] = field(default_factory=dict)
    captions: list[str] | None = None

    def __post_init__(self) -> None:
        n = self.audio.shape[0]
        for name, x in {"video": self.video, **self.cond}.items():
            if x.shape[0] != n:
                raise ValueError(
                    f"PairData: audio has {n} pairs but {name} has shape {tuple(x.shape)}"
                )
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"PairData: audio has {n} pairs but {len(self.captions)} captions")
        if n == 0:
            raise ValueError("PairData is empty")

    def __len__(self) -> int:
        return self.audio.shape[0]

    def digest(self) -> str:
        """sha256 of the pairs, their per-pair inputs and captions: the data's identity."""
        tensors = {"audio": self.audio, "video": self.video}
        tensors |= {f"cond.{k}": v for k, v in self.cond.items()}
        captions = json.dumps(self.captions).encode()
        return hashlib.sha256(tensor_digest(tensors).encode() + captions).hexdigest()

    def take(self, index: Tensor, device: torch.device | str = "cpu") -> PairData:
        return PairData(
            self.audio[index].to(device),
            self.video[index].to(device),
            {k: v[index].to(device) for k, v in self.cond.items()},
            None if self.captions is None else [self.captions[i] for i in index.tolist()],
        )

    def split(self, n_first: int) -> tuple[PairData, PairData]:
        """The first ``n_first`` pairs and the rest (e.g. train / held-out)."""
        first, rest = torch.arange(n_first), torch.arange(n_first, len(self))
        return self.take(first), self.take(rest)


def encode_pairs(
    audio_model: BaseModel,
    video_model: BaseModel,
    audio_media: Tensor,
    video_media: Tensor,
    batch_size: int = 256,
    cond: Mapping[str, Tensor] | None = None,
) -> PairData:
    """Real pairs in the base models' spaces: media through each model's ``encode``."""
    if audio_media.shape[0] != video_media.shape[0]:
        raise ValueError(
            f"audio and video media hold different numbers of clips: "
            f"{audio_media.shape[0]} vs {video_media.shape[0]}"
        )
    with torch.no_grad():
        audio = torch.cat([audio_model.encode(x) for x in audio_media.split(batch_size)]).cpu()
        video = torch.cat([video_model.encode(x) for x in video_media.split(batch_size)]).cpu()
    return PairData(audio, video, dict(cond or {}))


def fake_pairs(cache_dir: str | Path, cond: Mapping[str, Tensor] | None = None) -> PairData:
    """The fake pairs of a cache written by :func:`mmdisco.training.fakes.generate_fakes`."""
    cache = load_fakes(cache_dir)
    return PairData(cache.audio, cache.video, dict(cond or {}))


@dataclass(frozen=True)
class BatchOrder:
    """Which pairs make up the global batch of each step: a pure function of the step.

    Position ``q = step * batch_size + i`` is item ``q % n`` of epoch ``q // n``'s
    permutation (seeded by ``(seed, epoch)``). Process ``rank`` of ``world_size`` takes its
    contiguous slice of the global batch, so ranks see disjoint data.
    """

    n: int
    batch_size: int
    seed: int

    def _permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def global_batch(self, step: int) -> Tensor:
        positions = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, items = positions // self.n, positions % self.n
        index = torch.empty_like(items)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            index[mask] = self._permutation(epoch)[items[mask]]
        return index

    def local_batch(self, step: int, rank: int = 0, world_size: int = 1) -> Tensor:
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by the {world_size} processes"
            )
        local = self.batch_size // world_size
        return self.global_batch(step)[rank * local : (rank + 1) * local]
