"""Expected failures, and the checks that raise them before any work is done.

:class:`MMDiscoError` is the one type the library raises for a failure the user can fix (a
bad file, a bad value, a busy directory); the CLI prints its message as one line,
``error: <what>: <what is wrong and what to do>``, and exits with status 2. Anything else
is a bug and keeps its traceback. The subclasses also derive from the built-in type a caller
would expect (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.

The ``check_*`` functions validate one number each (type, finiteness, range) and name the
field in their message; every config's ``__post_init__`` calls them, so a YAML file, a JSON
file and a command-line flag are held to the same rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class MMDiscoError(Exception):
    """A failure the user can fix; the message says what is wrong and what to do."""


class InputError(MMDiscoError, ValueError):
    """A bad value, file or directory. ``field`` names what was bad (a config field, an
    option or a path) when the message starts with it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.problem = field, message


class ConfigError(InputError):
    """A bad experiment config; the message names the file and the field."""


class MissingInputError(MMDiscoError, FileNotFoundError):
    """A file or directory that should exist does not."""


class NonFiniteError(InputError):
    """NaN or infinity where numbers must be finite (media, caches, weights, losses)."""


class BusyError(MMDiscoError, RuntimeError):
    """Another process is writing to the same directory."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(
    field: str, value: Any, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int in ``[minimum, maximum]``; bools and strings are refused."""
    if not _is_int(value):
        raise InputError(f"must be an integer, got {value!r}", field)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputError(f"must be {_bounds(minimum, maximum)}, got {value}", field)
    return value


def check_float(
    field: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite float in the range (closed unless ``open_*``)."""
    if not _is_real(value):
        raise InputError(f"must be a number, got {value!r}", field)
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"must be finite, got {value}", field)
    low = minimum is not None and (value <= minimum if open_min else value < minimum)
    high = maximum is not None and (value >= maximum if open_max else value > maximum)
    if low or high:
        bounds = _bounds(minimum, maximum, open_lo=open_min, open_hi=open_max)
        raise InputError(f"must be {bounds}, got {value}", field)
    return value


def check_ints(field: str, value: Any, minimum: int | None = None) -> tuple[int, ...]:
    """A non-empty list or tuple of ints (a string such as ``"12"`` is refused)."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise InputError(f"must be a non-empty list of integers, got {value!r}", field)
    return tuple(check_int(f"{field}[{i}]", v, minimum) for i, v in enumerate(value))


def check_fraction_range(field: str, value: Any, allow_empty: bool = False) -> tuple[float, float]:
    """A pair ``(lo, hi)`` with ``0 <= lo < hi <= 1`` (a noise range or guidance window;
    ``lo == hi`` too with ``allow_empty``)."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2:
        raise InputError(f"must be a pair [lo, hi], got {value!r}", field)
    lo = check_float(f"{field}[0]", value[0], 0.0, 1.0)
    hi = check_float(f"{field}[1]", value[1], 0.0, 1.0)
    if lo > hi or (lo == hi and not allow_empty):
        relation = "<=" if allow_empty else "<"
        raise InputError(f"must satisfy 0 <= lo {relation} hi <= 1, got {list(value)}", field)
    return lo, hi


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"must be true or false, got {value!r}", field)
    return value


def check_choice(field: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}", field)
    return value


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or a cgroup limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_memory(nbytes: float, what: str, available: int | None = None) -> None:
    """Refuse, before allocating, work estimated to need more memory than the machine has."""
    available = machine_memory() if available is None else available
    if nbytes > available:
        raise InputError(
            f"needs an estimated {_size(nbytes)} of memory, more than this machine's "
            f"{_size(available)}; make it smaller",
            what,
        )


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} PB"


def _bounds(
    lo: float | None, hi: float | None, *, open_lo: bool = False, open_hi: bool = False
) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if open_lo else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if open_hi else '<='} {hi}")
    return " and ".join(parts)
