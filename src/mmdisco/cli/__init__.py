"""The `mmdisco` command line: one module per command family, each adding to ``app``."""

import typer

app = typer.Typer(
    help="mmdisco: joint audio-video generation from two frozen diffusion models "
    "with discriminator guidance (MMDisCo).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Command modules register themselves on import (one line each, keep sorted).
from mmdisco.cli import demo  # noqa: E402,F401
from mmdisco.cli import evaluate  # noqa: E402,F401
from mmdisco.cli import experiment  # noqa: E402,F401
from mmdisco.cli import toy  # noqa: E402,F401
from mmdisco.cli import train  # noqa: E402,F401
from mmdisco.cli import world  # noqa: E402,F401


def main() -> None:
    app()
