"""The fake-pair cache: determinism, atomic shards, resumption after a kill."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

import mmdisco.shards as shards
import mmdisco.training.fakes as fakes
from _shrink import ShrinkModel
from mmdisco.errors import BusyError, NonFiniteError
from mmdisco.io import DirectoryLock, sha256_file
from mmdisco.sampling import SamplingConfig, sample_batches
from mmdisco.training.fakes import generate_fakes, load_fakes


def models():
    return ShrinkModel("audio", (2, 3), 1.0), ShrinkModel("video", (3, 2, 2), -1.0)


OWN_SAMPLER = SamplingConfig(scheduler="default")  # each model's own scheduler
KW = {"seed": 7, "shard_size": 4, "num_inference_steps": 10, "progress": False}


def test_samples_follow_the_base_models_and_are_seeded():
    a, v = sample_batches(*models(), 64, OWN_SAMPLER, seed=1, batch_size=32)
    assert a.shape == (64, 2, 3) and v.shape == (64, 3, 2, 2)
    assert abs(a.mean() - 1.0) < 0.1 and abs(v.mean() + 1.0) < 0.1
    a2, v2 = sample_batches(*models(), 64, OWN_SAMPLER, seed=1, batch_size=32)
    assert torch.equal(a, a2) and torch.equal(v, v2)
    a3, _ = sample_batches(*models(), 64, OWN_SAMPLER, seed=2, batch_size=32)
    assert not torch.equal(a, a3)
    # The two modalities use independent noise: no correlation between paired samples.
    corr = torch.corrcoef(torch.stack([a.flatten(1)[:, 0], v.flatten(1)[:, 0]]))[0, 1]
    assert abs(corr) < 0.35


def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    reference = generate_fakes(*models(), 10, tmp_path / "ref", **KW)
    assert [s["count"] for s in reference["shards"]] == [4, 4, 2]

    # Kill 1: while writing shard 1 (the file is half written when the process dies).
    real_save = safetensors.torch.save_file  # the writer save_tensors_atomic calls

    def dying_save(tensors, path, metadata=None):
        if "shard-00001" in str(path):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt("killed")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        generate_fakes(*models(), 10, out, **KW)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "progress-rank0.json", "shard-00000.safetensors"]
    assert [
        s["index"] for s in json.loads((out / "progress-rank0.json").read_text())["shards"]
    ] == [0]
    with pytest.raises(ValueError, match="incomplete"):
        load_fakes(out)

    # Kill 2: after shard 2 is in place but before it is recorded; and shard 0 is
    # corrupted on disk meanwhile. Resume must redo both.
    real_write = shards.write_json_atomic
    calls = {"n": 0}

    def dying_write(path, obj):
        calls["n"] += 1  # 1: the manifest at the start, 2: shard 1's record, 3: shard 2's
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        real_write(path, obj)

    monkeypatch.setattr(shards, "write_json_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate_fakes(*models(), 10, out, **KW)
    monkeypatch.setattr(shards, "write_json_atomic", real_write)
    assert (out / "shard-00002.safetensors").exists()
    (out / "shard-00000.safetensors").write_bytes(b"garbage")
    orphan = out / ".shard-00001.safetensors.tmp-k1ll3d"  # a temp file of a killed writer
    orphan.write_bytes(b"partial")

    resumed = generate_fakes(*models(), 10, out, **KW)
    assert resumed["shards"] == reference["shards"]  # same files, byte for byte (sha256)
    assert not orphan.exists() and not (out / "progress-rank0.json").exists()
    ref, got = load_fakes(tmp_path / "ref"), load_fakes(out)
    assert torch.equal(ref.audio, got.audio) and torch.equal(ref.video, got.video)
    assert ref.audio.shape == (10, 2, 3)


def test_resume_skips_finished_shards(tmp_path, monkeypatch):
    generate_fakes(*models(), 8, tmp_path, **KW)
    monkeypatch.setattr(fakes, "sample_batches", lambda *a, **k: pytest.fail("resampled"))
    generate_fakes(*models(), 8, tmp_path, **KW)


def test_other_inputs_and_tampering_are_refused(tmp_path):
    generate_fakes(*models(), 4, tmp_path, **KW)
    with pytest.raises(ValueError, match=r"was made from other inputs \(seed: was 7, now 8\)"):
        generate_fakes(*models(), 4, tmp_path, **{**KW, "seed": 8})
    other = ShrinkModel("video", (3, 2, 2), -0.5)  # same shapes, other outputs
    other.fingerprint = lambda: {**ShrinkModel.fingerprint(other), "mean": -0.5}
    with pytest.raises(ValueError, match=r"video_model\.mean: was null, now -0\.5"):
        generate_fakes(models()[0], other, 4, tmp_path, **KW)
    with pytest.raises(ValueError, match="use another directory, or delete this one to start"):
        generate_fakes(*models(), 4, tmp_path, **{**KW, "seed": 8})
    with open(tmp_path / "shard-00000.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00")
    with pytest.raises(ValueError, match="sha256"):
        load_fakes(tmp_path)


def test_a_second_writer_is_stopped_and_a_stale_lock_taken_over(tmp_path):
    busy = rf"{tmp_path} is being written by process {os.getpid()}"
    with DirectoryLock(tmp_path), pytest.raises(BusyError, match=busy):  # a live writer
        generate_fakes(*models(), 4, tmp_path, **KW)
    assert not (tmp_path / "manifest.json").exists()
    # A lock left by a killed process (its pid is gone) is stale: the next run takes it.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()})
    )
    generate_fakes(*models(), 4, tmp_path, **KW)
    assert load_fakes(tmp_path).audio.shape == (4, 2, 3)
    assert not (tmp_path / ".lock").exists()
    # Another host's lock cannot be checked: refused, with what to do.
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(BusyError, match=r"on elsewhere .* delete .*lock if that process is gone"):
        generate_fakes(*models(), 4, tmp_path, **KW)


def test_non_finite_samples_are_never_cached(tmp_path):
    audio, video = models()
    video.mean = float("nan")
    with pytest.raises(NonFiniteError, match=r"shard-00000.safetensors: 'video' holds 48 NaN"):
        generate_fakes(audio, video, 4, tmp_path, **KW)
    assert not (tmp_path / "shard-00000.safetensors").exists()
    # A shard that holds NaN (written by other means, checksum updated) is refused on load.
    generate_fakes(*models(), 4, tmp_path / "ok", **KW)
    bad = {"audio": torch.full((4, 2, 3), float("inf")), "video": torch.zeros(4, 3, 2, 2)}
    save_file(bad, tmp_path / "ok" / "shard-00000.safetensors")
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = sha256_file(tmp_path / "ok" / "shard-00000.safetensors")
    (tmp_path / "ok" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NonFiniteError, match="'audio' holds 24 NaN or infinite values"):
        load_fakes(tmp_path / "ok")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps: must be >= 1, got 0"),
        ({"num_inference_steps": -1}, "num_inference_steps: must be >= 1, got -1"),
        ({"shard_size": 0}, "shard_size: must be >= 1, got 0"),
        ({"seed": -3}, "seed: must be >= 0, got -3"),
        ({"cfg_scale": float("nan")}, "cfg_scale: must be finite, got nan"),
        ({"scheduler": "fast"}, "scheduler: must be one of"),
        ({"shard_size": 10**11}, r"shard_size: needs an estimated 14\.4 TB of memory, more"),
    ],
)
def test_numbers_are_checked_before_any_work(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        generate_fakes(
            *models(), 10**11 if change.get("shard_size") else 4, tmp_path, **{**KW, **change}
        )
    assert not tmp_path.joinpath("manifest.json").exists()


def test_captions_are_stored_and_passed_to_the_models(tmp_path):
    audio, video = models()
    generate_fakes(audio, video, 5, tmp_path, prompts=["a dog", "a bell"], **KW)
    assert load_fakes(tmp_path).captions == ["a dog", "a bell", "a dog", "a bell", "a dog"]
    assert audio.prompts_seen == [["a dog", "a bell", "a dog", "a bell"], ["a dog"]]
