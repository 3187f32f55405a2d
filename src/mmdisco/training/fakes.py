"""Fake pairs: independent samples of the two frozen base models, cached on disk.

MMDisCo's discriminator learns to tell real pairs from pairs the base models generate
*independently* (METHOD.md). Generating those is the expensive part of training, so it is
done once, into a :mod:`mmdisco.shards` cache: shard ``k`` holds ``{"audio": (n, ...),
"video": (n, ...)}`` with its captions in the metadata, and the manifest's fingerprint
records the settings and both base models.

Each shard's random numbers come from seeds derived from ``(seed, shard index)`` alone, so
the cache does not depend on how often the run was interrupted, nor on how many processes
wrote it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.errors import (
    InputError,
    check_choice,
    check_float,
    check_fraction_range,
    check_int,
    check_memory,
)
from mmdisco.sampling import GIVEN_MODES, GuidanceOptions, Stream, joint_sample
from mmdisco.shards import read_shards, write_counted_shards

CACHE_FORMAT = "mmdisco-fakes/2"
SCHEDULERS: dict[str, str | None] = {
    "default": None,  # the base model's own scheduler class
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy's SeedSequence), for torch generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def make_scheduler(model: BaseModel, scheduler: str = "default") -> Any:
    """A fresh diffusers scheduler for ``model``: its own, or one named in :data:`SCHEDULERS`."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")
    name = SCHEDULERS[scheduler]
    if name is None:
        return model.make_scheduler()
    import diffusers

    return model.make_scheduler(getattr(diffusers, name))


@dataclass
class SampleSettings:
    """How pairs are sampled (fakes, and guided / unguided comparisons)."""

    num_inference_steps: int = 50
    scheduler: str = "default"
    guidance_scale_audio: float = 1.0
    guidance_scale_video: float = 1.0
    cfg_scale: float = 1.0
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        check_int("num_inference_steps", self.num_inference_steps, 1)
        check_choice("scheduler", self.scheduler, tuple(SCHEDULERS))
        for name in ("guidance_scale_audio", "guidance_scale_video", "cfg_scale"):
            setattr(self, name, check_float(name, getattr(self, name)))
        self.window = check_fraction_range("window", self.window, allow_empty=True)


def sample_pairs(
    audio_model: BaseModel,
    video_model: BaseModel,
    n: int,
    seed: int,
    *,
    settings: SampleSettings | None = None,
    discriminator: Callable[..., Tensor] | None = None,
    batch_size: int = 64,
    prompts: Sequence[str] | None = None,
    disc_kwargs: dict[str, Any] | None = None,
    given: tuple[str, Tensor] | None = None,
    given_mode: str = "clean",
    model_cond: tuple[str, Tensor] | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """``n`` pairs of latents, batch ``b`` drawn from seeds derived from ``(seed, b)``.

    The initial noise and the sampler noise depend only on ``seed`` and the batch index, so
    sampling the same seed with and without ``discriminator`` compares like with like.
    ``given = (modality, latents)`` (``n`` rows) generates only the other modality, the given
    clips entering the discriminator as ``given_mode`` says (``Stream.given``); they are
    returned unchanged in their slot. ``model_cond = (modality, cond)`` (``n`` rows) is that
    modality's model's per-pair conditioning, e.g. the given video for a cascade's
    video-to-audio model.
    """
    if given is not None and given[1].shape[0] != n:
        raise InputError(f"{n} pairs requested but {given[1].shape[0]} given {given[0]} clips")
    check_choice("given_mode", given_mode, GIVEN_MODES)
    settings = settings or SampleSettings()
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    out_a, out_v = [], []
    for b, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        batch_prompts = None if prompts is None else list(prompts[start : start + m])
        streams = [
            _stream(model, settings, derive_seed(seed, b, k), batch_prompts)
            for k, model in enumerate((audio_model, video_model))
        ]
        if model_cond is not None:
            stream = streams[0 if model_cond[0] == "audio" else 1]
            stream.cond = model_cond[1][start : start + m].to(stream.model.device)
        if given is not None:
            stream = streams[0 if given[0] == "audio" else 1]
            stream.latents = given[1][start : start + m].to(stream.model.device)
            stream.given = given_mode
        if discriminator is not None:
            for stream, scale in zip(
                streams, (settings.guidance_scale_audio, settings.guidance_scale_video), strict=True
            ):
                stream.guidance_scale = scale
        a, v = joint_sample(
            *streams,
            discriminator,
            batch_size=m,
            num_inference_steps=settings.num_inference_steps,
            options=GuidanceOptions(window=settings.window, extra=dict(disc_kwargs or {})),
            progress=progress,
        )
        out_a.append(a.cpu())
        out_v.append(v.cpu())
    return torch.cat(out_a), torch.cat(out_v)


def _stream(
    model: BaseModel, settings: SampleSettings, seed: int, prompts: list[str] | None
) -> Stream:
    generator = torch.Generator(model.device).manual_seed(seed)
    stream = Stream(model, make_scheduler(model, settings.scheduler), generator=generator)
    if prompts is not None:
        stream.cond = model.encode_prompt(prompts)
        if settings.cfg_scale != 1.0:
            stream.uncond = model.encode_prompt([""] * len(prompts))
            stream.cfg_scale = settings.cfg_scale
    return stream


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def generate_fakes(
    audio_model: BaseModel,
    video_model: BaseModel,
    n: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    shard_size: int = 256,
    num_inference_steps: int = 50,
    scheduler: str = "default",
    prompts: Sequence[str] | None = None,
    cfg_scale: float = 1.0,
    batch_size: int | None = None,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample ``n`` independent pairs into ``out_dir`` (resumable); returns the manifest.

    ``prompts`` (optional) are captions, one per pair (cycled if shorter than ``n``); each
    pair's two base models are conditioned on its caption, and the captions are stored with
    the latents. Re-running with the same inputs skips shards that are complete and intact;
    other inputs (settings or base models) are refused rather than mixed into one cache.
    Under ``torch.distributed`` each process samples its own shards (see
    :mod:`mmdisco.shards`).
    """
    check_int("n", n, 1)
    check_int("shard_size", shard_size, 1)
    check_int("seed", seed, 0)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    settings = SampleSettings(num_inference_steps, scheduler, cfg_scale=cfg_scale)
    if prompts is not None and len(prompts) == 0:
        raise InputError("is empty; pass None for unconditional generation", "prompts")
    pair_bytes = 4 * sum(math.prod(m.latent_shape()) for m in (audio_model, video_model))
    check_memory(2 * min(shard_size, n) * pair_bytes, "shard_size")  # a shard, and its noise
    out_dir = Path(out_dir)
    captions = None if prompts is None else [prompts[i % len(prompts)] for i in range(n)]
    fingerprint = {
        "seed": seed,
        "shard_size": shard_size,
        "num_inference_steps": num_inference_steps,
        "scheduler": scheduler,
        "cfg_scale": cfg_scale,
        "prompts": None if prompts is None else list(prompts),
        "audio_model": audio_model.fingerprint(),
        "video_model": video_model.fingerprint(),
        **(extra_config or {}),
    }

    def make_shard(index: int, start: int, count: int) -> tuple[dict, dict | None]:
        shard_captions = None if captions is None else captions[start : start + count]
        audio, video = sample_pairs(
            audio_model,
            video_model,
            count,
            derive_seed(seed, index),
            settings=settings,
            batch_size=batch_size or count,
            prompts=shard_captions,
        )
        metadata = {"captions": json.dumps(shard_captions)} if shard_captions else None
        return {"audio": audio, "video": video}, metadata

    return write_counted_shards(
        out_dir, CACHE_FORMAT, fingerprint, n, shard_size, make_shard, "fakes", progress
    )


@dataclass
class FakeCache:
    audio: Tensor
    video: Tensor
    captions: list[str] | None
    manifest: dict[str, Any]


def load_fakes(out_dir: str | Path, verify: bool = True) -> FakeCache:
    """Read a complete cache written by :func:`generate_fakes` (checking sha256 by default)."""
    hint = "run `mmdisco generate-fakes` (same settings)"
    shards = read_shards(out_dir, CACHE_FORMAT, hint, verify)
    for key in ("audio", "video"):
        if key not in shards.tensors:
            raise InputError(f"the shards hold no {key!r} tensor", str(out_dir))
    captions = [c for meta in shards.metadata for c in json.loads(meta.get("captions", "[]"))]
    audio, video = shards.tensors["audio"], shards.tensors["video"]
    return FakeCache(audio, video, captions or None, shards.manifest)
