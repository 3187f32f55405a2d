"""Base models as a config names them: loading and checking, samplers, prompts, CFG.

:class:`BaseModelConfig` is one frozen base model of a YAML preset or a pipeline's
``model_index.json``; :func:`load_model` loads it and runs one denoiser step, so that a bad
dtype or device fails at load. :func:`make_scheduler` is the one resolver of sampler names
(:data:`SCHEDULERS`), :func:`prompt_pair` the conditional and unconditional inputs as each
model's own pipeline builds them, and :class:`ConfiguredModel` a base model with its
classifier-free guidance scale built in (what fakes and L_DLSM see).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel, repeat_cond
from mmdisco.diffusion import DiscreteSchedule, NoiseSchedule
from mmdisco.errors import ConfigError, check_float

# Sampler names: a short name, or any diffusers scheduler class named as such
# ("DDIMScheduler"); "default" is the base model's own scheduler.
SCHEDULERS: dict[str, str | None] = {
    "default": None,
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


@dataclass
class BaseModelConfig:
    """One frozen base model: a registered adapter and where its weights are."""

    adapter: str  # a key of mmdisco.base_models.ADAPTERS
    path: str  # a local folder or a Hugging Face repo id (loaded as diffusers does)
    cfg_scale: float = 1.0  # classifier-free guidance of the base model itself
    torch_dtype: str | None = None  # "float16", "bfloat16" or None (float32)
    options: dict[str, Any] = field(default_factory=dict)  # adapter keyword arguments
    # Weights are read from .safetensors only. True also accepts legacy .bin checkpoints
    # (torch.load with weights_only=True: tensors, never code); use it only for checkpoints
    # that ship no safetensors.
    allow_bin_weights: bool = False

    def __post_init__(self) -> None:
        self.cfg_scale = check_float("cfg_scale", self.cfg_scale)

    def summary(self) -> dict[str, Any]:
        """What a cache's fingerprint records of this model."""
        return {"adapter": self.adapter, "path": self.path, "options": self.options}


# --------------------------------------------------------------------------------------------
# Samplers and prompts
# --------------------------------------------------------------------------------------------


def make_scheduler(
    model: BaseModel,
    name: str = "default",
    *,
    solver_order: int | None = None,
    algorithm_type: str | None = None,
) -> Any:
    """A fresh sampler for ``model``: ``name`` from :data:`SCHEDULERS` or a diffusers class.

    Models with their own continuous-time path (Stable Audio's cosine v-prediction, LTX's
    flow matching) keep the scheduler their pipeline uses; so does ``"default"``. The solver
    options reach only classes that take them (DDIM has no solver order, DDPM no algorithm).
    """
    import diffusers

    class_name = SCHEDULERS.get(name, name)
    if class_name is None or not isinstance(model.schedule, DiscreteSchedule):
        return model.make_scheduler()
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(
            f"sampling.scheduler: no diffusers scheduler named {name!r} (short names: "
            f"{', '.join(SCHEDULERS)})"
        )
    accepted = set(inspect.signature(cls.__init__).parameters)
    options = {"solver_order": solver_order, "algorithm_type": algorithm_type}
    return model.make_scheduler(
        cls, **{k: v for k, v in options.items() if v is not None and k in accepted}
    )


def prompt_pair(model: BaseModel, prompts: list[str]) -> tuple[Any, Any]:
    """Conditional and unconditional inputs, as the model's own pipeline builds them."""
    pair = getattr(model, "encode_prompt_pair", None)
    if pair is not None:
        return pair(prompts)
    return model.encode_prompt(prompts), model.encode_prompt([""] * len(prompts))


def cfg_mix(uncond: Tensor, cond: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def cfg_scale_at(model: Any, t: Tensor, scale: float) -> float | Tensor:
    """``model``'s CFG scale at timestep ``t``: ``scale``, unless the model sets its own per
    step (``model.cfg_scale_at``: Wan 2.2 A14B's low-noise expert has its own; per sample,
    broadcastable, for a batch of timesteps)."""
    at = getattr(model, "cfg_scale_at", None)
    return scale if at is None else at(t, scale)


class ConfiguredModel(BaseModel):
    """A frozen base model as the experiment drives it.

    ``encode_prompt`` returns the ``(cond, uncond)`` pair and ``predict`` applies this
    model's own classifier-free guidance scale, so code that knows one prompt and one CFG
    scale (the fake generator) samples each model with its own scale; the trainer's L_DLSM
    sees the same captioned, guided prediction. With ``cond=None``, ``predict`` is the
    unconditional (empty prompt) prediction. ``make_scheduler()`` gives the configured sampler.
    """

    def __init__(
        self, model: BaseModel, cfg_scale: float, sampler: Callable[[], Any] | None = None
    ) -> None:
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
        scale = cfg_scale_at(self.model, t, self.cfg_scale)
        return cfg_mix(self.model.predict(x_t, t, uncond), out, scale)


def configured(
    cfg: ModelSpecs,
    audio: BaseModel,
    video: BaseModel,
    cfg_scales: tuple[float, float] | None = None,
) -> tuple[ConfiguredModel, ConfiguredModel]:
    """Both models with their CFG scales (the config's unless ``cfg_scales`` are given) and
    the configured sampler."""
    scales = cfg_scales or (cfg.audio.cfg_scale, cfg.video.cfg_scale)
    audio_model, video_model = (
        ConfiguredModel(m, scale, lambda m=m: cfg.sampling.make_scheduler(m))
        for m, scale in zip((audio, video), scales, strict=True)
    )
    joint = getattr(audio, "joint", None)
    if joint is not None and joint is getattr(video, "joint", None):
        audio_model.joint = video_model.joint = ConfiguredJoint(joint, scales)
    return audio_model, video_model


class ConfiguredJoint:
    """A joint model (LTX-2) as the experiment drives its two views: ``predict_pair`` takes
    the views' ``(cond, uncond)`` pairs (:meth:`ConfiguredModel.encode_prompt`; the empty
    prompt without one) and applies each view's CFG scale, so code that knows one prompt (the
    fake generator) samples the joint model as configured."""

    def __init__(self, joint: Any, cfg_scales: tuple[float, float]) -> None:
        self.joint, self.cfg_scales = joint, (float(cfg_scales[0]), float(cfg_scales[1]))
        self.draws_video_first = getattr(joint, "draws_video_first", False)

    def predict_pair(
        self, audio_t: Tensor, video_t: Tensor, t_audio: Tensor, t_video: Tensor, **text: Any
    ) -> tuple[Tensor, Tensor]:
        pair = text.get("cond")
        if pair is None:
            empty = self.joint.encode_prompt([""] * audio_t.shape[0])
            pair = (empty, empty)
        cond, uncond = pair
        guided = self.cfg_scales != (1.0, 1.0)
        return self.joint.predict_pair(
            audio_t,
            video_t,
            t_audio,
            t_video,
            cond=cond,
            uncond=uncond if guided else None,
            cfg_scales=self.cfg_scales,
        )


class SamplerSource(Protocol):
    """What the loaders read of a sampling config (:class:`mmdisco.sampling.SamplingConfig`)."""

    num_inference_steps: int

    def make_scheduler(self, model: BaseModel) -> Any: ...


class ModelSpecs(Protocol):
    """What the loaders read of an experiment (:class:`mmdisco.config.ExperimentConfig`): its
    two base models and its sampler. A protocol, so that this layer never imports the config."""

    audio: BaseModelConfig
    video: BaseModelConfig
    sampling: SamplerSource


# --------------------------------------------------------------------------------------------
# Loading and checks
# --------------------------------------------------------------------------------------------


def load_models(cfg: ModelSpecs, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Both base models (:func:`load_model`; a joint model both sections name, its two views:
    :func:`load_joint`), then checked together: their samplers must agree on the number of
    steps (:func:`check_sampler_steps`)."""
    if _is_joint(cfg.audio) or _is_joint(cfg.video):
        audio, video = load_joint(cfg.audio, cfg.video, device)
    else:
        audio = load_model(cfg.audio, "audio", device)
        video = load_model(cfg.video, "video", device)
    check_sampler_steps(cfg, audio, video)
    return audio, video


def _is_joint(spec: BaseModelConfig) -> bool:
    from mmdisco.base_models import adapter_class

    try:
        return getattr(adapter_class(spec.adapter), "modality", None) == "joint"
    except ValueError:  # an unknown adapter: load_model names it
        return False


def load_joint(
    audio: BaseModelConfig, video: BaseModelConfig, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """A joint audio-video model (LTX-2) that both sections name, loaded once (and checked
    with one paired step); its ``.audio`` and ``.video`` views are the two base models."""
    fields = ("adapter", "path", "options", "torch_dtype", "allow_bin_weights")
    differ = [f for f in fields if getattr(audio, f) != getattr(video, f)]
    if differ:
        raise ConfigError(
            f"audio.{differ[0]} and video.{differ[0]} differ, but {video.adapter!r} is one "
            "joint model of both modalities: name the same checkpoint in both sections, with "
            f"the same {', '.join(differ)}"
        )
    joint = load_model(video, "video", device)
    return joint.audio, joint.video


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
            outputs = _one_step(model, cond)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        raise ConfigError(f"{where}: one denoiser step failed: {err}") from err
    for out in outputs:
        if out.dtype != torch.float32 or not torch.isfinite(out).all():
            raise ConfigError(f"{where}: one denoiser step gave non-finite or non-float32 output")


def _one_step(model: Any, cond: Any) -> tuple[Tensor, ...]:
    """The model's prediction(s) for zero latents at its first sampling timestep; a joint
    model predicts both modalities in one call."""
    scheduler = model.make_scheduler()
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    if getattr(model, "modality", None) == "joint":
        shapes = model.latent_shapes()
        a, v = (torch.zeros(1, *shapes[k], device=model.device) for k in ("audio", "video"))
        return tuple(model.predict_pair(a, v, t, t, cond=cond))
    return (model.predict(torch.zeros(1, *model.latent_shape(), device=model.device), t, cond),)


def check_sampler_steps(cfg: ModelSpecs, audio: BaseModel, video: BaseModel) -> None:
    """Joint sampling steps both schedulers in lockstep: they must take the same steps."""
    n = cfg.sampling.num_inference_steps
    counts = []
    for model in (audio, video):
        scheduler = cfg.sampling.make_scheduler(model)
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
