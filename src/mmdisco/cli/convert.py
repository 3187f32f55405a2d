"""`mmdisco convert-official`, `mmdisco convert-auffusion`: released checkpoints to safetensors.

Both read the released pickles with ``torch.load(weights_only=True)`` (tensors only, never
code) and write a folder of ``config.json`` + ``model.safetensors`` files that the library
loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app
from mmdisco.errors import InputError


@app.command("convert-official")
def convert_official_cmd(
    checkpoint: Annotated[
        Path, typer.Option(help="a released discriminator, e.g. audioldm_animediff_vggsound.pt")
    ],
    out: Annotated[Path, typer.Option(help="output directory (config.json, model.safetensors)")],
    release: Annotated[
        str,
        typer.Option(
            help="which release: audioldm_animediff_vggsound, auffusion_videocrafter2_vggsound, "
            "mmdiffusion_aist++ or mmdiffusion_landscape (default: the file's name)"
        ),
    ] = "",
) -> None:
    """Convert one of the paper's released discriminators for `mmdisco sample`."""
    from mmdisco.discriminator.official import RELEASES, convert_official

    name = release or checkpoint.stem
    if name not in RELEASES:
        choices = ", ".join(map(repr, sorted(RELEASES)))
        hint = "" if release else " (from the checkpoint's file name; pass --release)"
        raise InputError(f"must be one of {choices}, got {name!r}{hint}", "release")
    disc = convert_official(checkpoint, name, out)
    params = sum(p.numel() for p in disc.parameters())
    typer.echo(f"{name}: {params / 1e6:.1f}M parameters -> {out}")


@app.command("convert-auffusion")
def convert_auffusion_cmd(
    source: Annotated[Path, typer.Option(help="local copy of auffusion/auffusion-full")],
    out: Annotated[Path, typer.Option(help="output folder for the 'auffusion' adapter")],
) -> None:
    """Convert the released Auffusion checkpoint (pickled vocoder and adapters) to safetensors."""
    from mmdisco.base_models.auffusion import convert_auffusion

    convert_auffusion(source, out)  # errors: one line through the CLI's error path
    typer.echo(f"Auffusion converted -> {out}")
