"""`mmdisco train-base`: train one of the synthetic world's single-modal base models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app


@app.command("train-base")
def train_base(
    modality: Annotated[str, typer.Option(help="audio or video")],
    out: Annotated[Path, typer.Option(help="output directory (config.json + model.safetensors)")],
    steps: Annotated[int, typer.Option(help="optimisation steps")] = 6400,
    seed: Annotated[int, typer.Option(help="seed of weights, data, timesteps and noise")] = 0,
    batch_size: Annotated[int, typer.Option(help="clips per step")] = 32,
    lr: Annotated[float, typer.Option(help="peak Adam learning rate")] = 2e-3,
    clips_per_chunk: Annotated[int, typer.Option(help="world clips generated per chunk")] = 1024,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads (1 is fastest for these small networks)")
    ] = 1,
) -> None:
    """Train a world base model on its own modality only, on freshly generated world clips.

    Adam (warmup, then a constant rate), EMA of the weights, v-prediction loss on the
    1000-step cosine DDPM schedule; the EMA weights are written atomically to OUT at the end.
    The defaults are the settings of the shipped weights (one CPU thread; same seed, same
    weights).
    """
    from mmdisco.world.models import TrainConfig, train_world_model

    if modality not in ("audio", "video"):
        raise typer.BadParameter(f"--modality must be audio or video, got {modality!r}")
    cfg = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, clips_per_chunk=clips_per_chunk, seed=seed
    )
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = train_world_model(modality, cfg, out_dir=out)
    typer.echo(
        f"trained {modality} model ({model.num_parameters():,} parameters) in "
        f"{time.perf_counter() - start:.0f} s; saved to {out}"
    )
