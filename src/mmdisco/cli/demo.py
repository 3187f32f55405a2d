"""`mmdisco demo`: the whole method on a synthetic audio-visual world (the continuous one by
default, ``--world finite`` for the finite one), in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app
from mmdisco.errors import InputError, check_choice, check_int

WORLDS = ("continuous", "finite")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("outputs/demo"),
    world: Annotated[
        str,
        typer.Option(
            help="continuous: a network discriminator against the exact ratio of a world with "
            "a continuum of clips (about 5 minutes); finite: the 264-clip world with trained "
            "base models and a codebook discriminator"
        ),
    ] = "continuous",
    quick: Annotated[
        bool, typer.Option(help="a tiny run (under a minute) that checks the pipeline")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of data, fakes, training and sampling")] = 0,
    guidance_scale: Annotated[
        float | None,
        typer.Option(
            help="continuous world: the network's scale on both modalities, in [0.5, 2] "
            "(default: the demo's)"
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            help="finite world: base models (audio/ and video/ inside); default: the shipped ones"
        ),
    ] = None,
    guidance_scale_audio: Annotated[
        float | None,
        typer.Option(help="finite world: guidance scale of the audio (default: the demo's)"),
    ] = None,
    guidance_scale_video: Annotated[
        float | None,
        typer.Option(help="finite world: guidance scale of the video (default: the demo's)"),
    ] = None,
    train_steps: Annotated[
        int | None,
        typer.Option(
            help="discriminator training steps, every discriminator (default: the demo's)"
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            help="torch CPU threads; the demo's tensors are small, and on a busy machine more "
            "threads than free cores slow it down by an order of magnitude (0: torch's default)"
        ),
    ] = 1,
) -> None:
    """The method end to end on a synthetic audio-visual world: fakes, one discriminator,
    sampling unguided, guided and with the exact ratio, calibration against the exact ratio,
    evaluation and a report."""
    import torch

    check_choice("world", world, WORLDS)
    check_int("threads", threads, 0)
    if train_steps is not None:
        check_int("train_steps", train_steps, 1)
    other_world = (
        {"guidance_scale": guidance_scale}
        if world == "finite"
        else {
            "models_dir": models_dir,
            "guidance_scale_audio": guidance_scale_audio,
            "guidance_scale_video": guidance_scale_video,
        }
    )
    for name, value in other_world.items():
        if value is not None:
            raise InputError(f"applies to the other world, not --world {world}", name)
    if threads > 0:
        torch.set_num_threads(threads)
    if world == "continuous":
        text = _continuous_demo(out, seed, guidance_scale, train_steps, quick=quick)
    else:
        scales = (guidance_scale_audio, guidance_scale_video)
        text = _finite_demo(out, seed, models_dir, scales, train_steps, quick=quick)
    typer.echo(text)
    typer.echo(f"report: {out / 'report.json'}, {out / 'report.md'}")


def _continuous_demo(
    out: Path,
    seed: int,
    guidance_scale: float | None,
    train_steps: int | None,
    *,
    quick: bool,
) -> str:
    import dataclasses

    from mmdisco.world.continuous_demo import (
        ContinuousDemoSettings,
        render_markdown,
        run_continuous_demo,
    )

    settings = ContinuousDemoSettings.quick() if quick else ContinuousDemoSettings()
    changes: dict = {"seed": seed}
    if guidance_scale is not None:
        changes["guidance_scale"] = guidance_scale
    if train_steps is not None:
        changes["recipe"] = dataclasses.replace(settings.recipe, steps=train_steps)
    settings = dataclasses.replace(settings, **changes)  # checks every number again
    return render_markdown(run_continuous_demo(out, settings))


def _finite_demo(
    out: Path,
    seed: int,
    models_dir: Path | None,
    scales: tuple[float | None, float | None],
    train_steps: int | None,
    *,
    quick: bool,
) -> str:
    import dataclasses

    from mmdisco.demo import DemoSettings, render_markdown, run_demo

    settings = DemoSettings.quick() if quick else DemoSettings()
    changes: dict = {"seed": seed, "models_dir": None if models_dir is None else str(models_dir)}
    for modality, scale in zip(("audio", "video"), scales, strict=True):
        if scale is not None:
            changes[f"guidance_scale_{modality}"] = scale
    if train_steps is not None:  # every discriminator, per-head step counts included
        changes["codebook_train"] = dataclasses.replace(settings.codebook_train, steps=train_steps)
        changes["train"] = dataclasses.replace(settings.train, steps=train_steps)
        changes["head_train"] = {
            head: {k: v for k, v in c.items() if k != "steps"}
            for head, c in settings.head_train.items()
        }
    settings = dataclasses.replace(settings, **changes)  # checks every number again
    report = run_demo(out, settings)
    return render_markdown(report).split("\nSettings:")[0]


@app.command("build-world-pipeline")
def build_world_pipeline_cmd(
    out: Annotated[
        Path,
        typer.Option(
            help="pipeline folder to write (the shipped one: src/mmdisco/assets/world/pipeline)"
        ),
    ] = Path("outputs/world-pipeline"),
    work: Annotated[
        Path, typer.Option(help="the demo's work folder (fakes, checkpoints; resumable)")
    ] = Path("outputs/build-world-pipeline"),
    quick: Annotated[bool, typer.Option(help="a tiny run that checks the build only")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 1,
) -> None:
    """Train the demo's discriminators and write the best as a pipeline folder (float16
    weights when they guide as the float32 ones did; eval.json records both)."""
    import torch

    from mmdisco.demo import DemoSettings
    from mmdisco.world_pipeline import build_world_pipeline

    check_int("threads", threads, 0)
    for folder in (out, work):  # an unwritable folder fails now, not after the training
        folder.mkdir(parents=True, exist_ok=True)
    if threads > 0:
        torch.set_num_threads(threads)
    settings = DemoSettings.quick() if quick else DemoSettings()
    result = build_world_pipeline(out, settings, work_dir=work)
    typer.echo(
        f"wrote {out} ({result['discriminator']}, {result['weights_dtype']} weights): "
        f"stored {result['stored_weights']} vs the demo's {result['demo_row_float32']}"
    )
