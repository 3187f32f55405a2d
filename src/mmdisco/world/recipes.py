"""The world's recipes: which clips are real, how its MMDisCo discriminator is trained and
guided. The demo (:mod:`mmdisco.demo`), the systems comparison
(:mod:`mmdisco.world.systems`), the CLI and the benchmarks all compose these.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmdisco.discriminator.composite import PooledDiscriminator
from mmdisco.errors import check_int
from mmdisco.training.data import PairData, encode_pairs
from mmdisco.training.trainer import TrainConfig, TrainResult, train_discriminator

# World clips for the demo and the comparisons stay clear of the base models' data.
REAL_SEED_OFFSET = 50_000  # real pairs the discriminator trains on
HELD_OUT_SEED_OFFSET = 60_000  # held-out real pairs (calibration, the "real" row)
EVAL_SEED_OFFSET = 70_000  # sampling seeds of the comparison
# The scales of the theory (docs/method.md): with a discriminator that is the density ratio,
# scale 1 on both modalities samples the joint; guided over the whole noise range.
GUIDANCE_SCALES = (1.0, 1.0)
GUIDANCE_WINDOW = (0.0, 1.0)


def codebook_train_config() -> TrainConfig:
    """How the world's codebook discriminator is trained (L_D + L_DLSM from a bank)."""
    return TrainConfig(
        steps=200,
        batch_size=128,
        lr=2e-3,
        lr_schedule="cosine",
        # L_DLSM is a mean over elements, L_D over samples: weight ~ elements per audio
        # sample (2048) balances them, as the paper's per-sample squared norm does.
        dlsm_weight=2048.0,
        dlsm_batch_size=16,
        fake_pairing="shuffle",
        noise_range=(0.6, 1.0),
        checkpoint_every=100,
        log_every=20,
    )


def quick_codebook_train_config() -> TrainConfig:
    """:func:`codebook_train_config` in a few steps: the pipeline, not the results."""
    return dataclasses.replace(
        codebook_train_config(),
        **{"steps": 4, "batch_size": 8, "lr": 1e-3, "lr_schedule": "constant"},
        **{"dlsm_batch_size": 4, "checkpoint_every": 2, "log_every": 2},
    )


@dataclass
class CodebookRecipe:
    """The world's discriminator: one :class:`~mmdisco.discriminator.codebook.
    CodebookDiscriminator`, anchors by k-means of real and fake clips, coupling counted from
    the real pairs, then trained with ``train`` (L_D + L_DLSM, L_DLSM read from a bank of
    ``bank_noisings`` noisings per real pair)."""

    codes: int = 320
    video_pool: int = 1
    bank_noisings: int = 2
    train: TrainConfig = field(default_factory=codebook_train_config)
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> CodebookRecipe:
        return cls(codes=8, bank_noisings=1, train=quick_codebook_train_config(), seed=seed)


def world_real_pairs(audio_model: Any, video_model: Any, n: int, seed: int) -> PairData:
    """``n`` real world clips encoded into the base models' spaces."""
    from mmdisco.world.generator import generate_clips

    clips = generate_clips(n, seed=seed)
    return encode_pairs(audio_model, video_model, clips.audio, clips.video)


def training_summary(disc: nn.Module, result: TrainResult) -> dict[str, Any]:
    """What a report says about a training run: time, size, last statistics."""
    last = result.history[-1] if result.history else {}
    return {
        "seconds": round(result.seconds, 2),
        "resumed_from_step": result.start_step,
        "parameters": sum(p.numel() for p in disc.parameters()),
        "final_accuracy": round(last.get("accuracy", float("nan")), 4),
        "final_loss_d": round(last.get("loss_d", float("nan")), 4),
        "final_loss_dlsm": round(last.get("loss_dlsm", float("nan")), 4),
    }


def train_codebook(
    out: Path,
    audio_model: Any,
    video_model: Any,
    real: PairData,
    fake: PairData,
    recipe: CodebookRecipe,
    *,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """The world's discriminator (:class:`CodebookRecipe`): anchors, coupling, then
    L_D + L_DLSM from a noise bank. Saved to ``out/disc_codebook/discriminator``; returns it
    and a training summary."""
    from mmdisco.discriminator.codebook import CodebookConfig, CodebookDiscriminator
    from mmdisco.training.bank import build_noise_bank, load_noise_bank

    start = time.perf_counter()
    train = recipe.train
    config = CodebookConfig(
        audio_model.latent_shape(),
        video_model.latent_shape(),
        recipe.codes,
        recipe.codes,
        video_pool=recipe.video_pool,
    )
    both_audio, both_video = (
        torch.cat([real.audio, fake.audio]),
        torch.cat([real.video, fake.video]),
    )
    disc = CodebookDiscriminator.from_samples(config, both_audio, both_video, seed=recipe.seed)
    disc.couple(real.audio, real.video)
    init = time.perf_counter()
    bank = None
    if train.use_dlsm:
        build_noise_bank(
            audio_model,
            video_model,
            real,
            out / "dlsm_bank",
            noisings=recipe.bank_noisings,
            noise_range=tuple(train.noise_range),
            seed=recipe.seed,
            progress=progress,
        )
        bank = load_noise_bank(out / "dlsm_bank")
    banked = time.perf_counter()
    run_dir = out / "disc_codebook"
    result = train_discriminator(
        disc, audio_model, video_model, real, fake, train, run_dir, progress=progress, bank=bank
    )
    disc.eval()
    disc.save_pretrained(run_dir / "discriminator")
    summary = training_summary(disc, result)
    summary["init_seconds"] = round(init - start, 2)
    summary["bank_seconds"] = round(banked - init, 2)
    return disc, summary


def build_discriminator(
    head: str,
    audio_shape: tuple[int, ...],
    video_shape: tuple[int, ...],
    seed: int = 0,
    video_pool: int = 1,
    audio_pool: int = 1,
    **kw: Any,
) -> nn.Module:
    """A small :class:`mmdisco.discriminator.Discriminator` for latents of the given shapes,
    with fusion head ``head``; ``kw`` overrides :meth:`DiscriminatorConfig.for_shapes`."""
    from mmdisco.discriminator import Discriminator, DiscriminatorConfig

    check_int("video_pool", video_pool, 1)
    check_int("audio_pool", audio_pool, 1)
    c, f, h, w = video_shape
    pooled_video = (c, f, h // video_pool, w // video_pool)
    pooled_audio = (*audio_shape[:-1], audio_shape[-1] // audio_pool)
    config = DiscriminatorConfig.for_shapes(pooled_audio, pooled_video, fusion=head, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        disc = Discriminator(config)
    if video_pool == audio_pool == 1:
        return disc
    return PooledDiscriminator(disc, video_pool, audio_pool)
