"""The last bad inputs a new user met, each refused through the CLI with exit status 2 and one
``error: ...`` line: a discriminator folder whose config.json is absurd or not an object, a
latent cache that would hold nothing, and a second writer on a directory in use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
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


def invoke(*args: object) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


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


def discriminator_folder(folder: Path, config: object) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"weight": torch.zeros(1)}, folder / "model.safetensors")
    return folder


def test_a_discriminator_too_large_for_the_machine_is_refused_before_it_is_built(tmp_path):
    # One fusion layer of 2**21 x 2**21 weights: 17.6 TB in float32.
    folder = discriminator_folder(tmp_path / "huge", {"fusion_width": 2**21})
    line = refused("sample", "--discriminator", folder, "--out", tmp_path / "out", "--n", 1)
    assert line.startswith(f"error: {folder / 'config.json'} (")
    assert "M parameters): needs an estimated" in line and "TB of memory" in line


@pytest.mark.parametrize("config", [[1, 2], "channels", 3])
def test_a_discriminator_config_that_is_not_an_object_is_named(tmp_path, config):
    folder = discriminator_folder(tmp_path / "odd", config)
    line = refused("sample", "--discriminator", folder, "--out", tmp_path / "out", "--n", 1)
    found = type(config).__name__
    assert (
        line
        == f"error: {folder / 'config.json'}: must hold a JSON object of settings, found a {found}"
    )


def test_a_second_writer_is_refused_and_the_first_ones_output_loads(tmp_path):
    """generate-fakes and train on a directory another process is writing stop with one line;
    once it is free, the same command fills it and what it wrote loads."""
    from mmdisco.io import DirectoryLock
    from mmdisco.training.fakes import load_fakes

    fakes = tmp_path / "fakes"
    make_fakes = ("generate-fakes", "--out", fakes, "--n", 2, "--shard-size", 1, "--steps", 1)
    with DirectoryLock(fakes):
        line = refused(*make_fakes)
    assert line.startswith(f"error: {fakes} is being written by process ")
    assert not (fakes / "manifest.json").exists()
    invoke(*make_fakes)
    assert load_fakes(fakes).audio.shape[0] == 2
    run = tmp_path / "run"
    train = ("train", "--fakes", fakes, "--out", run, "--n-real", 2, "--steps", 1)
    with DirectoryLock(run):
        line = refused(*train)
    assert line.startswith(f"error: {run} is being written by process ")
    assert not (run / "discriminator").exists()


def test_training_reads_the_cfg_scales_the_fakes_were_sampled_with():
    from types import SimpleNamespace

    from mmdisco.experiment import fake_cfg_scales

    scales = {name: SimpleNamespace(cfg_scale=s) for name, s in (("audio", 2.5), ("video", 7.5))}
    cfg = SimpleNamespace(**scales, fakes=SimpleNamespace(out_dir="fakes"))
    manifest = {"fingerprint": {"cfg_scale_audio": 3.0, "cfg_scale_video": 7.5}}
    with pytest.warns(UserWarning, match=r"sampled with CFG scales \(3\.0, 7\.5\)"):
        assert fake_cfg_scales(cfg, manifest) == (3.0, 7.5)
