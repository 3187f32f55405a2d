"""The last bad inputs a new user met, each refused through the CLI with exit status 2 and one
``error: ...`` line: a discriminator folder whose config.json is absurd or not an object, a
latent cache that would hold nothing, and a second writer on a directory in use."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from _tiny import audioldm_animatediff_experiment
from mmdisco.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(*args: object) -> str:
    """The one line ``mmdisco ARGS`` printed (after any progress bar) exiting with status 2."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.output, result.output
    return last


def test_cache_latents_with_no_usable_row_is_an_error(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "notes.xyz").write_text("not a video")
    (clips / "clips.jsonl").write_text('{"path": 5}\n{"path": "notes.xyz"}\n')
    data = audioldm_animatediff_experiment(tmp_path, data={"source": str(clips / "clips.jsonl")})
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(data))
    line = refused("cache-latents", "--config", config)
    assert f"error: {tmp_path / 'cache'}: no row gave a clip, so the cache is empty" in line
    assert "row 1 (" in line and "5): file not found" in line
    assert "notes.xyz): not a readable media file" in line
