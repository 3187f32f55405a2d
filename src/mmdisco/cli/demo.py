"""`mmdisco demo`: the whole method on the synthetic audio-visual world, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app
from mmdisco.errors import check_int


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("outputs/demo"),
    quick: Annotated[
        bool, typer.Option(help="a tiny run (under a minute) that checks the pipeline")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of data, fakes, training and sampling")] = 0,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            help="world base models (audio/ and video/ inside); default: the shipped ones"
        ),
    ] = None,
    guidance_scale_audio: Annotated[
        float | None, typer.Option(help="guidance scale of the audio (default: the demo's)")
    ] = None,
    guidance_scale_video: Annotated[
        float | None, typer.Option(help="guidance scale of the video (default: the demo's)")
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
    """Fakes, one discriminator (L_D + L_DLSM), sampling unguided, guided and with the exact
    ratio, calibration against the exact ratio, evaluation and a report."""
    import dataclasses

    import torch

    from mmdisco.demo import DemoSettings, render_markdown, run_demo

    check_int("threads", threads, 0)
    if train_steps is not None:
        check_int("train_steps", train_steps, 1)
    settings = DemoSettings.quick() if quick else DemoSettings()
    changes: dict = {"seed": seed, "models_dir": None if models_dir is None else str(models_dir)}
    if guidance_scale_audio is not None:
        changes["guidance_scale_audio"] = guidance_scale_audio
    if guidance_scale_video is not None:
        changes["guidance_scale_video"] = guidance_scale_video
    if train_steps is not None:  # every discriminator, per-head step counts included
        changes["codebook_train"] = dataclasses.replace(settings.codebook_train, steps=train_steps)
        changes["train"] = dataclasses.replace(settings.train, steps=train_steps)
        changes["head_train"] = {
            head: {k: v for k, v in c.items() if k != "steps"}
            for head, c in settings.head_train.items()
        }
    settings = dataclasses.replace(settings, **changes)  # checks every number again
    if threads > 0:
        torch.set_num_threads(threads)
    report = run_demo(out, settings)
    typer.echo(render_markdown(report).split("\nSettings:")[0])
    typer.echo(f"report: {out / 'report.json'}, {out / 'report.md'}")


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
