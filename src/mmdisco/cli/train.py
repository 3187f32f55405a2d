"""`mmdisco generate-fakes`, `mmdisco train`, `mmdisco sample`: the MMDisCo training workflow.

The base models default to the shipped synthetic-world models; ``--audio-model`` /
``--video-model`` take directories written by their ``save_pretrained``. ``train`` runs
through Hugging Face Accelerate, so ``accelerate launch -m mmdisco.cli train ...`` (or
``accelerate launch $(which mmdisco) train ...``) spreads it over several processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mmdisco.cli import app
from mmdisco.errors import InputError, MissingInputError, check_choice, check_int
from mmdisco.io import load_tensors, read_json

AudioModelDir = Annotated[
    Path | None, typer.Option(help="audio base model directory (default: shipped world model)")
]
VideoModelDir = Annotated[
    Path | None, typer.Option(help="video base model directory (default: shipped world model)")
]
Scheduler = Annotated[str, typer.Option(help="default, ddpm, ddim, dpm, unipc or euler")]
Steps = Annotated[int, typer.Option("--steps", help="sampler steps")]
Seed = Annotated[int, typer.Option(help="seed of every random draw")]
TrainConfigFile = Annotated[
    Path | None,
    typer.Option(
        help="TrainConfig JSON (overrides the options), or an experiment YAML "
        "(configs/*.yaml: real base models and data; the other options are then unused)"
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        help="with an experiment YAML: print the peak memory per device of one training "
        "step (measured on the meta device) instead of training"
    ),
]
Processes = Annotated[
    int, typer.Option(help="with --dry-run: data-parallel processes sharing the batch")
]
MemoryGib = Annotated[
    float | None,
    typer.Option(help="with --dry-run: a device's memory; suggests the micro-batch that fits"),
]
GivenVideo = Annotated[
    list[Path] | None,
    typer.Option(
        help="video-to-audio: a video file to generate audio for (repeatable); it must "
        "have the video model's frame rate, frame count and frame size (or a multiple)"
    ),
]
GivenAudio = Annotated[
    list[Path] | None,
    typer.Option(
        help="audio-to-video: an audio (or video) file to generate video for "
        "(repeatable); it must last the audio model's duration, any sample rate"
    ),
]
GivenMode = Annotated[
    str,
    typer.Option(
        help="how given clips enter the discriminator: clean (needs one trained with "
        "clean_prob > 0) or renoise (noised to the generated modality's level each step)"
    ),
]
RealLatents = Annotated[
    Path | None,
    typer.Option(
        help="safetensors file with real 'audio' / 'video' latents (default: world clips)"
    ),
]


def world_base_models(audio_dir: Path | None, video_dir: Path | None, device: str = "cpu"):
    """The two frozen base models: the shipped world models unless directories are given."""
    from mmdisco.world.models import ASSETS_DIR, WorldAudioModel, WorldVideoModel

    audio = WorldAudioModel.from_pretrained(audio_dir or ASSETS_DIR / "audio", device)
    video = WorldVideoModel.from_pretrained(video_dir or ASSETS_DIR / "video", device)
    return audio, video


def _require(**options: Path | None) -> None:
    """Options that are required unless ``--config`` gives an experiment YAML."""
    for name, value in options.items():
        if value is None:
            raise InputError("is required (or pass --config)", name)


@app.command("generate-fakes")
def generate_fakes_cmd(
    out: Annotated[Path | None, typer.Option(help="cache directory (resumed if it exists)")] = None,
    n: Annotated[int, typer.Option(help="number of independent pairs")] = 2048,
    seed: Seed = 0,
    shard_size: Annotated[int, typer.Option(help="pairs per safetensors shard")] = 256,
    num_inference_steps: Steps = 25,
    scheduler: Scheduler = "dpm",
    audio_model: AudioModelDir = None,
    video_model: VideoModelDir = None,
    config: Annotated[
        Path | None,
        typer.Option(help="experiment YAML (configs/*.yaml): real base models and data"),
    ] = None,
) -> None:
    """Sample N pairs independently from the two base models into a resumable cache.

    Under ``accelerate launch`` every process samples its own shards of the one cache."""
    from mmdisco.cli.experiment import is_main_process, process_device
    from mmdisco.training.distributed import finish_processes
    from mmdisco.training.fakes import generate_fakes

    if config is not None:
        from mmdisco.cli.experiment import generate_fakes_from_yaml

        return generate_fakes_from_yaml(config)
    _require(out=out)
    audio, video = world_base_models(audio_model, video_model, process_device())
    start = time.perf_counter()
    manifest = generate_fakes(
        audio,
        video,
        n,
        out,
        seed=seed,
        shard_size=shard_size,
        num_inference_steps=num_inference_steps,
        scheduler=scheduler,
    )
    main = is_main_process()
    finish_processes()
    if main:
        typer.echo(
            f"{manifest['n']} fake pairs in {len(manifest['shards'])} shards at {out} "
            f"({time.perf_counter() - start:.0f} s)"
        )


@app.command("train")
def train_cmd(
    fakes: Annotated[Path | None, typer.Option(help="cache written by generate-fakes")] = None,
    out: Annotated[
        Path | None, typer.Option(help="run directory: checkpoints/, logs/, discriminator/")
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            help="contrastive: the shared-latent network, InfoNCE against the fakes in groups "
            "that share a noise level, AdamW (what learnt the continuous world's ratio); "
            "paper: the paper's discriminator (--head), L_D + L_DLSM, Adam"
        ),
    ] = "contrastive",
    head: Annotated[
        str, typer.Option(help="with --recipe paper: fusion head: mlp, time_aligned, ...")
    ] = "time_aligned",
    real: RealLatents = None,
    n_real: Annotated[
        int, typer.Option(help="world clips used as real pairs (when no --real)")
    ] = 4096,
    steps: Annotated[int, typer.Option(help="optimisation steps")] = 2000,
    refine_steps: Annotated[
        int | None,
        typer.Option(
            help="with --recipe contrastive: hard-negative refinement steps after --steps "
            "(default: a tenth of --steps; 0: none)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="real and fake pairs per step")] = 64,
    lr: Annotated[
        float | None, typer.Option(help="learning rate (default: the recipe's, 2e-3 or 1e-3)")
    ] = None,
    dlsm_weight: Annotated[
        float, typer.Option(help="with --recipe paper: weight of L_DLSM (0 = L_D only)")
    ] = 1.0,
    seed: Seed = 0,
    config: TrainConfigFile = None,
    audio_model: AudioModelDir = None,
    video_model: VideoModelDir = None,
    dry_run: DryRun = False,
    processes: Processes = 1,
    memory_gib: MemoryGib = None,
) -> None:
    """Train a discriminator on real pairs vs cached fakes (by default the contrastive recipe;
    ``--recipe paper``: L_D + dlsm_weight * L_DLSM)."""
    from mmdisco.discriminator.config import FUSIONS
    from mmdisco.training.trainer import TrainConfig

    if config is not None and config.suffix in (".yaml", ".yml"):
        from mmdisco.cli.experiment import train_from_yaml

        return train_from_yaml(config, dry_run=dry_run, processes=processes, memory_gib=memory_gib)
    if dry_run:
        raise typer.BadParameter("--dry-run needs --config EXPERIMENT.yaml", param_hint="--dry-run")
    _require(fakes=fakes, out=out)
    # Everything the options say is checked before the models and data are loaded.
    check_choice("recipe", recipe, RECIPES)
    if config is not None:
        try:
            cfg = TrainConfig.from_dict(read_json(config))
        except InputError as err:
            raise InputError(str(err), str(config)) from None
    else:
        common = {"steps": steps, "batch_size": batch_size, "seed": seed}
        if lr is not None:
            common["lr"] = lr
        if recipe == "contrastive":
            if refine_steps is not None:
                common["refine_steps"] = refine_steps
            cfg = TrainConfig.contrastive(group_size=min(batch_size, 32), **common)
        else:
            cfg = TrainConfig(dlsm_weight=dlsm_weight, **common)
    check_choice("head", head, FUSIONS)
    if real is None:
        check_int("n_real", n_real, 1)
    network = "shared_latent" if recipe == "contrastive" else head
    _train_world(cfg, fakes, out, network, real, n_real, seed, (audio_model, video_model))


RECIPES = ("contrastive", "paper")


def _train_world(
    cfg: Any,
    fakes: Path,
    out: Path,
    network: str,
    real: Path | None,
    n_real: int,
    seed: int,
    model_dirs: tuple[Path | None, Path | None],
) -> None:
    """Train a discriminator against world base models: the contrastive recipe's network
    (``network="shared_latent"``) or the small world discriminator with head ``network``."""
    import torch
    from accelerate import Accelerator

    from mmdisco.demo import DemoSettings
    from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator
    from mmdisco.training.data import PairData, fake_pairs
    from mmdisco.training.distributed import finish_processes
    from mmdisco.training.trainer import train_discriminator
    from mmdisco.world.recipes import build_discriminator, world_real_pairs

    fake_data = fake_pairs(fakes)
    real_data = None
    if real is not None:
        tensors, _ = load_tensors(real, keys=["audio", "video"])
        real_data = PairData(tensors["audio"], tensors["video"])
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    audio, video = world_base_models(*model_dirs, str(accelerator.device))
    if real_data is None:
        real_data = world_real_pairs(audio, video, n_real, seed=seed)
    if network == "shared_latent":
        network_config = SharedLatentConfig.conv(audio.latent_shape(), video.latent_shape())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the initial weights are a function of the seed
            disc = SharedLatentDiscriminator(network_config)
    else:
        disc = build_discriminator(
            network,
            audio.latent_shape(),
            video.latent_shape(),
            seed=seed,
            **DemoSettings().disc_kwargs,  # the small world discriminator
        )
    result = train_discriminator(
        disc,
        audio,
        video,
        real_data,
        fake_data,
        cfg,
        out,
        accelerator=accelerator,
        save_as="discriminator",
    )
    finish_processes()
    if accelerator.is_main_process:
        last = result.history[-1] if result.history else {}
        typer.echo(f"trained in {result.seconds:.0f} s; last {last}; saved {out / 'discriminator'}")


SampleDiscriminator = Annotated[
    Path | None,
    typer.Option(
        "--discriminator",
        help="directory from Discriminator.save_pretrained; required, except with --config "
        "(default there: the config's output_dir/discriminator)",
    ),
]
SampleOut = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="folder for the .mp4 files; required, except with --config (default there: "
        "the config's output_dir/samples)",
    ),
]
SampleCount = Annotated[
    int | None,
    typer.Option("--n", help="pairs per variant (default 4; with --given-*, one per given file)"),
]
ScaleAudio = Annotated[
    float, typer.Option("--scale-audio", help="joint guidance scale of the audio model")
]
ScaleVideo = Annotated[
    float, typer.Option("--scale-video", help="joint guidance scale of the video model")
]
Upscale = Annotated[int, typer.Option("--upscale", help="pixel upscaling of the written video")]
ExperimentFile = Annotated[
    Path | None,
    typer.Option("--config", help="experiment YAML (configs/*.yaml): real base models and data"),
]
Prompts = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt", help="with --config: a prompt (repeatable; default: real-cache captions)"
    ),
]


@app.command("sample")
def sample_cmd(
    discriminator: SampleDiscriminator = None,
    out: SampleOut = None,
    n: SampleCount = None,
    seed: Seed = 0,
    num_inference_steps: Steps = 25,
    scheduler: Scheduler = "dpm",
    guidance_scale_audio: ScaleAudio = 1.0,
    guidance_scale_video: ScaleVideo = 1.0,
    upscale: Upscale = 8,
    audio_model: AudioModelDir = None,
    video_model: VideoModelDir = None,
    given_video: GivenVideo = None,
    given_audio: GivenAudio = None,
    given_mode: GivenMode = "clean",
    config: ExperimentFile = None,
    prompt: Prompts = None,
) -> None:
    """Joint generation with the discriminator, and without it from the same seeds; with
    --given-video or --given-audio, generate the other modality for each given file."""
    from mmdisco.demo import write_videos
    from mmdisco.discriminator import load_discriminator
    from mmdisco.sampling import SamplingConfig, sample_batches

    given = _given_files(given_video, given_audio, given_mode, n, prompt)
    if config is not None:
        from mmdisco.cli.experiment import sample_from_yaml

        return sample_from_yaml(config, out, discriminator, prompt, given, given_mode)
    _require(discriminator=discriminator, out=out)
    settings = SamplingConfig(
        num_inference_steps=num_inference_steps,
        scheduler=scheduler,
        guidance_scale_audio=guidance_scale_audio,
        guidance_scale_video=guidance_scale_video,
    )
    check_int("seed", seed, 0)
    check_int("upscale", upscale, 1)
    audio, video = world_base_models(audio_model, video_model)
    given_latents = None if given is None else _encode_given(given, audio, video)
    n = len(given[1]) if given is not None else (n or 4)
    disc = load_discriminator(discriminator).eval()
    out.mkdir(parents=True, exist_ok=True)
    for name, d in (("independent", None), ("guided", disc)):
        a, v = sample_batches(
            audio,
            video,
            n,
            settings,
            seed=seed,
            batch_size=64,
            discriminator=d,
            given=given_latents,
            given_mode=given_mode,
            progress=True,
        )
        paths = write_videos(out, name, audio.decode(a), video.decode(v), range(n), upscale)
        typer.echo("\n".join(str(p) for p in paths))


def _given_files(
    given_video: list[Path] | None,
    given_audio: list[Path] | None,
    mode: str,
    n: int | None,
    prompts: list[str] | None,
) -> tuple[str, list[Path]] | None:
    """``(modality, files)`` of the given clips, checked against ``--n`` and ``--prompt``
    (one pair and one prompt per file), before any model is loaded."""
    if n is not None:
        check_int("n", n, 1)
    from mmdisco.sampling import GIVEN_MODES

    check_choice("given_mode", mode, GIVEN_MODES)
    if given_video and given_audio:
        raise InputError(
            "give either --given-video (video-to-audio) or --given-audio (audio-to-video), "
            "not both",
            "given_audio",
        )
    if not (given_video or given_audio):
        return None
    modality, files = ("video", given_video) if given_video else ("audio", given_audio)
    for field, count in (("n", n), ("prompt", len(prompts) if prompts else None)):
        if count is not None and count != len(files):
            what = "pairs" if field == "n" else "prompts"
            raise InputError(
                f"{count} {what} but {len(files)} --given-{modality} files; give one per file",
                field,
            )
    for path in files:
        if not path.is_file():
            raise MissingInputError(f"{path}: no such file (--given-{modality})")
    return modality, files


def _encode_given(given: tuple[str, list[Path]], audio, video):
    """The given files, checked and resampled as :mod:`mmdisco.media` says (a bad file is
    refused naming it), in their base model's space."""
    import torch

    from mmdisco.media import load_given, media_spec

    modality, files = given
    media = load_given(files, modality, media_spec(audio, video))
    with torch.no_grad():
        return modality, (audio if modality == "audio" else video).encode(media)
