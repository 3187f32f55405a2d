"""The `mmdisco` command line: one module per command family, each adding to ``app``."""

import typer

app = typer.Typer(
    help="mmdisco: joint audio-video generation from two frozen diffusion models "
    "with discriminator guidance (MMDisCo).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Command modules register their commands on ``app`` when imported, so they come after it.
from mmdisco.cli import convert, demo, evaluate, experiment, toy, train, web, world  # noqa: E402,F401


def main() -> None:
    app(prog_name="mmdisco")  # the same name under `python -m mmdisco.cli`
