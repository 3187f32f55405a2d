"""YAML experiment configs: base models, data, discriminator, training and sampling in one file.

A config is a tree of dataclasses. :func:`load_experiment` reads YAML, rejects unknown keys,
missing required keys and values of the wrong type with an error naming the file and the
dotted field (``audio.cfg_scale``), and builds the library's own config objects on request
(:class:`~mmdisco.discriminator.DiscriminatorConfig`,
:class:`~mmdisco.training.trainer.TrainConfig`, :class:`~mmdisco.data.ClipSpec`). Presets for
the paper's out-of-domain setting (section 4.3, Table 6) live in ``configs/``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmdisco.base_models.loading import BaseModelConfig
from mmdisco.errors import (
    ConfigError,
    InputError,
    MissingInputError,
    check_choice,
    check_float,
    check_int,
    check_memory,
)
from mmdisco.sampling import SamplingConfig

__all__ = [
    "BaseModelConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FakesConfig",
    "SamplingConfig",
    "experiment_from_dict",
    "load_experiment",
]


@dataclass
class DataConfig:
    """Real paired data (folder or manifest) and its latent cache."""

    source: str
    cache_dir: str
    duration: float = 2.0
    fps: float = 8.0
    size: int = 256
    sample_rate: int = 16000
    seed: int = 0
    caption_dropout: float = 0.1  # the paper's text dropout, for classifier-free guidance
    shard_size: int = 256
    batch_size: int = 8
    # Peak level of each clip's waveform: "model" = what the audio model was trained on
    # (AudioLDM 0.5 with the mean removed, Auffusion 0.95, others untouched), a number = that
    # peak, null = the waveform as decoded.
    audio_peak: float | str | None = "model"
    posterior: str = "sample"  # latents: "sample" the VAE posterior (reference) or its "mode"
    width: int | None = None  # frames of size x width (size is then the height); None: square

    def __post_init__(self) -> None:
        self.duration = check_float("duration", self.duration, 0.0, open_min=True)
        self.fps = check_float("fps", self.fps, 0.0, open_min=True)
        self.caption_dropout = check_float(
            "caption_dropout", self.caption_dropout, 0.0, 1.0, open_max=True
        )
        for name in ("size", "sample_rate", "shard_size", "batch_size"):
            check_int(name, getattr(self, name), 1)
        if self.width is not None:
            check_int("width", self.width, 1)
        check_int("seed", self.seed, 0)
        if isinstance(self.audio_peak, str):
            if self.audio_peak != "model":
                raise InputError(
                    f"must be 'model', a number or null, got {self.audio_peak!r}", "audio_peak"
                )
        elif self.audio_peak is not None:
            self.audio_peak = check_float("audio_peak", self.audio_peak, 0.0, 1.0, open_min=True)
        check_choice("posterior", self.posterior, ("sample", "mode"))


@dataclass
class FakesConfig:
    """Fake pairs sampled from the two base models independently, before training."""

    num_samples: int = 10000
    out_dir: str = "fakes"
    batch_size: int = 8
    seed: int = 0
    # None: the real pairs' captions in their order, cycled (a class label gets fakes in
    # proportion to its clips); k: each distinct caption k times in a row, cycled, so that
    # free-form captions (one per clip) still give the contrastive objective k fakes each
    per_caption: int | None = None

    def __post_init__(self) -> None:
        if self.per_caption is not None:
            check_int("per_caption", self.per_caption, 1)
        check_int("num_samples", self.num_samples, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)


@dataclass
class ExperimentConfig:
    name: str
    audio: BaseModelConfig
    video: BaseModelConfig
    data: DataConfig
    discriminator: dict[str, Any] = field(default_factory=dict)  # preset + field overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    fakes: FakesConfig = field(default_factory=FakesConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        from mmdisco.base_models import ADAPTERS, check_options

        for name, model in (("audio", self.audio), ("video", self.video)):
            if model.adapter not in ADAPTERS:
                raise ConfigError(
                    f"{name}.adapter: unknown adapter {model.adapter!r}; known: {sorted(ADAPTERS)}"
                )
            if model.torch_dtype not in (None, "float32", "float16", "bfloat16"):
                raise ConfigError(f"{name}.torch_dtype: unsupported {model.torch_dtype!r}")
            try:
                check_options(model.adapter, model.options)
            except ValueError as err:
                raise ConfigError(f"{name}.options.{err}") from None
        self.discriminator_config()  # validate now, not hours into a run
        self.train_config()

    # -- the library's config objects ------------------------------------------------------
    def discriminator_config(self) -> Any:
        """The discriminator's config; one too large to train on this machine is refused.

        ``preset: shared_latent`` is the shared-latent network
        (:class:`~mmdisco.discriminator.shared_latent.SharedLatentConfig` fields, no text
        inputs); its latent shapes come from the base models
        (:meth:`discriminator_config_for`), so here it is checked with stand-in shapes."""
        from mmdisco.discriminator import Discriminator, DiscriminatorConfig

        spec = dict(self.discriminator)
        preset = spec.pop("preset", None)
        try:
            if preset is None:
                config = DiscriminatorConfig.from_dict(spec)
            elif preset in ("text_to_av", "mm_diffusion"):
                config = getattr(DiscriminatorConfig, preset)(**spec)
            elif preset == SHARED_LATENT:
                # stand-in shapes of a high rank: which axes exist is checked once known
                return _shared_latent_config(spec, (1,) * 8, (1, 1, 1, 1))
            else:
                raise ConfigError(
                    f"discriminator.preset: unknown {preset!r}; use 'text_to_av', "
                    f"'mm_diffusion' or '{SHARED_LATENT}'"
                )
        except (TypeError, ValueError) as err:
            raise _in_section("discriminator", err) from err
        # Weights, gradients and Adam's two moments, in float32.
        check_memory(16 * Discriminator.num_parameters_for(config), "discriminator")
        return config

    def discriminator_config_for(self, audio: Any, video: Any) -> Any:
        """:meth:`discriminator_config` checked against the base models' latents; caption
        dropout from ``data.caption_dropout`` unless the section sets ``text_drop_prob``."""
        return self.discriminator_config_for_shapes(audio.latent_shape(), video.latent_shape())

    def discriminator_config_for_shapes(
        self, a_shape: tuple[int, ...], v_shape: tuple[int, ...]
    ) -> Any:
        """:meth:`discriminator_config_for` given the latent shapes (audio, video) alone."""
        if self.discriminator.get("preset") == SHARED_LATENT:
            spec = {k: v for k, v in self.discriminator.items() if k != "preset"}
            try:
                return _shared_latent_config(spec, a_shape, v_shape)
            except (TypeError, ValueError) as err:
                raise _in_section("discriminator", err) from err
        dcfg = self.discriminator_config()
        takes_text = dcfg.text_dim_audio or dcfg.text_dim_video
        if "text_drop_prob" not in self.discriminator and takes_text:
            dcfg = dcfg.replace(text_drop_prob=self.data.caption_dropout)
        checks = (
            ("audio_channels", dcfg.audio_channels, a_shape[0], "audio latents", a_shape),
            (
                "audio_kind",
                dcfg.audio_kind,
                "1d" if len(a_shape) == 2 else "2d",
                "audio latents",
                a_shape,
            ),
            ("video_channels", dcfg.video_channels, v_shape[0], "video latents", v_shape),
        )
        for name, got, want, what, shape in checks:
            if got != want:
                raise ConfigError(
                    f"discriminator.{name} is {got!r} but {what} {shape} need {want!r}"
                )
        return dcfg

    def train_config(self) -> Any:
        from mmdisco.training.trainer import TrainConfig

        try:
            return TrainConfig.from_dict(dict(self.train))
        except (TypeError, ValueError) as err:
            raise _in_section("train", err) from err

    def clip_spec(self, audio_model: Any = None) -> Any:
        """The clips' :class:`~mmdisco.data.ClipSpec`; ``audio_peak: model`` reads the peak
        level from ``audio_model`` (or from the audio adapter's class when none is given)."""
        from mmdisco.base_models import adapter_class
        from mmdisco.data import ClipSpec

        d = self.data
        peak, remove_dc = d.audio_peak, False
        if peak == "model":
            source = audio_model if audio_model is not None else adapter_class(self.audio.adapter)
            peak = getattr(source, "peak_level", None)
            remove_dc = bool(getattr(source, "remove_dc", False))
        return ClipSpec(
            d.duration, d.fps, d.size, d.sample_rate, peak, remove_dc, d.posterior, width=d.width
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sampling"]["window"] = list(self.sampling.window)
        if self.sampling.sliding_window is not None:
            d["sampling"]["sliding_window"] = list(self.sampling.sliding_window)
        return d


# -- loading -------------------------------------------------------------------------------


def _in_section(section: str, err: Exception) -> ConfigError:
    """``err`` (a field's error inside ``section``) as a ConfigError naming the dotted field."""
    if isinstance(err, ConfigError):
        return err
    if isinstance(err, InputError) and err.field:
        field_name = err.field.removeprefix("DiscriminatorConfig.").removeprefix("TrainConfig.")
        return ConfigError(f"{section}.{field_name}: {err.problem}")
    return ConfigError(f"{section}: {err}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly coerce: int -> float, list -> tuple) ``value`` against ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is Any:
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; expected one of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required field is missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except InputError as err:  # a number out of range: name the dotted field
        raise _in_section(where, err) if where else ConfigError(str(err)) from None


def experiment_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        return _build(ExperimentConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment config."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no such experiment config: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return experiment_from_dict(data or {}, str(path))


SHARED_LATENT = "shared_latent"


def _shared_latent_config(
    spec: dict[str, Any], audio_shape: tuple[int, ...], video_shape: tuple[int, ...]
) -> Any:
    import dataclasses

    from mmdisco.discriminator.shared_latent import SharedLatentConfig

    known = {f.name for f in dataclasses.fields(SharedLatentConfig)} - {
        "audio_shape",
        "video_shape",
    }
    unknown = sorted(set(spec) - known)
    if unknown:
        raise InputError(f"unknown field; expected one of {sorted(known)}", unknown[0])
    return SharedLatentConfig(
        audio_shape=tuple(audio_shape), video_shape=tuple(video_shape), **spec
    )
