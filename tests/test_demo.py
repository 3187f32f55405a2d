"""`mmdisco demo --world finite --quick`: the whole pipeline end to end on the finite world (a
minute-scale run)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.demo import METRICS


@pytest.mark.slow
def test_quick_demo_writes_a_complete_report(tmp_path):
    from mmdisco.media import read_mp4
    from mmdisco.world import WorldConfig

    out = tmp_path / "demo"
    threads = torch.get_num_threads()  # the command sets it; give it back to the test process
    try:
        args = ["demo", "--world", "finite", "--out", str(out), "--quick"]
        result = CliRunner().invoke(app, args)
        first = (out / "report.json").read_text()
        again = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads(first)
    rows = ["independent", "exact_ratio", "mmdisco_codebook", "real"]
    for row in rows:
        for metric in METRICS:
            assert 0.0 <= report[row][metric] <= 1.0, (row, metric)
    # Held-out real pairs agree (the ceiling); the world's detectors are exact.
    assert report["real"]["semantic"] > 0.9 and report["real"]["temporal"] > 0.8
    assert set(report["training"]) == {"codebook"}
    assert report["training"]["codebook"]["seconds"] > 0
    assert report["settings"]["codebook_train"]["steps"] == 4 and report["seconds"] > 0
    # Calibration of the trained discriminator and of the exact ratio against itself.
    calibration = report["calibration"]
    assert set(calibration) == {"codebook", "exact"}
    assert [r["noise_level"] for r in calibration["codebook"]] == [0.1, 0.3, 0.5, 0.7, 0.9]
    for row in calibration["exact"]:
        assert row["logit_corr"] == pytest.approx(1.0, abs=1e-6)
        assert row["cos_audio"] is None or row["cos_audio"] == pytest.approx(1.0, abs=1e-4)
    assert (out / "calibration.png").stat().st_size > 1000

    md = (out / "report.md").read_text()
    assert md.count("\n| ") == len(rows) + 1  # header + one row per method
    assert (out / "samples.png").stat().st_size > 1000
    clips = sorted(out.glob("*.mp4"))
    assert [p.name for p in clips] == ["independent_00.mp4", f"{report['best']}_00.mp4"]
    cfg = WorldConfig()
    clip = read_mp4(clips[0])
    assert clip.fps == cfg.fps and clip.frames.shape[0] == cfg.num_frames
    assert abs(len(clip.audio) - cfg.sample_rate * cfg.duration) < cfg.sample_rate * 0.05

    # Checkpoints and the fake cache make a second run resume instead of redoing the work.
    assert again.exit_code == 0, again.output
    report2 = json.loads((out / "report.json").read_text())
    assert report2["training"]["codebook"]["resumed_from_step"] == 4
    for row in rows:
        assert report2[row] == report[row]  # same seeds, same weights: same samples


def test_head_train_overrides_apply_to_their_head_only():
    from mmdisco.demo import DemoSettings

    settings = DemoSettings(head_train={"mlp": {"steps": 7, "noise_range": (0.0, 1.0)}})
    mlp, other = settings.train_config("mlp"), settings.train_config("time_aligned")
    assert (mlp.steps, mlp.noise_range) == (7, (0.0, 1.0))
    assert other == settings.train and mlp.lr == other.lr
    with pytest.raises(ValueError, match=r"head_train\['mlp'\]: .*stepz"):  # when made
        DemoSettings(head_train={"mlp": {"stepz": 1}})
    with pytest.raises(ValueError, match=r"head_train\['mlp'\]: steps: must be >= 1, got 0"):
        DemoSettings(head_train={"mlp": {"steps": 0}})
