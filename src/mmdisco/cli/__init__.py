"""The `mmdisco` command line: one module per command family, each adding to ``app``.

Every command registered on ``app`` gets one error path: an expected failure (an
:class:`~mmdisco.errors.MMDiscoError`, a bad value, a missing or unreadable file, a refused
pickle, a corrupt safetensors file) is printed as ``error: <what>: <what is wrong>`` and
exits with status 2; its traceback is shown only with ``--debug`` (every command has it) or
``MMDISCO_DEBUG=1``. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from mmdisco.errors import InputError, MMDiscoError

DEBUG_HELP = "show the full traceback of an error instead of one line"


def _expected_errors() -> tuple[type[BaseException], ...]:
    import av
    from safetensors import SafetensorError

    return (MMDiscoError, OSError, ValueError, SafetensorError, pickle.UnpicklingError,
            av.error.FFmpegError)  # fmt: skip


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


class App(typer.Typer):
    """A Typer app whose every command, its command groups' included, goes through
    :func:`with_error_path`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable) -> Callable:
            register(with_error_path(fn))
            return fn

        return decorator

    def add_typer(self, typer_instance: typer.Typer, *args: Any, **kwargs: Any) -> None:
        # A plain Typer group becomes an App: commands it registers later are wrapped too.
        for info in typer_instance.registered_commands:
            if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
                info.callback = with_error_path(info.callback)
        if type(typer_instance) is typer.Typer:
            typer_instance.__class__ = App
        super().add_typer(typer_instance, *args, **kwargs)


app = App(
    help="mmdisco: joint audio-video generation from two frozen diffusion models "
    "with discriminator guidance (MMDisCo).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Command modules register their commands on ``app`` when imported, so they come after it.
from mmdisco.cli import convert, demo, evaluate, experiment, toy, train, web, world  # noqa: E402,F401


def main() -> None:
    app(prog_name="mmdisco")  # the same name under `python -m mmdisco.cli`
