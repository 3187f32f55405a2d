"""`mmdisco train-base`: train one of the synthetic world's models: a single-modal base model,
a cascade's conditional model, or the joint model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app
from mmdisco.errors import check_choice, check_int
from mmdisco.world.train import KINDS, TrainConfig

_DEFAULTS = TrainConfig()


@app.command("train-base")
def train_base(
    modality: Annotated[
        str,
        typer.Option(
            help="audio or video (base models), video-to-audio or audio-to-video (a cascade's "
            "conditional model), or joint (one model of both, trained on pairs)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="output directory (config.json + model.safetensors)")],
    steps: Annotated[int, typer.Option(help="optimisation steps")] = _DEFAULTS.steps,
    seed: Annotated[
        int, typer.Option(help="seed of weights, data, timesteps and noise")
    ] = _DEFAULTS.seed,
    batch_size: Annotated[int, typer.Option(help="clips per step")] = _DEFAULTS.batch_size,
    lr: Annotated[float, typer.Option(help="peak Adam learning rate")] = _DEFAULTS.lr,
    clips_per_chunk: Annotated[
        int, typer.Option(help="world clips generated per chunk")
    ] = _DEFAULTS.clips_per_chunk,
    half: Annotated[
        bool, typer.Option(help="store the weights as float16 (half the size on disk)")
    ] = True,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads (1 is fastest for these small networks)")
    ] = 1,
) -> None:
    """Train a world model on freshly generated world clips: a base model on its own modality
    only, or a conditional or joint model on pairs.

    Adam (warmup, then cosine decay), EMA of the weights, clean-clip (x0) loss on the
    1000-step cosine DDPM schedule with half of each batch at high noise; the EMA weights are
    written atomically to OUT at the end. The defaults are the settings of the shipped weights
    (one CPU thread; same seed, same weights).
    """
    import dataclasses

    import torch

    from mmdisco.world.train import train_world_model

    check_choice("modality", modality, KINDS)
    check_int("threads", threads, 1)
    cfg = dataclasses.replace(
        _DEFAULTS,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        clips_per_chunk=clips_per_chunk,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails now, not after training
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = train_world_model(
        modality, cfg, out_dir=out, weights_dtype=torch.float16 if half else None
    )
    typer.echo(
        f"trained {modality} model ({model.num_parameters():,} parameters) in "
        f"{time.perf_counter() - start:.0f} s ({model.config['training']['cpu_seconds']:.0f} "
        f"CPU-s); saved to {out}"
    )
