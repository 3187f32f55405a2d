"""The command line: every command and every option explains itself in --help."""

import subprocess
import sys

import typer
from typer.testing import CliRunner

from mmdisco.cli import app


def _commands() -> dict:
    return {name: cmd for name, cmd in typer.main.get_command(app).commands.items()}


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
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output


def test_python_dash_m_runs_the_cli():
    """`accelerate launch -m mmdisco.cli ...` needs the package to be runnable."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmdisco.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: mmdisco" in proc.stdout and "generate-fakes" in proc.stdout
