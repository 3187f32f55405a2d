"""Fake pairs: independent samples of the two frozen base models, cached on disk.

MMDisCo's discriminator learns to tell real pairs from pairs the base models generate
*independently* (METHOD.md). Generating those is the expensive part of training, so it is
done once, into a cache of safetensors shards plus a JSON manifest:

    out_dir/manifest.json          config, seed, shard list (index, count, file, sha256)
    out_dir/shard-00000.safetensors  {"audio": (n, ...), "video": (n, ...)}, captions in metadata

Each shard's random numbers come from seeds derived from ``(seed, shard index)`` alone, so
the cache does not depend on how often the run was interrupted. Shards and the manifest are
written to a temporary file and moved into place with ``os.replace``; on resume a shard
counts as done only if the manifest lists it and its sha256 still matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.base_models.base import BaseModel
from mmdisco.io import save_tensors_atomic, sha256_file, write_json_atomic
from mmdisco.sampling import GuidanceOptions, Stream, joint_sample

MANIFEST_NAME = "manifest.json"
CACHE_FORMAT = "mmdisco-fakes/1"
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
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """``n`` pairs of latents, batch ``b`` drawn from seeds derived from ``(seed, b)``.

    The initial noise and the sampler noise depend only on ``seed`` and the batch index, so
    sampling the same seed with and without ``discriminator`` compares like with like.
    """
    settings = settings or SampleSettings()
    out_a, out_v = [], []
    for b, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        batch_prompts = None if prompts is None else list(prompts[start : start + m])
        streams = [
            _stream(model, settings, derive_seed(seed, b, k), batch_prompts)
            for k, model in enumerate((audio_model, video_model))
        ]
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
# The shard cache
# --------------------------------------------------------------------------------------------


def _shard_counts(n: int, shard_size: int) -> list[int]:
    return [min(shard_size, n - start) for start in range(0, n, shard_size)]


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: not an mmdisco fake cache (format {manifest.get('format')!r})")
    return manifest


def _shard_ok(out_dir: Path, entry: dict[str, Any], count: int) -> bool:
    path = out_dir / entry["file"]
    return entry["count"] == count and path.exists() and sha256_file(path) == entry["sha256"]


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
    the latents. Re-running with the same settings skips shards that are complete and intact;
    different settings are refused rather than mixed into one cache.
    """
    if n <= 0 or shard_size <= 0:
        raise ValueError(f"n and shard_size must be positive, got n={n}, shard_size={shard_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    captions = None if prompts is None else [prompts[i % len(prompts)] for i in range(n)]
    if prompts is not None and len(prompts) == 0:
        raise ValueError("prompts is empty; pass None for unconditional generation")
    config = {
        "seed": seed,
        "shard_size": shard_size,
        "num_inference_steps": num_inference_steps,
        "scheduler": scheduler,
        "cfg_scale": cfg_scale,
        "prompts": None if prompts is None else list(prompts),
        "audio_latent_shape": list(audio_model.latent_shape()),
        "video_latent_shape": list(video_model.latent_shape()),
        **(extra_config or {}),
    }
    manifest = _read_manifest(out_dir)
    if manifest is not None and manifest["config"] != config:
        raise ValueError(
            f"{out_dir / MANIFEST_NAME} was written with different settings "
            f"({manifest['config']}); use another directory or the same settings ({config})"
        )
    counts = _shard_counts(n, shard_size)
    done = {e["index"]: e for e in (manifest or {}).get("shards", [])}
    done = {i: e for i, e in done.items() if i < len(counts) and _shard_ok(out_dir, e, counts[i])}
    manifest = {"format": CACHE_FORMAT, "config": config, "n": n, "shards": []}
    settings = SampleSettings(num_inference_steps, scheduler, cfg_scale=cfg_scale)
    bar = tqdm(total=n, disable=not progress, desc="fakes", unit="pair")
    for index, count in enumerate(counts):
        if index not in done:
            start = index * shard_size
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
            path = out_dir / _shard_name(index)
            metadata = {"captions": json.dumps(shard_captions)} if shard_captions else None
            save_tensors_atomic(path, {"audio": audio, "video": video}, metadata)
            done[index] = {
                "index": index,
                "file": path.name,
                "count": count,
                "sha256": sha256_file(path),
            }
            manifest["shards"] = [done[i] for i in sorted(done)]
            write_json_atomic(out_dir / MANIFEST_NAME, manifest)
        bar.update(count)
    bar.close()
    manifest["shards"] = [done[i] for i in sorted(done)]
    manifest["complete"] = True
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    return manifest


@dataclass
class FakeCache:
    audio: Tensor
    video: Tensor
    captions: list[str] | None
    manifest: dict[str, Any]


def load_fakes(out_dir: str | Path, verify: bool = True) -> FakeCache:
    """Read a complete cache written by :func:`generate_fakes` (checking sha256 by default)."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {out_dir}: run generate-fakes first")
    if not manifest.get("complete"):
        raise ValueError(f"{out_dir} is incomplete: re-run generate-fakes to finish it")
    audio, video, captions = [], [], []
    for entry in manifest["shards"]:
        path = out_dir / entry["file"]
        if verify and sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 does not match {out_dir / MANIFEST_NAME}")
        with safe_open(path, "pt") as f:
            audio.append(f.get_tensor("audio"))
            video.append(f.get_tensor("video"))
            meta = f.metadata() or {}
        if "captions" in meta:
            captions.extend(json.loads(meta["captions"]))
    return FakeCache(torch.cat(audio), torch.cat(video), captions if captions else None, manifest)
