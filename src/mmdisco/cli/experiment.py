"""`mmdisco cache-latents --config`, and the ``--config PATH.yaml`` side of `generate-fakes`,
`train` and `sample`: the real-model workflow driven by one experiment config."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mmdisco.cli import app


def load_config(path: Path):
    """The experiment config (errors name the file and the field)."""
    from mmdisco.config import load_experiment

    return load_experiment(path)


def process_device() -> str:
    """This process's device. Under ``accelerate launch`` the process joins its group, so
    the caches written by ``cache-latents`` and ``generate-fakes`` split their shards."""
    import torch
    from accelerate import PartialState

    return str(PartialState(cpu=not torch.cuda.is_available()).device)


def is_main_process() -> bool:
    from mmdisco.shards import distributed

    return distributed()[0] == 0


@app.command("cache-latents")
def cache_latents_cmd(
    config: Annotated[Path, typer.Option(help="experiment YAML (configs/*.yaml)")],
) -> None:
    """Encode the config's real clips through both base models into its latent cache."""
    from mmdisco.experiment import cache_real_latents

    _run_stage(
        cache_real_latents,
        config,
        lambda cfg, m, seconds: (
            f"{m['num_pairs']} real pairs cached at {cfg.data.cache_dir} "
            f"({len(m['skipped'])} rows skipped, {seconds:.0f} s)"
        ),
    )


def generate_fakes_from_yaml(config: Path) -> None:
    from mmdisco.experiment import generate_fakes_from_config

    _run_stage(
        generate_fakes_from_config,
        config,
        lambda cfg, m, seconds: (
            f"{m['n']} fake pairs in {len(m['shards'])} shards at "
            f"{cfg.fakes.out_dir} ({seconds:.0f} s)"
        ),
    )


def _run_stage(
    stage: Callable[..., dict[str, Any]],
    config: Path,
    summary: Callable[[Any, dict[str, Any], float], str],
) -> None:
    """Run one caching stage of ``config`` on this process's device; the main process prints
    ``summary(cfg, manifest, seconds)``."""
    from mmdisco.training.distributed import finish_processes

    cfg = load_config(config)
    start = time.perf_counter()
    manifest = stage(cfg, process_device())
    main = is_main_process()
    finish_processes()
    if main:
        typer.echo(summary(cfg, manifest, time.perf_counter() - start))


def train_from_yaml(
    config: Path, dry_run: bool = False, processes: int = 1, memory_gib: float | None = None
) -> None:
    from mmdisco.experiment import DISCRIMINATOR_DIR, train_from_config
    from mmdisco.training.distributed import finish_processes
    from mmdisco.training.memory import dry_run_report

    cfg = load_config(config)
    if dry_run:
        typer.echo(dry_run_report(cfg, processes, memory_gib))
        return
    result = train_from_config(cfg)
    main = is_main_process()
    finish_processes()
    if main:
        last = result.history[-1] if result.history else {}
        out = Path(cfg.output_dir) / DISCRIMINATOR_DIR
        typer.echo(f"trained in {result.seconds:.0f} s; last {last}; saved {out}")


def sample_from_yaml(
    config: Path,
    out: Path | None = None,
    discriminator: Path | None = None,
    prompts: list[str] | None = None,
    given: tuple[str, list[Path]] | None = None,
    given_mode: str = "clean",
) -> None:
    from mmdisco.discriminator.official import SAMPLING_FILE, release_sampling
    from mmdisco.experiment import DISCRIMINATOR_DIR, sample_from_config

    cfg = load_config(config)
    disc_dir = discriminator or Path(cfg.output_dir) / DISCRIMINATOR_DIR
    settings = release_sampling(disc_dir)
    if settings:
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        typer.echo(f"sampling as the release ({disc_dir / SAMPLING_FILE}): {shown}")
    runs = sample_from_config(
        cfg,
        prompts or None,
        out,
        discriminator,
        process_device(),
        given=given,
        given_mode=given_mode,
    )
    for run in runs.values():
        typer.echo("\n".join(str(p) for p in run.paths))
