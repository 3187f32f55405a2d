"""The `mmdisco` command line: one module per command family, each adding to ``app``.

``mmdisco --help`` imports none of them: :data:`COMMANDS` names every command's module and
its one-line help, in the README's order, and a command's module (and with it torch,
diffusers or gradio) is imported only when that command runs or shows its own help.

Every command registered on ``app`` gets one error path: an expected failure (an
:class:`~mmdisco.errors.MMDiscoError`, a bad value, a missing or unreadable file, a refused
pickle, a corrupt safetensors file) is printed as ``error: <what>: <what is wrong>`` and
exits with status 2; its traceback is shown only with ``--debug`` (every command has it) or
``MMDISCO_DEBUG=1``. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import os
import pickle
import typing
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

from mmdisco.errors import InputError, MMDiscoError

DEBUG_HELP = "show the full traceback of an error instead of one line"


class CommandEntry(NamedTuple):
    module: str  # the module under mmdisco.cli that registers the command
    help: str  # its line in `mmdisco --help`


COMMANDS: dict[str, CommandEntry] = {
    "demo": CommandEntry(
        "demo", "The main job: the whole method on the synthetic world, with a report."
    ),
    "toy": CommandEntry("toy", "The paper's toy experiment (Table 1, Figures 2 and 4)."),
    "train-base": CommandEntry(
        "world", "Train a world base model, a cascade's conditional model or a joint model."
    ),
    "generate-fakes": CommandEntry(
        "train", "Sample N independent pairs from the two base models into a resumable cache."
    ),
    "cache-latents": CommandEntry(
        "experiment", "Encode an experiment's real clips into its latent cache."
    ),
    "train": CommandEntry(
        "train", "Train a discriminator on real pairs vs cached fakes (L_D + L_DLSM)."
    ),
    "convert-official": CommandEntry(
        "convert", "Convert one of the paper's released discriminators for `mmdisco sample`."
    ),
    "convert-auffusion": CommandEntry(
        "convert", "Convert the released Auffusion checkpoint to safetensors."
    ),
    "sample": CommandEntry(
        "train", "Joint generation with and without guidance from the same seeds, to mp4."
    ),
    "evaluate": CommandEntry(
        "evaluate", "FAD, FVD, KVD, ImageBind, AV-Align, PANNs, DeSync, CLAP of sample folders."
    ),
    "app": CommandEntry("web", "A web page: one seed unguided and guided side by side."),
    "study": CommandEntry(
        "web", "The A/B listening study: create it, invite listeners, serve it, export results."
    ),
    "build-world-pipeline": CommandEntry(
        "demo", "Train the demo's discriminators and write the best as a pipeline folder."
    ),
    "convert": CommandEntry("evaluate", "Convert a published metric checkpoint to safetensors."),
}


def _expected_errors() -> tuple[type[BaseException], ...]:
    import av
    from safetensors import SafetensorError

    return (
        MMDiscoError,
        OSError,
        ValueError,
        SafetensorError,
        pickle.UnpicklingError,
        av.error.FFmpegError,
    )


def describe_error(err: BaseException, command: Any = None) -> str:
    """One line for an expected failure. A field of ``command``'s is named by its flag; an
    error raised outside mmdisco (a library's own message) says where it came from."""
    from safetensors import SafetensorError

    if isinstance(err, InputError) and err.field and command is not None:
        for param in command.params:
            if param.name == err.field and param.opts:
                return f"{param.opts[0]}: {err.problem}"
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    elif isinstance(err, SafetensorError):
        text = f"not a readable safetensors file ({err})"
    elif isinstance(err, pickle.UnpicklingError):
        text = f"refused to unpickle anything but tensors ({err})"
    else:
        text = str(err) or type(err).__name__
    origin = _raised_in(err)
    named_file = isinstance(err, OSError) and err.filename is not None
    if isinstance(err, MMDiscoError) or named_file or origin.startswith("mmdisco"):
        return text
    return f"{text} ({type(err).__name__} from {origin}; --debug shows the traceback)"


def _raised_in(err: BaseException) -> str:
    """The top-level package of the frame that raised ``err``."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = "" if tb is None else tb.tb_frame.f_globals.get("__name__", "")
    return name.split(".")[0] or "?"


def with_error_path(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a ``--debug`` option and the one-line error path (see the module doc)."""
    signature = inspect.signature(fn, eval_str=True)
    if {"debug", "mmdisco_context"} & set(signature.parameters):
        raise TypeError(f"{fn.__name__}: 'debug' is added to every command; rename the option")
    expected = _expected_errors()

    @functools.wraps(fn)
    def run(*args: Any, debug: bool, mmdisco_context: typer.Context, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except expected as err:
            if debug or os.environ.get("MMDISCO_DEBUG"):
                raise
            typer.echo(f"error: {describe_error(err, mmdisco_context.command)}", err=True)
            raise typer.Exit(2) from None

    added = {
        "debug": (Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)], False),
        "mmdisco_context": (typer.Context, inspect.Parameter.empty),  # typer passes it
    }
    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=tp)
        for name, (tp, default) in added.items()
    ]
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *params])
    hints = typing.get_type_hints(fn, include_extras=True)
    run.__annotations__ = {**hints, **{name: tp for name, (tp, _) in added.items()}}
    return run


def help_text(fn: Callable[..., Any]) -> str:
    """``fn``'s docstring with each paragraph on one line, so the help rewraps it to the
    terminal instead of keeping the source's line breaks."""
    paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class App(typer.Typer):
    """A Typer app whose every command, its command groups' included, goes through
    :func:`with_error_path`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        def decorator(fn: Callable) -> Callable:
            help = kwargs.get("help") or help_text(fn)
            super(App, self).command(*args, **{**kwargs, "help": help})(with_error_path(fn))
            return fn

        return decorator

    def add_typer(self, typer_instance: typer.Typer, *args: Any, **kwargs: Any) -> None:
        # A plain Typer group becomes an App: commands it registers later are wrapped too.
        for info in typer_instance.registered_commands:
            if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
                info.help = info.help or help_text(info.callback)
                info.callback = with_error_path(info.callback)
        if type(typer_instance) is typer.Typer:
            typer_instance.__class__ = App
        super().add_typer(typer_instance, *args, **kwargs)


class LazyGroup(TyperGroup):
    """The top-level group. It lists :data:`COMMANDS` without importing anything, and
    imports a command's module the first time the command is looked up to run."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | TyperGroup | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"mmdisco.cli.{COMMANDS[cmd_name].module}")
            self.commands.update(typer.main.get_command(app).commands)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: typer.Context, args: list[str]
    ) -> tuple[str | None, TyperCommand | TyperGroup | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except typer.TyperException as err:  # a UsageError; Typer suggests loaded commands only
            matches = difflib.get_close_matches(args[0], COMMANDS) if args else []
            if matches and "Did you mean" not in err.message:
                suggestions = ", ".join(map(repr, matches))
                err.message = f"{err.message.rstrip('.')}. Did you mean {suggestions}?"
            raise

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        listing = copy.copy(self)  # the same group, its commands as placeholders
        listing.commands = {
            name: TyperCommand(name, help=entry.help) for name, entry in COMMANDS.items()
        }
        super(LazyGroup, listing).format_help(ctx, formatter)


app = App(
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def mmdisco() -> None:
    """mmdisco: joint audio-video generation from two frozen diffusion models with
    discriminator guidance (MMDisCo). `mmdisco COMMAND --help` explains every option."""


def main() -> None:
    app(prog_name="mmdisco")  # the same name under `python -m mmdisco.cli`
