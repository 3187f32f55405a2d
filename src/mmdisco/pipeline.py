"""``MMDisCoPipeline``: two frozen base models and a discriminator behind diffusers' conventions.

A pipeline folder holds ``model_index.json`` and the discriminator::

    model_index.json     the two base models (adapter, path, CFG scale, dtype, options, as in a
                         YAML preset), the discriminator's folder and the sampling defaults
    discriminator/       whatever :func:`mmdisco.discriminator.load_discriminator` reads
                         (config.json + model.safetensors, or several such parts)

The base models are frozen and published elsewhere, so the index *names* them (a Hugging Face
repo id or a local folder, relative to the pipeline folder when it lies beside it) and
``save_pretrained`` never copies them. ``__call__`` is :func:`mmdisco.sampling.joint_sample`
with the streams built from the index and the arguments; the same generator gives the same
noise with and without guidance, so ``audio_guidance_scale=video_guidance_scale=0`` is the
unguided sample of the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from torch import Tensor

from mmdisco.base_models.base import BaseModel
from mmdisco.base_models.loading import BaseModelConfig, load_model
from mmdisco.config import _build
from mmdisco.errors import ConfigError
from mmdisco.io import write_json_atomic
from mmdisco.sampling import GuidanceOptions, SamplingConfig, Stream, build_stream, joint_sample

INDEX_NAME = "model_index.json"
DISCRIMINATOR_DIR = "discriminator"
CLASS_NAME = "MMDisCoPipeline"
WORLD_PIPELINE = Path(__file__).resolve().parent / "assets" / "world" / "pipeline"
OUTPUT_TYPES = ("np", "pt", "latent")


@dataclass
class PipelineConfig:
    """What ``model_index.json`` holds (besides ``_class_name`` and ``_mmdisco_version``)."""

    audio: BaseModelConfig
    video: BaseModelConfig
    discriminator: str = DISCRIMINATOR_DIR  # folder, relative to the pipeline folder
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)


@dataclass
class MMDisCoPipelineOutput(BaseOutput):
    """Generated pairs. ``output_type="np"``: ``waveforms`` ``(B, L)`` (or ``(B, C, L)``) in
    [-1, 1] and ``frames`` ``(B, F, H, W, 3)`` in [0, 1], as numpy arrays; ``"pt"``: the same
    waveforms and ``(B, F, 3, H, W)`` frames as tensors; ``"latent"``: both models' latents."""

    waveforms: np.ndarray | Tensor
    frames: np.ndarray | Tensor
    sample_rate: int
    fps: float
    output_type: str = "np"

    def save(
        self,
        directory: str | os.PathLike,
        prefix: str = "sample",
        upscale: int = 1,
        names: Sequence[str] | None = None,
    ) -> list[Path]:
        """One ``{prefix}-{i:03d}.mp4`` (or ``{names[i]}.mp4``) per pair in ``directory``:
        H.264 frames, AAC sound; ``upscale`` repeats pixels, for tiny frames such as the
        world's 16 x 16."""
        from mmdisco.media import for_aac, mono, write_mp4

        if self.output_type == "latent":
            raise ValueError("latent outputs cannot be saved as mp4; call with output_type='np'")
        frames = torch.as_tensor(self.frames)
        if self.output_type == "pt":
            frames = frames.permute(0, 1, 3, 4, 2)  # (B, F, 3, H, W) -> (B, F, H, W, 3)
        pixels = (frames.float() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        wave, rate = for_aac(mono(torch.as_tensor(self.waveforms)), self.sample_rate)
        if names is None:
            names = [f"{prefix}-{i:03d}" for i in range(pixels.shape[0])]
        if len(names) != pixels.shape[0]:
            raise ValueError(f"got {len(names)} names for {pixels.shape[0]} pairs")
        return [
            write_mp4(
                Path(directory) / f"{names[i]}.mp4",
                pixels[i],
                self.fps,
                wave[i],
                rate,
                upscale,
            )
            for i in range(pixels.shape[0])
        ]


class MMDisCoPipeline:
    """Joint audio-video generation: two frozen base models guided by one discriminator.

    >>> pipe = MMDisCoPipeline.from_pretrained(WORLD_PIPELINE)
    >>> out = pipe(num_samples=2, generator=torch.Generator().manual_seed(0))
    >>> out.save("samples")
    """

    def __init__(
        self,
        audio_model: BaseModel,
        video_model: BaseModel,
        discriminator: torch.nn.Module | None,
        config: PipelineConfig,
    ) -> None:
        self.audio_model, self.video_model = audio_model, video_model
        self.discriminator = None if discriminator is None else discriminator.eval()
        self.config = config
        self.name_or_path: Path | None = None  # the folder it was loaded from, if any
        self.guidance_chunk_size: int | None = None
        self._progress = True

    # -- loading and saving ----------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> MMDisCoPipeline:
        """Load the pipeline folder ``path`` (see the module docstring)."""
        from mmdisco.discriminator import load_discriminator

        folder = Path(path)
        config = read_index(folder)
        audio = _load_base_model(config.audio, folder, "audio", device)
        video = _load_base_model(config.video, folder, "video", device)
        disc_dir = folder / config.discriminator
        if not disc_dir.is_dir():
            raise FileNotFoundError(
                f"{folder / INDEX_NAME} names the discriminator folder {config.discriminator!r}, "
                f"but {disc_dir} does not exist"
            )
        pipe = cls(audio, video, load_discriminator(disc_dir, str(device)), config)
        pipe.name_or_path = folder
        return pipe

    @classmethod
    def from_experiment(
        cls,
        experiment: str | os.PathLike | Any,
        discriminator: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> MMDisCoPipeline:
        """A pipeline from a YAML preset (``configs/*.yaml``) and its trained discriminator
        (default: ``output_dir/discriminator``); ``save_pretrained`` then writes the folder."""
        from mmdisco.config import load_experiment
        from mmdisco.discriminator import load_discriminator

        cfg = experiment if hasattr(experiment, "sampling") else load_experiment(experiment)
        # Where `mmdisco train --config` saves it (the same folder name as a pipeline's).
        disc_dir = Path(discriminator or Path(cfg.output_dir) / DISCRIMINATOR_DIR)
        config = PipelineConfig(cfg.audio, cfg.video, str(disc_dir), cfg.sampling)
        audio = load_model(cfg.audio, "audio", device)
        video = load_model(cfg.video, "video", device)
        return cls(audio, video, load_discriminator(disc_dir, str(device)), config)

    def save_pretrained(
        self, directory: str | os.PathLike, dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``model_index.json`` and the discriminator (weights in ``dtype``, e.g.
        ``torch.float16`` to halve the size; loading casts them back to float32)."""
        if self.discriminator is None:
            raise ValueError("this pipeline has no discriminator to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # A fresh folder swapped in whole: files of another kind of discriminator saved there
        # before (e.g. summed.json and its parts) must not outlive it.
        final = directory / DISCRIMINATOR_DIR
        fresh = directory / f".{DISCRIMINATOR_DIR}.new-{os.getpid()}"
        stale = directory / f".{DISCRIMINATOR_DIR}.old-{os.getpid()}"
        for leftover in (fresh, stale):
            shutil.rmtree(leftover, ignore_errors=True)
        self.discriminator.save_pretrained(fresh, dtype=dtype)
        if final.exists():
            final.rename(stale)
        fresh.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
        source = self.name_or_path
        config = dataclasses.replace(
            self.config,
            audio=_relocated(self.config.audio, source, directory),
            video=_relocated(self.config.video, source, directory),
            discriminator=DISCRIMINATOR_DIR,
        )
        write_index(directory, config)
        return directory

    # -- devices and memory ----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.video_model.device

    def to(self, device: str | torch.device) -> MMDisCoPipeline:
        """Move both base models (through their adapters' ``to``) and the discriminator."""
        for model in (self.audio_model, self.video_model):
            model.to(device)  # type: ignore[attr-defined]
        if self.discriminator is not None:
            self.discriminator.to(device)
        return self

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: str | torch.device = "cuda"
    ) -> None:
        """Forward to each base model's ``enable_model_cpu_offload`` (diffusers' model
        offload: each network moves to the accelerator only while it runs). The discriminator
        is small and stays on the accelerator."""
        missing = [
            type(m).__name__
            for m in (self.audio_model, self.video_model)
            if not hasattr(m, "enable_model_cpu_offload")
        ]
        if missing:
            raise NotImplementedError(
                f"{', '.join(missing)} cannot offload to the CPU (no enable_model_cpu_offload); "
                "use .to(device) instead"
            )
        for model in (self.audio_model, self.video_model):
            model.enable_model_cpu_offload(gpu_id=gpu_id, device=device)  # type: ignore[attr-defined]
        if self.discriminator is not None:
            target = torch.device(device)
            index = gpu_id if gpu_id is not None else target.index or 0
            self.discriminator.to(torch.device(target.type, index))

    def enable_guidance_slicing(self, chunk_size: int = 1) -> None:
        """Take the discriminator's input-gradient ``chunk_size`` samples at a time (peak
        memory of the backward pass), as diffusers' ``enable_vae_slicing`` does for the VAE."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.guidance_chunk_size = chunk_size

    def disable_guidance_slicing(self) -> None:
        self.guidance_chunk_size = None

    def set_progress_bar_config(self, disable: bool = False) -> None:
        """``disable=True`` hides the sampling progress bar."""
        self._progress = not disable

    # -- sampling --------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        audio_cfg_scale: float | None = None,
        video_cfg_scale: float | None = None,
        audio_guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        guidance_window: tuple[float, float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_samples: int = 1,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> MMDisCoPipelineOutput | tuple[Any, Any]:
        """Generate ``num_samples`` pairs per prompt.

        Arguments left ``None`` take the folder's defaults (``model_index.json``: each model's
        ``cfg_scale``, ``sampling.*``). ``generator``: one for the whole batch, or one per
        pair (each pair's noise then depends on its own generator only, whatever the batch);
        ``None`` seeds one from ``sampling.seed``, so a call is reproducible by default.
        Guidance scales of 0 on both modalities sample without the discriminator.
        """
        s = self.config.sampling
        steps = s.num_inference_steps if num_inference_steps is None else num_inference_steps
        scales = {
            "audio_cfg_scale": _pick(audio_cfg_scale, self.config.audio.cfg_scale),
            "video_cfg_scale": _pick(video_cfg_scale, self.config.video.cfg_scale),
            "audio_guidance_scale": _pick(audio_guidance_scale, s.guidance_scale_audio),
            "video_guidance_scale": _pick(video_guidance_scale, s.guidance_scale_video),
        }
        window = tuple(s.window if guidance_window is None else guidance_window)
        _check_arguments(steps, scales, window, num_samples, output_type)
        prompts = _prompt_list(prompt, num_samples)
        negatives = _negative_list(negative_prompt, prompt, num_samples)
        batch = len(prompts) if prompts is not None else num_samples
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {batch} pairs; pass one, or "
                "one per pair"
            )
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(s.seed)

        guided = scales["audio_guidance_scale"] != 0 or scales["video_guidance_scale"] != 0
        disc = self.discriminator if guided else None
        if guided and disc is None:
            raise ValueError("this pipeline has no discriminator; set both guidance scales to 0")
        streams = [
            self._stream(model, prompts, negatives, scales, generator)
            for model in (self.audio_model, self.video_model)
        ]
        options = GuidanceOptions(
            window=window,  # type: ignore[arg-type]
            cfg_on_discriminator=s.cfg_on_discriminator and any(st.uses_cfg for st in streams),
            chunk_size=self.guidance_chunk_size,
        )
        a, v = joint_sample(
            *streams,
            disc,
            batch_size=batch,
            num_inference_steps=steps,
            options=options,
            progress=self._progress,
        )
        out = self._postprocess(a, v, output_type)
        return out if return_dict else (out.waveforms, out.frames)

    def _stream(
        self,
        model: BaseModel,
        prompts: list[str] | None,
        negatives: list[str] | None,
        scales: dict[str, float],
        generator: torch.Generator | list[torch.Generator],
    ) -> Stream:
        modality = model.modality
        if takes_prompt(model) and prompts is None:
            raise ValueError(
                f"the {modality} base model ({type(model).__name__}) needs a prompt "
                '("" for unconditional generation)'
            )
        if not takes_prompt(model) and prompts is not None:
            raise ValueError(
                f"the {modality} base model ({type(model).__name__}) is unconditional and "
                "takes no prompt; call the pipeline with prompt=None"
            )
        return build_stream(
            model,
            self.config.sampling.make_scheduler(model),
            generator,
            prompts=prompts,
            negatives=negatives,
            cfg_scale=scales[f"{modality}_cfg_scale"],
            guidance_scale=scales[f"{modality}_guidance_scale"],
            discriminator=self.discriminator,
        )

    def _postprocess(self, a: Tensor, v: Tensor, output_type: str) -> MMDisCoPipelineOutput:
        rate = int(getattr(self.audio_model, "sample_rate", 16000))
        fps = float(getattr(self.video_model, "fps", 8.0))
        if output_type == "latent":
            return MMDisCoPipelineOutput(a, v, rate, fps, output_type)
        waveforms = self.audio_model.decode(a).float().cpu()
        video = self.video_model.decode(v).float().cpu()  # (B, 3, F, H, W) in [-1, 1]
        frames = ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W)
        if output_type == "np":
            return MMDisCoPipelineOutput(
                waveforms.numpy(), frames.permute(0, 1, 3, 4, 2).numpy(), rate, fps, output_type
            )
        return MMDisCoPipelineOutput(waveforms, frames, rate, fps, output_type)


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------


def read_index(folder: str | os.PathLike) -> PipelineConfig:
    """Read and check ``folder/model_index.json``; errors name the file and the field."""
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"no such pipeline folder: {folder}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not an MMDisCo pipeline folder: it has no {INDEX_NAME} "
            "(write one with MMDisCoPipeline.save_pretrained)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    name = data.pop("_class_name", None)
    if name != CLASS_NAME:
        raise ConfigError(
            f"{path} describes a {name!r}, not an {CLASS_NAME!r}: load a diffusers pipeline as "
            "a base model (the index's audio.path or video.path) instead"
        )
    data.pop("_mmdisco_version", None)
    try:
        return _build(PipelineConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def write_index(directory: str | os.PathLike, config: PipelineConfig) -> Path:
    from mmdisco import __version__

    data = dataclasses.asdict(config)
    data["sampling"]["window"] = list(config.sampling.window)
    path = Path(directory) / INDEX_NAME
    write_json_atomic(path, {"_class_name": CLASS_NAME, "_mmdisco_version": __version__, **data})
    return path


def _resolve(spec: BaseModelConfig, folder: Path) -> BaseModelConfig:
    """A relative path that exists under ``folder`` is a local model; anything else (a
    Hugging Face repo id, an absolute path) is passed on as written."""
    local = folder / spec.path
    if not Path(spec.path).is_absolute() and local.exists():
        return dataclasses.replace(spec, path=str(local.resolve()))
    return spec


def _relocated(spec: BaseModelConfig, source: Path | None, target: Path) -> BaseModelConfig:
    """``spec`` as the index in ``target`` must write it: a local model relative to
    ``target`` when it lies inside ``target``'s parent folder, absolute otherwise."""
    path = Path(spec.path)
    if source is not None and not path.is_absolute() and (source / path).exists():
        path = source / path
    if not path.exists():
        return spec  # a repo id
    path, target = path.resolve(), target.resolve()
    if path.is_relative_to(target.parent):
        return dataclasses.replace(spec, path=os.path.relpath(path, target))
    return dataclasses.replace(spec, path=str(path))


def _load_base_model(
    spec: BaseModelConfig, folder: Path, name: str, device: str | torch.device
) -> BaseModel:
    return load_model(_resolve(spec, folder), f"{folder / INDEX_NAME}: {name}", device)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def takes_prompt(model: BaseModel) -> bool:
    """Whether ``model`` implements ``encode_prompt`` (is text-conditional)."""
    return type(model).encode_prompt is not BaseModel.encode_prompt


def _pick(value: float | None, default: float) -> float:
    return float(default if value is None else value)


def _check_arguments(
    steps: Any,
    scales: dict[str, float],
    window: Sequence[float],
    num_samples: Any,
    output_type: str,
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    for name, value in scales.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if "cfg" in name and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if len(window) != 2 or not all(math.isfinite(x) for x in window):
        raise ValueError(f"guidance_window must be two finite numbers, got {tuple(window)}")
    if not 0.0 <= window[0] <= window[1] <= 1.0:
        raise ValueError(f"guidance_window must satisfy 0 <= lo <= hi <= 1, got {tuple(window)}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def _prompt_list(prompt: str | list[str] | None, num_samples: int) -> list[str] | None:
    if prompt is None:
        return None
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    return [p for p in prompts for _ in range(num_samples)]


def _negative_list(
    negative: str | list[str] | None, prompt: str | list[str] | None, num_samples: int
) -> list[str] | None:
    if negative is None:
        return None
    if prompt is None:
        raise ValueError("negative_prompt needs a prompt")
    n_prompts = 1 if isinstance(prompt, str) else len(prompt)
    negatives = [negative] * n_prompts if isinstance(negative, str) else list(negative)
    if len(negatives) != n_prompts:
        raise ValueError(
            f"negative_prompt has {len(negatives)} entries for {n_prompts} prompts; give one "
            "string or one per prompt"
        )
    return [p for p in negatives for _ in range(num_samples)]
