"""The command line: every command explains itself in --help and refuses bad input in one line."""

import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from mmdisco.cli import app


def _commands() -> dict:
    """Every command of the app, those of command groups as "group command" (looking a
    command up imports its module)."""

    def walk(group, prefix: str) -> dict:
        found = {}
        ctx = typer.Context(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if hasattr(cmd, "commands"):
                found |= walk(cmd, f"{prefix}{name} ")
            else:
                found[prefix + name] = cmd
        return found

    return walk(typer.main.get_command(app), "")


def test_every_command_and_option_has_help():
    commands = _commands()
    assert {"toy", "demo", "train-base", "generate-fakes", "train", "sample", "evaluate"} <= set(
        commands
    )
    undocumented = [
        f"{name} {param.opts[0] if param.opts else param.name}"
        for name, cmd in commands.items()
        for param in cmd.params
        if not getattr(param, "help", None) and param.param_type_name == "option"
    ]
    assert not undocumented, f"options without help: {undocumented}"
    assert all(cmd.help for cmd in commands.values())


def test_help_runs_for_every_command():
    runner = CliRunner()
    for name in _commands():
        result = runner.invoke(app, [*name.split(), "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output


def test_python_dash_m_runs_the_cli():
    """`accelerate launch -m mmdisco.cli ...` needs the package to be runnable."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmdisco.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: mmdisco" in proc.stdout and "generate-fakes" in proc.stdout


# ---------------------------------------------------------------- the top-level help


def test_help_imports_no_command_module_and_no_torch():
    """`mmdisco --help` lists every command from the table in mmdisco.cli; neither importing
    the CLI nor its help may import torch (or any command's module)."""
    script = (
        "import sys\n"
        "import mmdisco.cli\n"
        "assert 'torch' not in sys.modules, 'import mmdisco.cli imported torch'\n"
        "try:\n"
        "    mmdisco.cli.app(['--help'], prog_name='mmdisco')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('torch', 'mmdisco.cli.')))\n"
        "print('loaded:', loaded)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout, proc.stdout
    assert "train-base" in proc.stdout and "convert-official" in proc.stdout


def test_commands_are_listed_in_the_readme_order():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n\n", 2)[1]
    in_readme = re.findall(r"^\| `mmdisco ([\w-]+)", table, flags=re.M)
    result = CliRunner().invoke(app, ["--help"])
    listed = re.findall(r"^│ ([a-z][\w-]*) ", result.output, flags=re.M)
    assert listed == in_readme and len(listed) == len(set(listed)) >= 14
    assert "completion" not in result.output  # no --install-completion / --show-completion


def test_the_command_table_names_each_command_s_module():
    """Every entry of COMMANDS loads a command of that name from its module, and every
    command a module registers is in the table (its line in `mmdisco --help`)."""
    import importlib

    from mmdisco.cli import COMMANDS

    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    for name in COMMANDS:
        assert group.get_command(ctx, name).name == name
    for module in {entry.module for entry in COMMANDS.values()}:
        importlib.import_module(f"mmdisco.cli.{module}")
    registered = set(typer.main.get_command(app).commands)
    assert registered == set(COMMANDS), registered ^ set(COMMANDS)


def test_help_texts_have_no_stray_line_breaks():
    """A command's help is paragraphs of one line each, which the terminal rewraps; the
    source's line breaks inside a paragraph would show as ragged lines."""
    for name, cmd in _commands().items():
        for paragraph in cmd.help.split("\n\n"):
            assert "\n" not in paragraph.strip(), (name, paragraph)
    result = CliRunner().invoke(app, ["train-base", "--help"])
    assert "1000-step cosine DDPM schedule" in " ".join(result.output.split())


# ---------------------------------------------------------------- one error path, every command


def _option_kind(param) -> str:
    annotation = param.type_descriptor.annotation
    kinds = {int: "int", float: "float", Path: "path", bool: "bool"}
    return kinds.get(annotation, "str")


BAD = {"int": "-1", "float": "nan", "str": "bogus"}
REQUIRED = re.compile(r"error: (--[\w-]+): is required|Missing option '(--[\w-]+)'")
CHOICE = re.compile(r"error: (--[\w-]+|\w+): must be one of '([^']+)'")


def _bad_inputs(tmp_path):
    """(command, bad args, what the message must name): for every command, each number or
    string option with a bad value, each path option with a path below a regular file and a
    garbage file, and its arguments all bad."""
    blocker = tmp_path / "blocker"  # a regular file: no path below it can be read or created
    blocker.write_text("not a folder")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a file any reader accepts" * 8)
    cases = []
    for name, command in _commands().items():
        params = [p for p in command.params if p.name not in ("debug", "help")]
        arguments = [p for p in params if p.param_type_name == "argument"]
        if arguments:
            bad = [str(blocker / p.name) if _option_kind(p) == "path" else "bogus"
                   for p in arguments]  # fmt: skip
            cases.append((name, bad, "bogus" if "bogus" in bad else "blocker"))
        for p in params:
            if p.param_type_name == "argument":
                continue
            kind = _option_kind(p)
            values = [str(blocker / "x"), str(garbage)] if kind == "path" else [BAD.get(kind)]
            cases += [(name, [p.opts[0], v], p.opts[0]) for v in values if v is not None]
    return cases


def _refusal(runner, name, args, fresh):
    """Invoke; what the command reports missing is filled in (a fresh path, the first
    allowed choice) until it refuses the bad input itself. Returns the result and what was
    added."""
    params = [p for p in _commands()[name].params if p.opts]
    flags = {p.opts[0]: p for p in params if p.param_type_name == "option"}
    arguments = [p for p in params if p.param_type_name == "argument"]
    positional: list[str] = []
    extra: list[str] = []
    for _ in range(8):
        result = runner.invoke(app, [*name.split(), *positional, *extra, *args])
        output = result.output
        if "Missing argument" in output and not positional:
            positional = [str(fresh / p.name) if _option_kind(p) == "path" else "bogus"
                          for p in arguments]  # fmt: skip
        elif (m := REQUIRED.search(output)) and (flag := m[1] or m[2]) not in args:
            kind = _option_kind(flags[flag])
            extra += [flag, str(fresh / flag.strip("-")) if kind == "path" else "1"]
        elif (m := CHOICE.search(output)) and m[1] not in args and (m[1][:2] == "--" or positional):
            if m[1].startswith("--"):
                extra += [m[1], m[2]]
            else:
                positional[[p.name for p in arguments].index(m[1])] = m[2]
        else:
            return result, [*positional, *extra]
    return result, [*positional, *extra]


def test_every_command_turns_bad_input_into_one_line(tmp_path, monkeypatch):
    """Walk every registered command (new ones included, read from the app) with bad values,
    missing and corrupt paths: each must exit 2 with one line naming the bad option or file,
    never a traceback, and before doing any work (an alarm stops a command that starts
    working instead of refusing)."""
    import signal

    def started_working(*_):
        raise TimeoutError("the command started working instead of refusing its input")

    monkeypatch.setenv("TQDM_DISABLE", "1")
    previous = signal.signal(signal.SIGALRM, started_working)
    runner = CliRunner()
    failures, cases = [], _bad_inputs(tmp_path)
    try:
        for i, (name, args, must_name) in enumerate(cases):
            signal.alarm(60)
            result, extra = _refusal(runner, name, args, tmp_path / f"fresh{i}")
            signal.alarm(0)
            output = result.output
            # The bad option or value is named, or (a path, or a command that needed other
            # inputs first) the first given input that cannot be used.
            given = [a for a in [*extra, *args] if a.startswith(("--", "/"))]
            flags = [p.opts[0] for p in _commands()[name].params if p.opts]
            path_case = args[-1].startswith("/")
            named = any(x in output for x in (must_name, args[-1])) or (
                (path_case or bool(extra)) and any(g in output for g in given + flags)
            )
            ok = (
                result.exit_code == 2
                and isinstance(result.exception, SystemExit)
                and "Traceback" not in output
                and named
                and (output.startswith("error: ") or "Invalid value" in output)
            )
            if not ok:
                shown = " ".join([*extra, *args])
                failures.append(f"mmdisco {name} {shown} -> {result.exception!r}: {output[-300:]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not failures, "\n".join(failures)
    assert len(cases) > 60 and len({c[0] for c in cases}) == len(_commands())


def test_debug_shows_the_traceback(tmp_path):
    args = ["train", "--fakes", str(tmp_path / "none"), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert str(tmp_path / "none") in result.output
    result = CliRunner().invoke(app, [*args, "--debug"])
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError)
