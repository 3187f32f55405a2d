"""The web pages: `mmdisco app` (Gradio: unguided vs guided from one seed) and `mmdisco study`
(the A/B listening study)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app


@app.command("app")
def app_cmd(
    pipeline: Annotated[
        Path | None,
        typer.Option(help="pipeline folder (model_index.json); default: the shipped world one"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to serve on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 7860,
    out: Annotated[
        Path | None, typer.Option(help="folder for the generated mp4 files (default: a temp one)")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 1,
) -> None:
    """Serve the page: pick a seed (and a world class, or a prompt for real models), scales
    and steps, and see and hear the base models alone beside MMDisCo-guided generation."""
    import torch

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from mmdisco.app import launch
    from mmdisco.pipeline import WORLD_PIPELINE

    if threads > 0:
        torch.set_num_threads(threads)
    launch(pipeline or WORLD_PIPELINE, host=host, port=port, out_dir=out)

