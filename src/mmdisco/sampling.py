"""Joint sampling: two base models stepped in lockstep by their own diffusers schedulers.

At every step each base model predicts (with classifier-free guidance when it has a
prompt), the discriminator's epsilon-space correction ``-scale * sigma * grad h`` is mapped
into the scheduler's ``prediction_type`` (a linear map, :func:`epsilon_delta_to_prediction`)
and added, and ``scheduler.step`` takes it from there. With no discriminator this is exactly
each modality's own diffusers sampling loop (tests/test_sampling.py checks DDPM, DDIM,
DPM-Solver++, UniPC and flow matching). Per step, guidance costs one discriminator forward
and one backward to its inputs (two of each with ``cfg_on_discriminator``); schedules and
scheduler-step arguments are built once per run.

Conditional generation uses the same loop: a stream with ``given`` set is not sampled. Its
``latents`` are the given clips (clean, in its model's space), which enter the discriminator
either clean (``given="clean"``: log-SNR at the clip, :class:`~mmdisco.diffusion.CleanSchedule`;
needs a discriminator trained with clean modalities, ``TrainConfig.clean_prob``) or noised
afresh at every step to the level of its own scheduler's timestep (``given="renoise"``: the
noise level the other modality has when both schedules match, as in training with shared
timesteps; draws from the stream's ``generator``). Only the free modality is corrected.

Every caller sets runs up the same way: :class:`SamplingConfig` holds the knobs (YAML
``sampling:``, the CLI, a pipeline's ``model_index.json``, fakes), :func:`build_stream`
builds one modality's stream and :func:`sample_batches` draws ``n`` pairs batch by batch
from seeds derived from ``(seed, batch)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.base_models.base import BaseModel
from mmdisco.base_models.loading import (
    SCHEDULERS,
    cfg_mix,
    cfg_scale_at,
    make_scheduler,
    prompt_pair,
)
from mmdisco.diffusion import CleanSchedule, NoiseSchedule, epsilon_delta_to_prediction
from mmdisco.errors import (
    InputError,
    check_bool,
    check_choice,
    check_float,
    check_fraction_range,
    check_int,
    check_ints,
)
from mmdisco.guidance import DiscriminatorFn, guidance_correction
from mmdisco.seeding import derive_seed

GIVEN_MODES = ("clean", "renoise")  # Stream.given, when a modality is given
CLEAN = CleanSchedule()


@dataclass
class Stream:
    """One modality's share of a joint sampling run."""

    model: BaseModel
    scheduler: SchedulerMixin
    cond: Any = None  # from model.encode_prompt([...]); None for an unconditional model
    uncond: Any = None  # the empty prompt's conditioning, for classifier-free guidance
    cfg_scale: float = 1.0
    guidance_scale: float = 1.0  # lambda: the weight of the discriminator term
    generator: torch.Generator | None = None
    # Initial noise, unit variance: scaled by the scheduler's init_noise_sigma as diffusers
    # pipelines scale given latents. Drawn from ``generator`` when None. For a ``given``
    # stream: the given clips, clean, used as they are.
    latents: Tensor | None = None
    disc_text: Tensor | None = None  # pooled text embedding for the discriminator
    disc_text_uncond: Tensor | None = None
    given: str | None = None  # "clean" or "renoise": ``latents`` are given clips, not sampled

    def __post_init__(self) -> None:
        if self.given is not None:
            check_choice("given", self.given, GIVEN_MODES)

    @property
    def uses_cfg(self) -> bool:
        return self.uncond is not None and self.cfg_scale != 1.0

    def predict(self, x: Tensor, t: Tensor, partner: Tensor | None = None) -> Tensor:
        """The model's prediction with CFG; a view of a joint model (``model.joint``) takes
        ``partner``, the other modality's current input, as its conditioning."""
        cond = partner if _joint_of(self) is not None else self.cond
        out = self.model.predict(x, t, cond)
        if self.uses_cfg:
            scale = cfg_scale_at(self.model, t, self.cfg_scale)
            out = cfg_mix(self.model.predict(x, t, self.uncond), out, scale)
        return out


@dataclass
class GuidanceOptions:
    """How the discriminator term is applied."""

    # Guide a modality only while its own noise level t / T lies in this range.
    window: tuple[float, float] = (0.0, 1.0)
    cfg_on_discriminator: bool = False  # the reference release's choice: CFG on grad h too
    chunk_size: int | None = None  # bound memory: discriminator gradient chunk by chunk
    extra: dict[str, Any] = field(default_factory=dict)  # further discriminator kwargs

    def __post_init__(self) -> None:
        self.window = check_fraction_range("window", self.window, allow_empty=True)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)


def _noise_level(schedule: NoiseSchedule, timestep: Tensor) -> float:
    return float(timestep) / schedule.num_train_timesteps


@dataclass
class _StepInputs:
    """What the discriminator sees of both streams at one step: their inputs, and the
    timesteps on the schedules that give each one's noise level."""

    audio: Tensor
    video: Tensor
    timestep_audio: Tensor
    timestep_video: Tensor
    schedules: tuple[NoiseSchedule, NoiseSchedule]


def _correction(
    disc: DiscriminatorFn,
    audio: Stream,
    video: Stream,
    inputs: _StepInputs,
    options: GuidanceOptions,
    *,
    conditional: bool,
) -> tuple[Tensor, Tensor]:
    kwargs = dict(options.extra)
    text_a = audio.disc_text if conditional else audio.disc_text_uncond
    text_v = video.disc_text if conditional else video.disc_text_uncond
    if text_a is not None:
        kwargs["text_audio"] = text_a
    if text_v is not None:
        kwargs["text_video"] = text_v
    batch = inputs.audio.shape[0]
    chunk = options.chunk_size or batch
    deltas_a, deltas_v = [], []
    for start in range(0, batch, chunk):
        sl = slice(start, start + chunk)
        # Per-sample inputs are sliced with the batch; shared ones (a (D,) vector) are not.
        chunk_kwargs = {
            k: (x[sl] if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == batch else x)
            for k, x in kwargs.items()
        }
        d_a, d_v = guidance_correction(
            disc,
            inputs.audio[sl],
            inputs.video[sl],
            inputs.timestep_audio,
            inputs.timestep_video,
            *inputs.schedules,
            audio.guidance_scale,
            video.guidance_scale,
            **chunk_kwargs,
        )
        deltas_a.append(d_a)
        deltas_v.append(d_v)
    return torch.cat(deltas_a), torch.cat(deltas_v)


def _discriminator_deltas(
    disc: DiscriminatorFn,
    audio: Stream,
    video: Stream,
    inputs: _StepInputs,
    options: GuidanceOptions,
) -> tuple[Tensor, Tensor]:
    """Both epsilon corrections; with ``cfg_on_discriminator`` the conditional and
    unconditional terms are mixed as the base models' CFG, each with its own scale."""
    delta_a, delta_v = _correction(disc, audio, video, inputs, options, conditional=True)
    if not options.cfg_on_discriminator:
        return delta_a, delta_v
    un_a, un_v = _correction(disc, audio, video, inputs, options, conditional=False)
    scale_a = cfg_scale_at(audio.model, inputs.timestep_audio, audio.cfg_scale)
    scale_v = cfg_scale_at(video.model, inputs.timestep_video, video.cfg_scale)
    return cfg_mix(un_a, delta_a, scale_a), cfg_mix(un_v, delta_v, scale_v)


def _initial_latents(stream: Stream, batch_size: int) -> Tensor:
    if stream.latents is not None:
        noise = stream.latents.to(stream.model.device, torch.float32)
    else:
        noise = stream.model.initial_noise(batch_size, stream.generator)
    # Flow-matching schedulers have no init_noise_sigma: their pipelines use unit noise.
    return noise * getattr(stream.scheduler, "init_noise_sigma", 1.0)


def _check_cfg_on_discriminator(audio: Stream, video: Stream) -> None:
    """CFG on the discriminator term needs an unconditional input to mix against."""
    for name, s in (("audio", audio), ("video", video)):
        if s.cfg_scale != 1.0 and s.uncond is None:
            raise ValueError(
                f"cfg_on_discriminator: the {name} stream has cfg_scale {s.cfg_scale} but no "
                "unconditional input (Stream.uncond), so neither its prediction nor the "
                "discriminator term can be mixed; give it uncond or turn cfg_on_discriminator off"
            )
    if audio.disc_text is None and video.disc_text is None:
        raise ValueError(
            "cfg_on_discriminator: neither stream gives the discriminator a conditional text "
            "(Stream.disc_text), so its conditional and unconditional terms are the same; give "
            "disc_text or turn cfg_on_discriminator off"
        )


@contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Put an nn.Module discriminator in eval mode (no dropout, no text dropping) for the run
    and restore its mode afterwards."""
    training = isinstance(module, torch.nn.Module) and module.training
    if training:
        module.eval()
    try:
        yield
    finally:
        if training:
            module.train()


def _check_run(
    audio: Stream,
    video: Stream,
    discriminator: DiscriminatorFn | None,
    batch_size: int,
    num_inference_steps: int,
    options: GuidanceOptions,
) -> None:
    check_int("num_inference_steps", num_inference_steps, 1)
    check_int("batch_size", batch_size, 1)
    for name, stream in (("audio", audio), ("video", video)):
        check_float(f"{name} cfg_scale", stream.cfg_scale)
        check_float(f"{name} guidance_scale", stream.guidance_scale)
    if discriminator is not None and options.cfg_on_discriminator:
        _check_cfg_on_discriminator(audio, video)
    if audio.given and video.given:
        raise InputError("both streams are given; one modality must be sampled")


def _lockstep_timesteps(
    audio: Stream, video: Stream, num_inference_steps: int
) -> list[tuple[Tensor, Tensor]]:
    """Both schedulers' timesteps, pairwise: they must take the same number of steps."""
    audio.scheduler.set_timesteps(num_inference_steps, device=audio.model.device)
    video.scheduler.set_timesteps(num_inference_steps, device=video.model.device)
    steps_a: Sequence[Tensor] = audio.scheduler.timesteps
    steps_v: Sequence[Tensor] = video.scheduler.timesteps
    if len(steps_a) != len(steps_v):
        raise ValueError(
            f"the schedulers disagree on the number of steps ({len(steps_a)} for audio, "
            f"{len(steps_v)} for video); use schedulers that take {num_inference_steps} steps"
        )
    return list(zip(steps_a, steps_v, strict=True))


@torch.no_grad()
def joint_sample(
    audio: Stream,
    video: Stream,
    discriminator: DiscriminatorFn | None = None,
    *,
    batch_size: int = 1,
    num_inference_steps: int = 50,
    options: GuidanceOptions | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Sample ``batch_size`` audio-video pairs; returns both modalities' final latents.

    A discriminator that is an ``nn.Module`` runs in eval mode (its mode is restored after).
    """
    options = options or GuidanceOptions()
    _check_run(audio, video, discriminator, batch_size, num_inference_steps, options)
    steps = _lockstep_timesteps(audio, video, num_inference_steps)
    a, v = _start_pair(audio, video, batch_size)
    # Built once per run: schedules, prediction types and scheduler-step kwargs are constant.
    schedules = (audio.model.schedule, video.model.schedule)
    ptypes = (audio.model.prediction_type, video.model.prediction_type)
    step_kwargs = (_step_kwargs(audio), _step_kwargs(video))
    lo, hi = options.window
    with _eval_mode(discriminator):
        for timestep_audio, timestep_video in tqdm(steps, disable=not progress, desc="sampling"):
            (in_a, td_a, sd_a), (in_v, td_v, sd_v) = (
                _inputs(audio, a, timestep_audio, schedules[0]),
                _inputs(video, v, timestep_video, schedules[1]),
            )
            out_a, out_v = _predict(audio, video, in_a, in_v, timestep_audio, timestep_video)
            level_a = _noise_level(schedules[0], timestep_audio)
            level_v = _noise_level(schedules[1], timestep_video)
            guide_a = out_a is not None and lo <= level_a <= hi
            guide_v = out_v is not None and lo <= level_v <= hi
            if discriminator is not None and (guide_a or guide_v):
                # The discriminator is told each modality's level: td_* on schedule sd_*.
                inputs = _StepInputs(in_a, in_v, td_a, td_v, (sd_a, sd_v))
                delta_a, delta_v = _discriminator_deltas(
                    discriminator, audio, video, inputs, options
                )
                if guide_a:
                    out_a = _apply(schedules[0], ptypes[0], out_a, delta_a, timestep_audio)
                if guide_v:
                    out_v = _apply(schedules[1], ptypes[1], out_v, delta_v, timestep_video)
            if out_a is not None:
                a = audio.scheduler.step(out_a, timestep_audio, a, **step_kwargs[0]).prev_sample
            if out_v is not None:
                v = video.scheduler.step(out_v, timestep_video, v, **step_kwargs[1]).prev_sample
    return a, v


def _joint_of(stream: Stream) -> Any:
    """The joint model a stream's model is a view of (``model.joint``), or None."""
    return getattr(stream.model, "joint", None)


def _start(stream: Stream, batch_size: int) -> Tensor:
    if not stream.given:
        return _initial_latents(stream, batch_size)
    if stream.latents is None or stream.latents.shape[0] != batch_size:
        got = None if stream.latents is None else tuple(stream.latents.shape)
        raise InputError(
            f"a given {stream.model.modality} stream needs latents with {batch_size} rows "
            f"(the given clips), got {got}"
        )
    return stream.latents


def _start_pair(audio: Stream, video: Stream, batch_size: int) -> tuple[Tensor, Tensor]:
    """Both streams' starting latents, in the order a joint model's own pipeline draws them
    from one generator (LTX-2 draws the video noise first: ``draws_video_first``)."""
    if getattr(_joint_of(video), "draws_video_first", False):
        v = _start(video, batch_size)
        return _start(audio, batch_size), v
    return _start(audio, batch_size), _start(video, batch_size)


def _inputs(
    stream: Stream, x: Tensor, t: Tensor, schedule: NoiseSchedule
) -> tuple[Tensor, Tensor, NoiseSchedule]:
    """What the model and the discriminator see of a stream at one step: its input, and the
    timestep and schedule that give its noise level."""
    if stream.given == "clean":
        return x, torch.zeros_like(torch.as_tensor(t)), CLEAN
    if stream.given == "renoise":
        noise = randn_tensor(x.shape, generator=stream.generator, device=x.device, dtype=x.dtype)
        return schedule.add_noise(x, noise, torch.as_tensor(t, device=x.device)), t, schedule
    return _model_input(stream.scheduler, x, t), t, schedule


def _predict(
    audio: Stream,
    video: Stream,
    in_a: Tensor,
    in_v: Tensor,
    timestep_audio: Tensor,
    timestep_video: Tensor,
) -> tuple[Tensor | None, Tensor | None]:
    """Both free streams' predictions (None for a given one). Two views of one joint model
    (:class:`mmdisco.world.paired.WorldJointModel`, LTX-2) are run as one network call."""
    joint = _joint_of(audio)
    if joint is not None and joint is _joint_of(video) and not (audio.given or video.given):
        return joint.predict_pair(
            in_a, in_v, timestep_audio, timestep_video, **_joint_text(audio, video)
        )
    out_a = None if audio.given else audio.predict(in_a, timestep_audio, partner=in_v)
    out_v = None if video.given else video.predict(in_v, timestep_video, partner=in_a)
    return out_a, out_v


def _joint_text(audio: Stream, video: Stream) -> dict[str, Any]:
    """A text-conditioned joint model's inputs (LTX-2): one prompt for both streams, CFG at
    each stream's own scale. Nothing for an unconditional joint model (the world's)."""
    cond = video.cond if video.cond is not None else audio.cond
    if cond is None:
        return {}
    uncond = video.uncond if video.uncond is not None else audio.uncond
    return {
        "cond": cond,
        "uncond": uncond if audio.uses_cfg or video.uses_cfg else None,
        "cfg_scales": (audio.cfg_scale, video.cfg_scale),
    }


def _model_input(scheduler: SchedulerMixin, x: Tensor, t: Tensor) -> Tensor:
    """``scheduler.scale_model_input``; flow-matching schedulers have none (identity)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return x if scale is None else scale(x, t)


def _step_kwargs(stream: Stream) -> dict[str, Any]:
    """Stochastic schedulers take a generator; deterministic ones (UniPC, PNDM) reject it."""
    if "generator" in inspect.signature(stream.scheduler.step).parameters:
        return {"generator": stream.generator}
    return {}


def _apply(
    schedule: NoiseSchedule, prediction_type: str, out: Tensor, delta_eps: Tensor, t: Tensor
) -> Tensor:
    """Add an epsilon-space correction to a prediction in its own parameterisation."""
    alpha, sigma = schedule.alpha_sigma(torch.as_tensor(t).expand(out.shape[0]))
    alpha, sigma = alpha.to(out.device), sigma.to(out.device)
    return out + epsilon_delta_to_prediction(delta_eps, alpha, sigma, prediction_type).to(out.dtype)


# --------------------------------------------------------------------------------------------
# Setting up runs: one config, one stream builder, one batch-and-seed loop
# --------------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """How pairs are sampled: by YAML presets (``sampling:``), the CLI, pipelines and fakes.

    ``scheduler`` is a short name of :data:`~mmdisco.base_models.loading.SCHEDULERS`, a
    diffusers scheduler class ("DPMSolverMultistepScheduler") or "default" (each base model's
    own). Joint guidance scales are the weights lambda of the discriminator term.
    ``sliding_window``: the discriminator's training window ``[audio, video]`` in latent
    frames, for clips longer than it: the discriminator then guides them through
    :class:`~mmdisco.discriminator.sliding.SlidingWindow`, windows overlapping by at least
    ``sliding_overlap`` (None: the discriminator sees the whole clip).
    """

    num_inference_steps: int = 50
    scheduler: str = "DPMSolverMultistepScheduler"
    guidance_scale_audio: float = 1.0
    guidance_scale_video: float = 1.0
    window: tuple[float, float] = (0.0, 1.0)  # guide while a modality's t / T lies in it
    solver_order: int = 2
    algorithm_type: str = "dpmsolver++"
    cfg_on_discriminator: bool = False
    batch_size: int = 4
    seed: int = 0
    sliding_window: tuple[int, int] | None = None
    sliding_overlap: float = 0.5

    def __post_init__(self) -> None:
        check_int("num_inference_steps", self.num_inference_steps, 1)
        if self.scheduler not in SCHEDULERS and not self.scheduler.endswith("Scheduler"):
            raise InputError(
                f"must be one of {sorted(SCHEDULERS)} or a diffusers scheduler class, got "
                f"{self.scheduler!r}",
                "scheduler",
            )
        for name in ("guidance_scale_audio", "guidance_scale_video"):
            setattr(self, name, check_float(name, getattr(self, name)))
        self.window = check_fraction_range("window", self.window, allow_empty=True)
        check_int("solver_order", self.solver_order, 1, 3)
        check_bool("cfg_on_discriminator", self.cfg_on_discriminator)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)
        if self.sliding_window is not None:
            window = check_ints("sliding_window", self.sliding_window, 1)
            if len(window) != 2:
                message = f"must be [audio, video] latent frames, got {list(window)}"
                raise InputError(message, "sliding_window")
            self.sliding_window = (window[0], window[1])
        self.sliding_overlap = check_float(
            "sliding_overlap", self.sliding_overlap, 0.0, 1.0, open_max=True
        )

    def make_scheduler(self, model: BaseModel) -> Any:
        """A fresh sampler for ``model`` (:func:`~mmdisco.base_models.loading.make_scheduler`)."""
        return make_scheduler(
            model,
            self.scheduler,
            solver_order=self.solver_order,
            algorithm_type=self.algorithm_type,
        )

    def guidance_options(self, **runtime: Any) -> GuidanceOptions:
        """The sampler's options: this config's window and CFG choice, plus ``runtime`` ones
        (``chunk_size``, ``extra`` discriminator inputs)."""
        return GuidanceOptions(
            window=self.window, cfg_on_discriminator=self.cfg_on_discriminator, **runtime
        )

    def guidance_scale(self, modality: str) -> float:
        return getattr(self, f"guidance_scale_{modality}")

    def windowed(self, discriminator: DiscriminatorFn | None) -> DiscriminatorFn | None:
        """``discriminator`` as sampling calls it: through a sliding window when
        ``sliding_window`` is set."""
        if discriminator is None or self.sliding_window is None:
            return discriminator
        from mmdisco.discriminator.sliding import SlidingWindow

        return SlidingWindow(discriminator, self.sliding_window, overlap=self.sliding_overlap)


def disc_config_of(disc: Any) -> Any:
    """The DiscriminatorConfig of a discriminator or of the one a wrapper holds (or None)."""
    return getattr(disc, "config", None) or getattr(getattr(disc, "disc", None), "config", None)


def discriminator_texts(
    disc: Any, model: BaseModel, cond: Any, uncond: Any
) -> tuple[Tensor | None, Tensor | None]:
    """The discriminator's text inputs for ``model``'s modality, conditional and
    unconditional.

    mmdisco's discriminators take the pooled embedding and use their learned null for the
    unconditional branch (None). The release's (``text_from_hidden_states``) averages the
    denoiser's text tokens and has no null: it gets the empty prompt's tokens.
    """
    if getattr(disc_config_of(disc), f"text_dim_{model.modality}", None) is None:
        return None, None
    if getattr(disc, "text_from_hidden_states", False):
        return cond.hidden_states.float(), uncond.hidden_states.float()
    return model.pooled_text_embedding(cond), None


def build_stream(
    model: BaseModel,
    scheduler: Any,
    generator: torch.Generator | list[torch.Generator] | None,
    *,
    prompts: list[str] | None = None,
    negatives: list[str] | None = None,
    cfg_scale: float = 1.0,
    guidance_scale: float = 1.0,
    discriminator: Any = None,
) -> Stream:
    """One modality's stream: its prompts' conditional and unconditional inputs (the empty
    prompt's, as the model's pipeline builds them, or ``negatives``'; none when neither CFG
    nor a discriminator needs them), its CFG and joint guidance scales and, if
    ``discriminator`` takes text, the prompts' text inputs to it."""
    stream = Stream(
        model,
        scheduler,
        cfg_scale=cfg_scale,
        guidance_scale=guidance_scale,
        generator=generator,  # type: ignore[arg-type]
    )
    if prompts is None:
        return stream
    if negatives is not None:
        stream.cond, stream.uncond = model.encode_prompt(prompts), model.encode_prompt(negatives)
    elif cfg_scale != 1.0 or discriminator is not None:
        stream.cond, stream.uncond = prompt_pair(model, prompts)
    else:  # nothing mixes an unconditional prediction in: the prompts alone
        stream.cond = model.encode_prompt(prompts)
    stream.disc_text, stream.disc_text_uncond = discriminator_texts(
        discriminator, model, stream.cond, stream.uncond
    )
    return stream


def _held(streams: list[Stream], modality: str) -> Stream:
    return streams[0 if modality == "audio" else 1]


def sample_batches(
    audio_model: BaseModel,
    video_model: BaseModel,
    n: int,
    sampling: SamplingConfig,
    *,
    seed: int | None = None,
    batch_size: int | None = None,
    discriminator: DiscriminatorFn | None = None,
    prompts: Sequence[str] | None = None,
    cfg_scales: tuple[float, float] = (1.0, 1.0),
    given: tuple[str, Tensor] | None = None,
    given_mode: str = "clean",
    model_cond: tuple[str, Tensor] | None = None,
    disc_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """``n`` pairs of latents (on the CPU), batch ``b`` drawn from seeds derived from
    ``(seed, b)`` (default: ``sampling.seed`` and ``sampling.batch_size``).

    The initial noise and the sampler noise depend only on ``seed`` and the batch index, so
    sampling the same seed with and without ``discriminator`` compares like with like.
    ``prompts`` (one per pair) condition both models, each with its CFG scale of
    ``cfg_scales``. ``given = (modality, latents)`` (``n`` rows) generates only the other
    modality, the given clips entering the discriminator as ``given_mode`` says
    (``Stream.given``); they are returned unchanged in their slot. ``model_cond = (modality,
    cond)`` (``n`` rows) is that modality's model's per-pair conditioning, e.g. the given
    video for a cascade's video-to-audio model.
    """
    seed = sampling.seed if seed is None else seed
    batch_size = batch_size or sampling.batch_size
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    check_choice("given_mode", given_mode, GIVEN_MODES)
    if given is not None and given[1].shape[0] != n:
        raise InputError(f"{n} pairs requested but {given[1].shape[0]} given {given[0]} clips")
    options = sampling.guidance_options(extra=dict(disc_kwargs or {}))
    windowed = sampling.windowed(discriminator)
    out_a, out_v = [], []
    for b, start in enumerate(range(0, n, batch_size)):
        rows = slice(start, min(start + batch_size, n))
        streams = [
            build_stream(
                model,
                sampling.make_scheduler(model),
                torch.Generator(model.device).manual_seed(derive_seed(seed, b, k)),
                prompts=None if prompts is None else list(prompts[rows]),
                cfg_scale=cfg_scales[k],
                guidance_scale=sampling.guidance_scale(model.modality),
                discriminator=discriminator,
            )
            for k, model in enumerate((audio_model, video_model))
        ]
        if model_cond is not None:
            held = _held(streams, model_cond[0])
            held.cond = model_cond[1][rows].to(held.model.device)
        if given is not None:
            held = _held(streams, given[0])
            held.latents, held.given = given[1][rows].to(held.model.device), given_mode
        a, v = joint_sample(
            *streams,
            windowed,
            batch_size=rows.stop - rows.start,
            num_inference_steps=sampling.num_inference_steps,
            options=options,
            progress=progress,
        )
        out_a.append(a.cpu())
        out_v.append(v.cpu())
    return torch.cat(out_a), torch.cat(out_v)
