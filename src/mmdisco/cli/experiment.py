"""`mmdisco cache-latents --config`, and the ``--config PATH.yaml`` side of `generate-fakes`,
`train` and `sample`: the real-model workflow driven by one experiment config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app


def load_config(path: Path):
    """The experiment config, or exit with the error (which names the file and field)."""
    from mmdisco.config import ConfigError, load_experiment

    try:
        return load_experiment(path)
    except (ConfigError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(stage, *args, **kwargs):
    """Run one stage; config and missing-file errors become one line and exit status 2."""
    from mmdisco.config import ConfigError

    try:
        return stage(*args, **kwargs)
    except (ConfigError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command("cache-latents")
def cache_latents_cmd(
    config: Annotated[Path, typer.Option(help="experiment YAML (configs/*.yaml)")],
) -> None:
    """Encode the config's real clips through both base models into its latent cache."""
    from mmdisco.experiment import cache_real_latents

    cfg = load_config(config)
    start = time.perf_counter()
    manifest = _run(cache_real_latents, cfg, _device())
    typer.echo(
        f"{manifest['num_pairs']} real pairs cached at {cfg.data.cache_dir} "
        f"({len(manifest['skipped'])} files skipped, {time.perf_counter() - start:.0f} s)"
    )


def generate_fakes_from_yaml(config: Path) -> None:
    from mmdisco.experiment import generate_fakes_from_config

    cfg = load_config(config)
    start = time.perf_counter()
    manifest = _run(generate_fakes_from_config, cfg, _device())
    typer.echo(
        f"{manifest['n']} fake pairs in {len(manifest['shards'])} shards at {cfg.fakes.out_dir} "
        f"({time.perf_counter() - start:.0f} s)"
    )


def train_from_yaml(
    config: Path, dry_run: bool = False, processes: int = 1, memory_gib: float | None = None
) -> None:
    from mmdisco.experiment import DISCRIMINATOR_DIR, dry_run_report, train_from_config

    cfg = load_config(config)
    if dry_run:
        typer.echo(_run(dry_run_report, cfg, processes, memory_gib))
        return
    result = _run(train_from_config, cfg)
    last = result.history[-1] if result.history else {}
    out = Path(cfg.output_dir) / DISCRIMINATOR_DIR
    typer.echo(f"trained in {result.seconds:.0f} s; last {last}; saved {out}")


def sample_from_yaml(
    config: Path,
    out: Path | None = None,
    discriminator: Path | None = None,
    prompts: list[str] | None = None,
) -> None:
    from mmdisco.experiment import sample_from_config

    cfg = load_config(config)
    runs = _run(sample_from_config, cfg, prompts or None, out, discriminator, _device())
    for run in runs.values():
        typer.echo("\n".join(str(p) for p in run.paths))
