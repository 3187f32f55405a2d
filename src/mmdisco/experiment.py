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

The heavy lifting is the library's: :func:`~mmdisco.training.fakes.generate_fakes`,
:func:`~mmdisco.training.trainer.train_discriminator` and
:func:`~mmdisco.sampling.joint_sample`. This module only wires the config into them.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel, PromptEmbeds
from mmdisco.config import BaseModelConfig, ConfigError, ExperimentConfig, SamplingConfig
from mmdisco.diffusion import DiscreteSchedule, NoiseSchedule
from mmdisco.media import write_mp4
from mmdisco.sampling import GuidanceOptions, Stream, joint_sample
from mmdisco.training.fakes import derive_seed

DISCRIMINATOR_DIR = "discriminator"
SAMPLES_DIR = "samples"
TEXT_KEYS = ("text_audio", "text_video")
# Sample rates an AAC track can carry; other rates are resampled to 16 kHz for the mp4.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


# --------------------------------------------------------------------------------------------
# Base models as the config uses them
# --------------------------------------------------------------------------------------------


def make_sampler(model: BaseModel, cfg: ExperimentConfig) -> Any:
    """The configured sampler (``sampling.scheduler``) for ``model``: :func:`scheduler_for`."""
    return scheduler_for(model, cfg.sampling)


def scheduler_for(model: BaseModel, s: SamplingConfig) -> Any:
    """The sampler ``s.scheduler`` for a discrete-time model.

    Models with their own continuous-time path (Stable Audio's cosine v-prediction, LTX's
    flow matching) keep the scheduler their pipeline uses; so does ``scheduler: default``.
    """
    import diffusers

    if s.scheduler == "default" or not isinstance(model.schedule, DiscreteSchedule):
        return model.make_scheduler()
    cls = getattr(diffusers, s.scheduler, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(f"sampling.scheduler: no diffusers scheduler named {s.scheduler!r}")
    # Only the options the class understands: DDIM has no solver order, DDPM no algorithm.
    accepted = set(inspect.signature(cls.__init__).parameters)
    options = {"solver_order": s.solver_order, "algorithm_type": s.algorithm_type}
    return model.make_scheduler(cls, **{k: v for k, v in options.items() if k in accepted})


def prompt_pair(model: BaseModel, prompts: list[str]) -> tuple[Any, Any]:
    """Conditional and unconditional inputs, as the model's own pipeline builds them."""
    pair = getattr(model, "encode_prompt_pair", None)
    if pair is not None:
        return pair(prompts)
    return model.encode_prompt(prompts), model.encode_prompt([""] * len(prompts))


def repeat_cond(cond: Any, n: int) -> Any:
    """One prompt's conditioning repeated to a batch of ``n``."""
    if isinstance(cond, PromptEmbeds):
        fields = {
            f.name: getattr(cond, f.name) for f in dataclasses.fields(cond) if f.name != "extra"
        }
        out = {k: None if v is None else _repeat(v, n) for k, v in fields.items()}
        return PromptEmbeds(**out, extra={k: _repeat(v, n) for k, v in cond.extra.items()})
    if torch.is_tensor(cond):
        return _repeat(cond, n)
    raise TypeError(f"cannot repeat conditioning of type {type(cond).__name__}")


def _repeat(x: Tensor, n: int) -> Tensor:
    return x.repeat(n, *([1] * (x.ndim - 1))) if x.shape[0] == 1 else x


class ConfiguredModel(BaseModel):
    """A frozen base model as the experiment drives it.

    ``encode_prompt`` returns the ``(cond, uncond)`` pair and ``predict`` applies this
    model's own classifier-free guidance scale, so code that knows one prompt and one CFG
    scale (the fake generator) samples each model with its own scale; the trainer's L_DLSM
    sees the same captioned, guided prediction. With ``cond=None``, ``predict`` is the
    unconditional (empty prompt) prediction. ``make_scheduler()`` gives the configured sampler.
    """

    def __init__(self, model: BaseModel, cfg_scale: float, sampler: Any = None) -> None:
        self.model, self.cfg_scale, self._sampler = model, float(cfg_scale), sampler
        self.modality = model.modality
        self.scheduler_config = model.scheduler_config
        self._empty: Any = None

    @property
    def prediction_type(self) -> str:
        return self.model.prediction_type

    @property
    def schedule(self) -> NoiseSchedule:
        return self.model.schedule

    @property
    def device(self) -> torch.device:
        return self.model.device

    def latent_shape(self) -> tuple[int, ...]:
        return self.model.latent_shape()

    def make_scheduler(self, cls: Any = None, **overrides: Any) -> Any:
        if cls is None and not overrides and self._sampler is not None:
            return self._sampler()
        return self.model.make_scheduler(cls, **overrides)

    def to(self, device: torch.device | str) -> ConfiguredModel:
        self.model.to(device)
        return self

    def modules(self) -> dict[str, Any]:
        return self.model.modules() if hasattr(self.model, "modules") else {}

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.model.encode(media, generator)

    def decode(self, latents: Tensor) -> Tensor:
        return self.model.decode(latents)

    def encode_prompt(self, prompts: list[str]) -> tuple[Any, Any]:
        return prompt_pair(self.model, list(prompts))

    def pooled_text_embedding(self, cond: Any) -> Tensor | None:
        return self.model.pooled_text_embedding(cond[0])

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            if self._empty is None:
                self._empty = self.model.encode_prompt([""])
            return self.model.predict(x_t, t, repeat_cond(self._empty, x_t.shape[0]))
        cond, uncond = cond
        out = self.model.predict(x_t, t, cond)
        if self.cfg_scale == 1.0:
            return out
        out_uncond = self.model.predict(x_t, t, uncond)
        return out_uncond + self.cfg_scale * (out - out_uncond)


def load_models(cfg: ExperimentConfig, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Both base models (:func:`load_model`), then checked together: their samplers must
    agree on the number of steps (:func:`check_sampler_steps`)."""
    audio, video = load_model(cfg.audio, "audio", device), load_model(cfg.video, "video", device)
    check_sampler_steps(cfg, audio, video)
    return audio, video


def load_model(spec: BaseModelConfig, name: str, device: str | torch.device = "cpu") -> Any:
    """One base model as ``spec`` describes it, moved to ``device`` and run for one denoiser
    step there (:func:`check_compute`); a failure's message starts with ``name``."""
    from mmdisco.base_models import load_base_model

    kwargs = dict(spec.options)
    if spec.torch_dtype:
        kwargs["torch_dtype"] = getattr(torch, spec.torch_dtype)
    try:
        model = load_base_model(
            spec.adapter, spec.path, allow_bin_weights=spec.allow_bin_weights, **kwargs
        )
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"{name}: cannot load adapter {spec.adapter!r} from {spec.path!r} with options "
            f"{sorted(spec.options)}: {err}"
        ) from err
    model = model.to(device)
    check_compute(name, spec, model)
    return model


def check_compute(name: str, spec: BaseModelConfig, model: BaseModel) -> None:
    """One denoiser call (batch 1, empty prompt, first sampling timestep) in the model's
    configured dtype and device, so that a dtype the device cannot run, or weights of mixed
    dtypes, fail at load with the model and dtype named, not hours into a run."""
    dtype = spec.torch_dtype or "float32"
    where = f"{name} ({spec.adapter} from {spec.path!r}, torch_dtype {dtype}, on {model.device})"
    try:
        cond = model.encode_prompt([""])
    except NotImplementedError:  # an unconditional model
        cond = None
    try:
        with torch.no_grad():
            scheduler = model.make_scheduler()
            scheduler.set_timesteps(1)
            x = torch.zeros(1, *model.latent_shape(), device=model.device)
            out = model.predict(x, scheduler.timesteps[0], cond)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        raise ConfigError(f"{where}: one denoiser step failed: {err}") from err
    if out.dtype != torch.float32 or not torch.isfinite(out).all():
        raise ConfigError(f"{where}: one denoiser step gave non-finite or non-float32 output")


def check_sampler_steps(cfg: ExperimentConfig, audio: BaseModel, video: BaseModel) -> None:
    """Joint sampling steps both schedulers in lockstep: they must take the same steps."""
    n = cfg.sampling.num_inference_steps
    counts = []
    for model in (audio, video):
        scheduler = make_sampler(model, cfg)
        scheduler.set_timesteps(n)
        counts.append((type(scheduler).__name__, len(scheduler.timesteps)))
    if counts[0][1] != counts[1][1]:
        (a_name, a_n), (v_name, v_n) = counts
        raise ConfigError(
            f"sampling.scheduler: for num_inference_steps={n} the audio model's {a_name} takes "
            f"{a_n} steps and the video model's {v_name} {v_n}; joint sampling steps both "
            "together, so name one scheduler for both (e.g. DDPMScheduler or "
            "DPMSolverMultistepScheduler) instead of 'default'"
        )


def configured(
    cfg: ExperimentConfig,
    audio: BaseModel,
    video: BaseModel,
    cfg_scales: tuple[float, float] | None = None,
) -> tuple[Any, Any]:
    """Both models with their CFG scales (the config's unless ``cfg_scales`` are given)."""
    scales = cfg_scales or (cfg.audio.cfg_scale, cfg.video.cfg_scale)
    return tuple(
        ConfiguredModel(m, scale, lambda m=m: make_sampler(m, cfg))
        for m, scale in zip((audio, video), scales, strict=True)
    )


def fake_cfg_scales(cfg: ExperimentConfig, manifest: dict[str, Any]) -> tuple[float, float]:
    """The CFG scales the fakes were sampled with (recorded in their manifest); a warning
    names them when the config now says otherwise, since L_DLSM must use the fakes'."""
    recorded = manifest.get("config", {})
    scales = (
        float(recorded.get("cfg_scale_audio", cfg.audio.cfg_scale)),
        float(recorded.get("cfg_scale_video", cfg.video.cfg_scale)),
    )
    if scales != (cfg.audio.cfg_scale, cfg.video.cfg_scale):
        import warnings

        warnings.warn(
            f"the fakes in {cfg.fakes.out_dir} were sampled with CFG scales {scales} (audio, "
            f"video) but the config now says {(cfg.audio.cfg_scale, cfg.video.cfg_scale)}; "
            "L_DLSM uses the fakes' scales so that both loss terms aim at the same ratio",
            stacklevel=2,
        )
    return scales


def _model_summary(spec: BaseModelConfig) -> dict[str, Any]:
    return {"adapter": spec.adapter, "path": spec.path, "options": spec.options}


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
    for name in ("height", "width"):
        size = getattr(video, name, None)
        if size is not None and size != spec.size:
            raise ConfigError(f"data.size is {spec.size} but video.options.{name} is {size}")


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


def generate_fakes_from_config(
    cfg: ExperimentConfig, device: str | torch.device = "cpu", progress: bool = True
) -> dict[str, Any]:
    """``fakes.num_samples`` independent pairs into ``fakes.out_dir``, captions cycled from
    the real cache, each model with its own CFG scale and the configured sampler."""
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
        prompts=real_captions(cfg),
        batch_size=cfg.fakes.batch_size,
        progress=progress,
        extra_config={
            "audio": _model_summary(cfg.audio),
            "video": _model_summary(cfg.video),
            "cfg_scale_audio": cfg.audio.cfg_scale,
            "cfg_scale_video": cfg.video.cfg_scale,
            "sampler": [cfg.sampling.scheduler, cfg.sampling.solver_order],
        },
    )


# --------------------------------------------------------------------------------------------
# 3. Training
# --------------------------------------------------------------------------------------------


def discriminator_config(cfg: ExperimentConfig, audio: BaseModel, video: BaseModel) -> Any:
    """``cfg.discriminator_config()`` checked against the latents; caption dropout from
    ``data.caption_dropout`` unless the discriminator section sets ``text_drop_prob``."""
    dcfg = cfg.discriminator_config()
    if "text_drop_prob" not in cfg.discriminator and (dcfg.text_dim_audio or dcfg.text_dim_video):
        dcfg = dcfg.replace(text_drop_prob=cfg.data.caption_dropout)
    a_shape, v_shape = audio.latent_shape(), video.latent_shape()
    kind = "1d" if len(a_shape) == 2 else "2d"
    checks = (
        ("audio_channels", dcfg.audio_channels, a_shape[0], "audio latents"),
        ("audio_kind", dcfg.audio_kind, kind, "audio latents"),
        ("video_channels", dcfg.video_channels, v_shape[0], "video latents"),
    )
    for name, got, want, what in checks:
        if got != want:
            shape = a_shape if name.startswith("audio") else v_shape
            raise ConfigError(f"discriminator.{name} is {got!r} but {what} {shape} need {want!r}")
    return dcfg


def _text_inputs(dcfg: Any, available: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    """The pooled text embeddings this discriminator takes, checked against its widths."""
    out = {}
    for key, dim in zip(TEXT_KEYS, (dcfg.text_dim_audio, dcfg.text_dim_video), strict=True):
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


def train_from_config(
    cfg: ExperimentConfig, progress: bool = True, stop_after: int | None = None
) -> Any:
    """Train the discriminator on the cached real latents vs the fakes; it is saved to
    ``output_dir/discriminator`` (checkpoints and logs under ``output_dir``)."""
    from accelerate import Accelerator

    from mmdisco.data import load_latent_cache
    from mmdisco.discriminator import Discriminator
    from mmdisco.training.data import PairData
    from mmdisco.training.fakes import load_fakes
    from mmdisco.training.trainer import train_discriminator

    train_cfg = cfg.train_config()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    audio, video = load_models(cfg, accelerator.device)
    dcfg = discriminator_config(cfg, audio, video)
    real_cache = load_latent_cache(cfg.data.cache_dir)
    real = PairData(
        real_cache.audio,
        real_cache.video,
        _text_inputs(dcfg, real_cache.cond, f"the latent cache {cfg.data.cache_dir}"),
        captions=real_cache.captions,
    )
    fakes = load_fakes(cfg.fakes.out_dir)
    fake_text: dict[str, Tensor] = {}
    if dcfg.text_dim_audio or dcfg.text_dim_video:
        if fakes.captions is None:
            raise ConfigError(
                f"discriminator takes text but the fakes in {cfg.fakes.out_dir} have no captions"
            )
        fake_text = pooled_embeddings(audio, video, fakes.captions, cfg.data.batch_size)
    fake = PairData(fakes.audio, fakes.video, _text_inputs(dcfg, fake_text, "the fakes"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_cfg.seed)  # the initial weights are a function of the seed
        disc = Discriminator(dcfg)
    # L_DLSM corrects each base model's captioned, CFG-guided prediction: the one the fakes
    # were sampled with.
    scales = fake_cfg_scales(cfg, fakes.manifest)
    wrapped = configured(cfg, audio, video, scales)
    out = Path(cfg.output_dir)
    result = train_discriminator(
        disc,
        *wrapped,
        real,
        fake,
        train_cfg,
        out,
        accelerator=accelerator,
        progress=progress,
        stop_after=stop_after,
        fake_cfg_scales=scales,
    )
    if accelerator.is_main_process:
        disc.save_pretrained(out / DISCRIMINATOR_DIR)
    return result


def estimate_training_memory(
    cfg: ExperimentConfig,
    processes: int = 1,
    micro_batch: int | None = None,
    models: tuple[BaseModel, BaseModel, tuple[Any, Any]] | None = None,
) -> Any:
    """Peak memory per device of one training step of ``cfg`` (``processes`` data-parallel
    processes), measured on the meta device: nothing is computed or allocated but the base
    models' weights, which are loaded (on the CPU) to learn their sizes and then moved to
    meta. ``micro_batch`` overrides the per-process micro-batch (``train.grad_accum`` adapts).
    ``models`` reuses what :func:`memory_models` returned (for several estimates).

    bfloat16 autocast cannot run on the meta device; its steps are estimated in float32,
    which bounds them from above (``MemoryEstimate.exact`` is then False).
    """
    from mmdisco.discriminator import Discriminator
    from mmdisco.training.memory import estimate_step_memory

    audio, video, conds = models or memory_models(cfg)
    train_cfg = cfg.train_config()
    local = train_cfg.batch_size // processes
    micro = micro_batch or local // train_cfg.grad_accum
    if micro < 1 or local % micro:
        raise ConfigError(
            f"train.batch_size {train_cfg.batch_size} over {processes} processes gives "
            f"{local} pairs per process, which micro-batches of {micro} do not divide"
        )
    dcfg = discriminator_config(cfg, audio, video)
    with torch.device("meta"):
        disc = Discriminator(dcfg)
    text_dims = {
        k: d
        for k, d in zip(TEXT_KEYS, (dcfg.text_dim_audio, dcfg.text_dim_video), strict=True)
        if d
    }
    step_cfg = dataclasses.replace(train_cfg, batch_size=micro, grad_accum=1, mixed_precision="no")
    estimate = estimate_step_memory(disc, audio, video, step_cfg, text_dims, conds)
    estimate.grad_accum = local // micro
    estimate.exact = train_cfg.mixed_precision == "no"
    return estimate


def memory_models(cfg: ExperimentConfig) -> tuple[Any, Any, tuple[Any, Any]]:
    """The configured base models (as training uses them) and one caption's conditioning
    for each, encoded on the CPU before any estimate moves the models to the meta device."""
    from mmdisco.training.memory import prompt_conditioning

    audio, video = configured(cfg, *load_models(cfg))
    return audio, video, prompt_conditioning((audio, video))


def dry_run_report(
    cfg: ExperimentConfig, processes: int = 1, memory_gib: float | None = None
) -> str:
    """What ``mmdisco train --dry-run`` prints: the configured step's memory per device and,
    given a budget, the largest micro-batch that fits (accumulating to the same batch)."""
    from mmdisco.training.memory import GIB

    train_cfg = cfg.train_config()
    models = memory_models(cfg)
    estimate = estimate_training_memory(cfg, processes, None, models)
    local = train_cfg.batch_size // processes
    lines = [
        f"{cfg.name}: batch {train_cfg.batch_size} on {processes} process(es) = "
        f"{estimate.grad_accum} micro-batch(es) of {estimate.batch} per device; "
        f"gradient_checkpointing {train_cfg.gradient_checkpointing}, "
        f"mixed_precision {train_cfg.mixed_precision}",
        "",
        estimate.table(),
        "",
        "Live tensor bytes, measured on the meta device (a CPU step measured 1.05-1.12x this "
        "in peak RSS); on a GPU add the CUDA context (~0.5 GiB) and allocator fragmentation.",
    ]
    if not estimate.exact:
        lines.append("bf16 autocast cannot run on the meta device: figures are float32's.")
    if memory_gib is not None:
        # Peak memory is affine in the micro-batch: two points give the line.
        second = next((m for m in range(2, local + 1) if local % m == 0), 1)
        one = estimate_training_memory(cfg, processes, 1, models)
        two = estimate_training_memory(cfg, processes, second, models)
        slope = (two.peak - one.peak) // max(second - 1, 1)
        fits = [
            m
            for m in range(1, local + 1)
            if local % m == 0 and one.peak + (m - 1) * slope <= memory_gib * GIB
        ]
        if fits:
            m = max(fits)
            lines.append(
                f"Within {memory_gib:g} GiB: micro-batches of {m} (train.grad_accum: "
                f"{local // m}), about {(one.peak + (m - 1) * slope) / GIB:.1f} GiB; each "
                f"further pair costs {slope / GIB:.2f} GiB."
            )
        else:
            lines.append(f"Even one pair per micro-batch needs {one.peak / GIB:.1f} GiB.")
    return "\n".join(lines)


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


def disc_config_of(disc: Any) -> Any:
    """The DiscriminatorConfig of a discriminator or of the one a wrapper holds (or None)."""
    return getattr(disc, "config", None) or getattr(getattr(disc, "disc", None), "config", None)


def _stream(
    model: BaseModel,
    modality: str,
    cfg: ExperimentConfig,
    prompts: list[str],
    seed: int,
    disc_config: Any,
    from_hidden_states: bool = False,
) -> Stream:
    """One modality's stream: its prompt pair and CFG scale, the configured sampler, its
    joint-guidance scale and, if the discriminator takes text, the captions' pooled embedding."""
    spec: BaseModelConfig = getattr(cfg, modality)
    cond, uncond = prompt_pair(model, prompts)
    text, text_uncond = discriminator_texts(disc_config, from_hidden_states, model, modality,
                                            cond, uncond)  # fmt: skip
    return Stream(
        model=model,
        scheduler=make_sampler(model, cfg),
        cond=cond,
        uncond=uncond,
        cfg_scale=spec.cfg_scale,
        guidance_scale=getattr(cfg.sampling, f"guidance_scale_{modality}"),
        generator=torch.Generator(model.device).manual_seed(seed),
        disc_text=text,
        disc_text_uncond=text_uncond,
    )


def discriminator_texts(
    disc_config: Any,
    from_hidden_states: bool,
    model: BaseModel,
    modality: str,
    cond: Any,
    uncond: Any,
) -> tuple[Tensor | None, Tensor | None]:
    """The discriminator's text inputs for one modality, conditional and unconditional.

    mmdisco's discriminators take the pooled embedding and use their learned null for the
    unconditional branch (None). The release's (``from_hidden_states``) averages the
    denoiser's text tokens and has no null: it gets the empty prompt's tokens.
    """
    if getattr(disc_config, f"text_dim_{modality}", None) is None:
        return None, None
    if from_hidden_states:
        return cond.hidden_states.float(), uncond.hidden_states.float()
    return model.pooled_text_embedding(cond), None


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


def mono(audio: Tensor) -> Tensor:
    """``(B, L)`` from ``(B, L)`` or multi-channel ``(B, C, L)`` waveforms."""
    return audio.float().mean(dim=1) if audio.ndim == 3 else audio.float()


def for_aac(audio: Tensor, rate: int) -> tuple[Tensor, int]:
    """A waveform at a rate an AAC track can carry (16 kHz when ``rate`` is not one)."""
    if rate in AAC_RATES:
        return audio, rate
    from mmdisco.media import resample_audio

    return torch.from_numpy(resample_audio(audio.cpu().numpy(), rate, 16000)), 16000


def sample_from_config(
    cfg: ExperimentConfig,
    prompts: list[str] | None = None,
    out_dir: str | Path | None = None,
    discriminator: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    given: tuple[str, list[Path]] | None = None,
    given_mode: str = "clean",
) -> dict[str, SampleRun]:
    """Joint samples with the trained discriminator ("guided") and without it
    ("independent") from the same seeds; writes ``{variant}-{i:03d}.mp4`` with sound.

    ``prompts`` default to the first ``sampling.batch_size`` captions of the real cache.
    ``given = (modality, files)``: conditional generation of the other modality for each
    file (checked by :func:`mmdisco.media.load_given`), one prompt per file (default: the
    empty prompt); the files' clips enter the discriminator as ``given_mode`` says.
    """
    from mmdisco.discriminator import load_discriminator
    from mmdisco.media import load_given, media_spec

    s = cfg.sampling
    audio, video = load_models(cfg, device)
    given_latents = None
    if given is not None:
        modality, files = given
        if prompts and len(prompts) != len(files):
            raise ConfigError(f"{len(prompts)} prompts for {len(files)} given {modality} files")
        prompts = list(prompts or [""] * len(files))
        model = audio if modality == "audio" else video
        media = load_given(files, modality, media_spec(audio, video))  # refuses naming the file
        with torch.no_grad():
            given_latents = torch.cat(
                [model.encode(x.to(device)) for x in media.split(s.batch_size)]
            )
    disc_dir = Path(discriminator or Path(cfg.output_dir) / DISCRIMINATOR_DIR)
    disc = load_discriminator(disc_dir, str(device)).eval()
    dcfg = disc_config_of(disc)
    from_hidden_states = bool(getattr(disc, "text_from_hidden_states", False))
    if from_hidden_states:
        check_release_schedule(disc, audio, disc_dir)
    prompts = list(prompts or real_captions(cfg)[: s.batch_size])
    out = Path(out_dir or Path(cfg.output_dir) / SAMPLES_DIR)
    options = GuidanceOptions(window=s.window, cfg_on_discriminator=s.cfg_on_discriminator)
    runs = {}
    for variant, d in (("independent", None), ("guided", disc)):
        parts = []
        for b, lo in enumerate(range(0, len(prompts), s.batch_size)):
            batch = prompts[lo : lo + s.batch_size]
            streams = [
                _stream(
                    model,
                    modality,
                    cfg,
                    batch,
                    derive_seed(s.seed, b, k),
                    dcfg,
                    from_hidden_states,
                )
                for k, (model, modality) in enumerate(((audio, "audio"), (video, "video")))
            ]
            if given is not None:
                held = streams[0 if given[0] == "audio" else 1]
                held.latents = given_latents[lo : lo + s.batch_size]
                held.given = given_mode
            parts.append(
                joint_sample(
                    *streams,
                    d,
                    batch_size=len(batch),
                    num_inference_steps=s.num_inference_steps,
                    options=options,
                    progress=progress,
                )
            )
        a, v = (torch.cat(x) for x in zip(*parts, strict=True))
        runs[variant] = _write(out, variant, audio, video, a, v)
    return runs


def _write(out: Path, variant: str, audio: Any, video: Any, a: Tensor, v: Tensor) -> SampleRun:
    """Decode through each adapter and write one mp4 (frames at ``fps``, AAC sound) per pair."""
    with torch.no_grad():
        wave = mono(audio.decode(a)).cpu()
        frames = video.decode(v).float().cpu()
    rate, fps = int(audio.sample_rate), float(video.fps)
    wave_out, rate_out = for_aac(wave, rate)
    paths = [
        write_mp4(out / f"{variant}-{i:03d}.mp4", frames[i], fps, wave_out[i], rate_out)
        for i in range(frames.shape[0])
    ]
    return SampleRun(a.cpu(), v.cpu(), wave, frames, rate, fps, paths)
