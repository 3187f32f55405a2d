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
from mmdisco.diffusion import CleanSchedule, NoiseSchedule, epsilon_delta_to_prediction
from mmdisco.errors import InputError, check_choice, check_float, check_fraction_range, check_int
from mmdisco.guidance import DiscriminatorFn, guidance_correction

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
            out_uncond = self.model.predict(x, t, self.uncond)
            out = out_uncond + self.cfg_scale_at(t) * (out - out_uncond)
        return out

    def cfg_scale_at(self, t: Tensor) -> float:
        """The CFG scale at timestep ``t``: ``cfg_scale``, unless the model sets its own per
        step (``model.cfg_scale_at``: Wan 2.2 A14B's low-noise expert has its own)."""
        at = getattr(self.model, "cfg_scale_at", None)
        return self.cfg_scale if at is None else at(t, self.cfg_scale)


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


def _noise_level(schedule: NoiseSchedule, t: Tensor) -> float:
    return float(t) / schedule.num_train_timesteps


def _correction(
    disc: DiscriminatorFn,
    audio: Stream,
    video: Stream,
    a: Tensor,
    v: Tensor,
    t_a: Tensor,
    t_v: Tensor,
    options: GuidanceOptions,
    conditional: bool,
    schedules: tuple[NoiseSchedule, NoiseSchedule],
) -> tuple[Tensor, Tensor]:
    kwargs = dict(options.extra)
    text_a = audio.disc_text if conditional else audio.disc_text_uncond
    text_v = video.disc_text if conditional else video.disc_text_uncond
    if text_a is not None:
        kwargs["text_audio"] = text_a
    if text_v is not None:
        kwargs["text_video"] = text_v
    batch = a.shape[0]
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
            a[sl],
            v[sl],
            t_a,
            t_v,
            schedules[0],
            schedules[1],
            audio.guidance_scale,
            video.guidance_scale,
            **chunk_kwargs,
        )
        deltas_a.append(d_a)
        deltas_v.append(d_v)
    return torch.cat(deltas_a), torch.cat(deltas_v)


def _initial_latents(stream: Stream, batch_size: int) -> Tensor:
    if stream.latents is not None:
        noise = stream.latents.to(stream.model.device, torch.float32)
    else:
        shape = (batch_size, *stream.model.latent_shape())
        noise = randn_tensor(shape, generator=stream.generator, device=stream.model.device)
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
    check_int("num_inference_steps", num_inference_steps, 1)
    check_int("batch_size", batch_size, 1)
    for name, stream in (("audio", audio), ("video", video)):
        check_float(f"{name} cfg_scale", stream.cfg_scale)
        check_float(f"{name} guidance_scale", stream.guidance_scale)
    if discriminator is not None and options.cfg_on_discriminator:
        _check_cfg_on_discriminator(audio, video)
    audio.scheduler.set_timesteps(num_inference_steps, device=audio.model.device)
    video.scheduler.set_timesteps(num_inference_steps, device=video.model.device)
    steps_a: Sequence[Tensor] = audio.scheduler.timesteps
    steps_v: Sequence[Tensor] = video.scheduler.timesteps
    if len(steps_a) != len(steps_v):
        raise ValueError(
            f"the schedulers disagree on the number of steps ({len(steps_a)} for audio, "
            f"{len(steps_v)} for video); use schedulers that take {num_inference_steps} steps"
        )
    if audio.given and video.given:
        raise InputError("both streams are given; one modality must be sampled")
    a, v = _start(audio, batch_size), _start(video, batch_size)
    # Built once per run: schedules, prediction types and scheduler-step kwargs are constant.
    schedules = (audio.model.schedule, video.model.schedule)
    ptypes = (audio.model.prediction_type, video.model.prediction_type)
    step_kwargs = (_step_kwargs(audio), _step_kwargs(video))
    lo, hi = options.window
    steps = list(zip(steps_a, steps_v, strict=True))
    with _eval_mode(discriminator):
        for t_a, t_v in tqdm(steps, disable=not progress, desc="sampling"):
            (in_a, td_a, sd_a), (in_v, td_v, sd_v) = (
                _inputs(audio, a, t_a, schedules[0]),
                _inputs(video, v, t_v, schedules[1]),
            )
            out_a, out_v = _predict(audio, video, in_a, in_v, t_a, t_v)  # None: given
            guide_a = out_a is not None and lo <= _noise_level(schedules[0], t_a) <= hi
            guide_v = out_v is not None and lo <= _noise_level(schedules[1], t_v) <= hi
            if discriminator is not None and (guide_a or guide_v):
                # The discriminator is told each modality's level: td_* on schedule sd_*.
                delta_a, delta_v = _correction(
                    discriminator, audio, video, in_a, in_v, td_a, td_v, options, True,
                    (sd_a, sd_v),
                )  # fmt: skip
                if options.cfg_on_discriminator:
                    # Same mixing as the base models' CFG, each modality with its own scale.
                    un_a, un_v = _correction(
                        discriminator, audio, video, in_a, in_v, td_a, td_v, options, False,
                        (sd_a, sd_v),
                    )  # fmt: skip
                    delta_a = un_a + audio.cfg_scale_at(t_a) * (delta_a - un_a)
                    delta_v = un_v + video.cfg_scale_at(t_v) * (delta_v - un_v)
                if guide_a:
                    out_a = _apply(schedules[0], ptypes[0], out_a, delta_a, t_a)
                if guide_v:
                    out_v = _apply(schedules[1], ptypes[1], out_v, delta_v, t_v)
            if out_a is not None:
                a = audio.scheduler.step(out_a, t_a, a, **step_kwargs[0]).prev_sample
            if out_v is not None:
                v = video.scheduler.step(out_v, t_v, v, **step_kwargs[1]).prev_sample
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
    audio: Stream, video: Stream, in_a: Tensor, in_v: Tensor, t_a: Tensor, t_v: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """Both free streams' predictions (None for a given one). Two views of one joint model
    (:class:`mmdisco.world.paired.WorldJointModel`) are run as one network call."""
    joint = _joint_of(audio)
    if joint is not None and joint is _joint_of(video) and not (audio.given or video.given):
        return joint.predict_pair(in_a, in_v, t_a, t_v)
    out_a = None if audio.given else audio.predict(in_a, t_a, partner=in_v)
    out_v = None if video.given else video.predict(in_v, t_v, partner=in_a)
    return out_a, out_v


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
