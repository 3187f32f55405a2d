"""`mmdisco demo`: the whole method on the synthetic audio-visual world, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("outputs/demo"),
    quick: Annotated[
        bool, typer.Option(help="a tiny run (under a minute) that checks the pipeline")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of data, fakes, training and sampling")] = 0,
) -> None:
    """Fakes, three discriminators, guided vs unguided sampling, evaluation and a report."""
    from mmdisco.demo import DemoSettings, render_markdown, run_demo

    settings = DemoSettings.quick() if quick else DemoSettings()
    settings.seed = seed
    report = run_demo(out, settings)
    typer.echo(render_markdown(report).split("\nSettings:")[0])
    typer.echo(f"report: {out / 'report.json'}, {out / 'report.md'}")
