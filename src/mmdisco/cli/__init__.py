"""The `mmdisco` command line: one module per command family, each adding to ``app``."""

import typer

app = typer.Typer(
    help="mmdisco: joint audio-video generation from two frozen diffusion models "
    "with discriminator guidance (MMDisCo).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Command modules register themselves on import (one line each, keep sorted).
from mmdisco.cli import (
    demo,  # noqa: F401
    evaluate,  # noqa: F401
    experiment,  # noqa: F401
    toy,  # noqa: F401
    train,  # noqa: F401
    world,  # noqa: F401
)


def main() -> None:
    app()
