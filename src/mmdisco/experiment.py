"""Running an :class:`~mmdisco.config.ExperimentConfig` end to end: real base models, real data.

The four stages of the paper's out-of-domain setting, each a function of the YAML config
(and each behind an ``mmdisco ... --config PATH.yaml`` command):

1. :func:`cache_real_latents`: real clips (folder or manifest) through both base models'
   ``encode`` into a latent cache, with each caption's pooled text embeddings.
2. :func:`generate_fakes_from_config`: pairs sampled *independently* by the two frozen base
   models, each conditioned on a real caption with its own CFG scale.
3. :func:`train_from_config`: the discriminator on cached real latents vs the fakes; captions
   reach it as ``text_audio`` / ``text_video`` and are dropped (replaced by its learned null
   embedding) for ``data.caption_dropout`` of the pairs at every step.
4. :func:`sample_from_config`: joint sampling with and without the discriminator from the same
   seeds, decoded through each adapter and written as mp4 files with sound.

The heavy lifting is the library's: :mod:`mmdisco.base_models.loading` (models as the config
names them), :func:`~mmdisco.training.fakes.generate_fakes`,
:func:`~mmdisco.training.trainer.train_discriminator` and
:func:`~mmdisco.sampling.sample_batches`. This module only wires the config into them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.base_models.loading import configured, load_models
from mmdisco.config import ExperimentConfig
from mmdisco.data.cache import TEXT_KEYS
from mmdisco.diffusion import DiscreteSchedule
from mmdisco.discriminator import build_discriminator, text_dims
from mmdisco.errors import ConfigError
from mmdisco.media import for_aac, mono, write_mp4
from mmdisco.sampling import sample_batches

DISCRIMINATOR_DIR = "discriminator"
SAMPLES_DIR = "samples"


# --------------------------------------------------------------------------------------------
# 1. Real latents
# --------------------------------------------------------------------------------------------


def check_clip_spec(cfg: ExperimentConfig, audio: BaseModel, video: BaseModel) -> None:
    """Fail early, naming the fields, when the data's clips do not fit the base models."""
    spec = cfg.clip_spec(audio)
    rate = getattr(audio, "sample_rate", None)
    if rate is not None and rate != spec.sample_rate:
        raise ConfigError(
            f"data.sample_rate is {spec.sample_rate} but the audio model runs at {rate} Hz"
        )
    seconds = getattr(audio, "duration", None)
    if seconds is not None and abs(seconds - spec.duration) > 1e-6:
        raise ConfigError(
            f"data.duration is {spec.duration} s but the audio model generates {seconds} s "
            f"(audio.options: audio_length_in_s, spectrogram.duration or audio_end_in_s)"
        )
    frames = getattr(video, "num_frames", None)
    if frames is not None and frames != spec.num_frames:
        raise ConfigError(
            f"data.duration * data.fps gives {spec.num_frames} frames but video.options."
            f"num_frames is {frames}"
        )
    frame = {"height": ("size", spec.size), "width": ("size", spec.size)}
    if spec.width is not None:
        frame["width"] = ("width", spec.width)
    for name, (field, value) in frame.items():
        size = getattr(video, name, None)
        if size is not None and size != value:
            raise ConfigError(f"data.{field} is {value} but video.options.{name} is {size}")


def cache_real_latents(
    cfg: ExperimentConfig, device: str | torch.device = "cpu", progress: bool = True
) -> dict[str, Any]:
    """Encode ``data.source`` into ``data.cache_dir`` (resumable); returns its manifest."""
    from mmdisco.data import ClipDataset, cache_latents

    audio, video = load_models(cfg, device)
    check_clip_spec(cfg, audio, video)
    dataset = ClipDataset(cfg.data.source, cfg.clip_spec(audio), seed=cfg.data.seed)
    return cache_latents(
        dataset,
        audio,
        video,
        cfg.data.cache_dir,
        shard_size=cfg.data.shard_size,
        batch_size=cfg.data.batch_size,
        progress=progress,
    )


def real_captions(cfg: ExperimentConfig) -> list[str]:
    """The captions of the cached real clips (the prompts of fakes and samples)."""
    from mmdisco.data import load_latent_cache

    try:
        return load_latent_cache(cfg.data.cache_dir, verify=False).captions
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (run `mmdisco cache-latents --config ...`)") from None


# --------------------------------------------------------------------------------------------
# 2. Fakes
# --------------------------------------------------------------------------------------------


def fake_prompts(captions: list[str], per_caption: int | None) -> list[str]:
    """The captions the fakes are sampled from, in order (``generate_fakes`` cycles them):
    the real pairs' own, or each distinct caption ``per_caption`` times in a row."""
    if per_caption is None:
        return captions
    return [caption for caption in dict.fromkeys(captions) for _ in range(per_caption)]


def generate_fakes_from_config(
    cfg: ExperimentConfig, device: str | torch.device = "cpu", progress: bool = True
) -> dict[str, Any]:
    """``fakes.num_samples`` independent pairs into ``fakes.out_dir``, captions cycled from
    the real cache (:func:`fake_prompts`), each model with its own CFG scale and the
    configured sampler."""
    from mmdisco.training.fakes import generate_fakes

    audio, video = configured(cfg, *load_models(cfg, device))
    return generate_fakes(
        audio,
        video,
        cfg.fakes.num_samples,
        cfg.fakes.out_dir,
        seed=cfg.fakes.seed,
        shard_size=cfg.data.shard_size,
        num_inference_steps=cfg.sampling.num_inference_steps,
        scheduler="default",  # ConfiguredModel.make_scheduler(): the configured sampler
        prompts=fake_prompts(real_captions(cfg), cfg.fakes.per_caption),
        batch_size=cfg.fakes.batch_size,
        progress=progress,
        extra_config={
            "audio": cfg.audio.summary(),
            "video": cfg.video.summary(),
            "cfg_scale_audio": cfg.audio.cfg_scale,
            "cfg_scale_video": cfg.video.cfg_scale,
            "sampler": [cfg.sampling.scheduler, cfg.sampling.solver_order],
        },
    )


# --------------------------------------------------------------------------------------------
# 3. Training
# --------------------------------------------------------------------------------------------


def train_from_config(
    cfg: ExperimentConfig, progress: bool = True, stop_after: int | None = None
) -> Any:
    """Train the discriminator on the cached real latents vs the fakes; it is saved to
    ``output_dir/discriminator`` (checkpoints and logs under ``output_dir``)."""
    from accelerate import Accelerator

    from mmdisco.training.fakes import load_fakes
    from mmdisco.training.trainer import train_discriminator

    train_cfg = cfg.train_config()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    audio, video = load_models(cfg, accelerator.device)
    dcfg = cfg.discriminator_config_for(audio, video)
    fakes = load_fakes(cfg.fakes.out_dir)
    real, fake = training_pairs(cfg, dcfg, audio, video, fakes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_cfg.seed)  # the initial weights are a function of the seed
        disc = build_discriminator(dcfg)
    # L_DLSM corrects each base model's captioned, CFG-guided prediction: the one the fakes
    # were sampled with.
    scales = fake_cfg_scales(cfg, fakes.manifest)
    out = Path(cfg.output_dir)
    return train_discriminator(
        disc,
        *configured(cfg, audio, video, scales),
        real,
        fake,
        train_cfg,
        out,
        accelerator=accelerator,
        progress=progress,
        stop_after=stop_after,
        fake_cfg_scales=scales,
        save_as=DISCRIMINATOR_DIR,
    )


def training_pairs(
    cfg: ExperimentConfig, dcfg: Any, audio: BaseModel, video: BaseModel, fakes: Any
) -> tuple[Any, Any]:
    """The real and fake :class:`~mmdisco.training.data.PairData`, each with the pooled text
    embeddings of its captions that the discriminator ``dcfg`` takes."""
    from mmdisco.data import load_latent_cache
    from mmdisco.training.data import PairData

    real_cache = load_latent_cache(cfg.data.cache_dir)
    real = PairData(
        real_cache.audio,
        real_cache.video,
        _text_inputs(dcfg, real_cache.cond, f"the latent cache {cfg.data.cache_dir}"),
        captions=real_cache.captions,
    )
    fake_text: dict[str, Tensor] = {}
    if any(text_dims(dcfg)):
        if fakes.captions is None:
            raise ConfigError(
                f"discriminator takes text but the fakes in {cfg.fakes.out_dir} have no captions"
            )
        fake_text = pooled_embeddings(audio, video, fakes.captions, cfg.data.batch_size)
    fake = PairData(
        fakes.audio,
        fakes.video,
        _text_inputs(dcfg, fake_text, "the fakes"),
        captions=fakes.captions,  # the contrastive objective groups fakes by caption
    )
    return real, fake


def fake_cfg_scales(cfg: ExperimentConfig, manifest: dict[str, Any]) -> tuple[float, float]:
    """The CFG scales the fakes were sampled with (recorded in their manifest's fingerprint);
    a warning names them when the config now says otherwise, since L_DLSM must use the
    fakes'."""
    recorded = manifest.get("fingerprint", {})
    scales = (
        float(recorded.get("cfg_scale_audio", cfg.audio.cfg_scale)),
        float(recorded.get("cfg_scale_video", cfg.video.cfg_scale)),
    )
    if scales != (cfg.audio.cfg_scale, cfg.video.cfg_scale):
        warnings.warn(
            f"the fakes in {cfg.fakes.out_dir} were sampled with CFG scales {scales} (audio, "
            f"video) but the config now says {(cfg.audio.cfg_scale, cfg.video.cfg_scale)}; "
            "L_DLSM uses the fakes' scales so that both loss terms aim at the same ratio",
            stacklevel=2,
        )
    return scales


def _text_inputs(dcfg: Any, available: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    """The pooled text embeddings this discriminator takes, checked against its widths."""
    out = {}
    for key, dim in zip(TEXT_KEYS, text_dims(dcfg), strict=True):
        if dim is None:
            continue
        if key not in available:
            raise ConfigError(f"discriminator.text_dim_{key[5:]} is set but {what} has no {key}")
        width = available[key].shape[-1]
        if width != dim:
            raise ConfigError(
                f"discriminator.text_dim_{key[5:]} is {dim} but the base model's pooled text "
                f"embedding has {width} dims"
            )
        out[key] = available[key]
    return out


@torch.no_grad()
def pooled_embeddings(
    audio: BaseModel, video: BaseModel, captions: list[str], batch_size: int = 64
) -> dict[str, Tensor]:
    """Each caption's pooled text embeddings: the discriminator's text inputs."""
    parts: dict[str, list[Tensor]] = {k: [] for k in TEXT_KEYS}
    for lo in range(0, len(captions), batch_size):
        chunk = captions[lo : lo + batch_size]
        for key, model in zip(TEXT_KEYS, (audio, video), strict=True):
            try:
                pooled = model.pooled_text_embedding(model.encode_prompt(chunk))
            except NotImplementedError:
                pooled = None
            if pooled is not None:
                parts[key].append(pooled.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items() if v}


# --------------------------------------------------------------------------------------------
# 4. Sampling
# --------------------------------------------------------------------------------------------


@dataclass
class SampleRun:
    """One variant ("independent" or "guided"): final latents, decoded media, written files."""

    audio_latents: Tensor
    video_latents: Tensor
    audio: Tensor  # (B, L) mono waveforms at ``sample_rate``
    video: Tensor  # (B, 3, F, H, W) frames in [-1, 1] at ``fps``
    sample_rate: int
    fps: float
    paths: list[Path]


def sample_from_config(
    cfg: ExperimentConfig,
    prompts: list[str] | None = None,
    out_dir: str | Path | None = None,
    discriminator: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    given: tuple[str, list[Path]] | None = None,
    given_mode: str = "clean",
    release_sampling: bool = True,
) -> dict[str, SampleRun]:
    """Joint samples with the trained discriminator ("guided") and without it
    ("independent") from the same seeds; writes ``{variant}-{i:03d}.mp4`` with sound.

    A released discriminator converted by ``mmdisco convert-official`` samples as the
    release does (its ``sampling.json``: joint scales, CFG on the discriminator term,
    scheduler, steps, in place of ``cfg.sampling``'s) unless ``release_sampling`` is False.

    ``prompts`` default to the first ``sampling.batch_size`` captions of the real cache.
    ``given = (modality, files)``: conditional generation of the other modality for each
    file (checked by :func:`mmdisco.media.load_given`), one prompt per file (default: the
    empty prompt); the files' clips enter the discriminator as ``given_mode`` says.
    """
    from mmdisco.discriminator import load_discriminator
    from mmdisco.discriminator.official import with_release_sampling

    audio, video = load_models(cfg, device)
    given_latents = None
    if given is not None:
        modality, files = given
        if prompts and len(prompts) != len(files):
            raise ConfigError(f"{len(prompts)} prompts for {len(files)} given {modality} files")
        prompts = list(prompts or [""] * len(files))
        given_latents = (modality, encode_given(cfg, audio, video, given))
    disc_dir = Path(discriminator or Path(cfg.output_dir) / DISCRIMINATOR_DIR)
    disc = load_discriminator(disc_dir, str(device)).eval()
    if getattr(disc, "text_from_hidden_states", False):
        check_release_schedule(disc, audio, disc_dir)
    sampling = with_release_sampling(cfg.sampling, disc_dir) if release_sampling else cfg.sampling
    prompts = list(prompts or real_captions(cfg)[: cfg.sampling.batch_size])
    out = Path(out_dir or Path(cfg.output_dir) / SAMPLES_DIR)
    runs = {}
    for variant, d in (("independent", None), ("guided", disc)):
        a, v = sample_batches(
            audio,
            video,
            len(prompts),
            sampling,
            discriminator=d,
            prompts=prompts,
            cfg_scales=(cfg.audio.cfg_scale, cfg.video.cfg_scale),
            given=given_latents,
            given_mode=given_mode,
            progress=progress,
        )
        runs[variant] = _write(out, variant, audio, video, a, v)
    return runs


def encode_given(
    cfg: ExperimentConfig, audio: BaseModel, video: BaseModel, given: tuple[str, list[Path]]
) -> Tensor:
    """The given files (checked by :func:`mmdisco.media.load_given`, which refuses a bad
    one naming it) in their base model's latent space."""
    from mmdisco.media import load_given, media_spec

    modality, files = given
    model = audio if modality == "audio" else video
    media = load_given(files, modality, media_spec(audio, video))
    with torch.no_grad():
        return torch.cat(
            [model.encode(x.to(model.device)) for x in media.split(cfg.sampling.batch_size)]
        )


def check_release_schedule(disc: Any, audio: BaseModel, where: Path) -> None:
    """The release's discriminator sees the audio model's timestep, recovered from the
    log-SNR on the schedule it was trained with: the audio model must use that schedule."""
    ours, theirs = audio.schedule, disc.schedule
    same = isinstance(ours, DiscreteSchedule) and len(ours.alphas_cumprod) == len(
        theirs.alphas_cumprod
    )
    if not same or not torch.allclose(ours.alphas_cumprod, theirs.alphas_cumprod, atol=1e-6):
        raise ConfigError(
            f"{where}: the release discriminator was trained on the noise schedule "
            f"{disc.config.schedule}, which the audio model does not use"
        )


def _write(out: Path, variant: str, audio: Any, video: Any, a: Tensor, v: Tensor) -> SampleRun:
    """Decode through each adapter and write one mp4 (frames at ``fps``, AAC sound) per pair."""
    with torch.no_grad():
        wave = mono(audio.decode(a.to(audio.device))).cpu()
        frames = video.decode(v.to(video.device)).float().cpu()
    rate, fps = int(audio.sample_rate), float(video.fps)
    wave_out, rate_out = for_aac(wave, rate)
    paths = [
        write_mp4(out / f"{variant}-{i:03d}.mp4", frames[i], fps, wave_out[i], rate_out)
        for i in range(frames.shape[0])
    ]
    return SampleRun(a, v, wave, frames, rate, fps, paths)
