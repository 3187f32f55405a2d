"""`mmdisco demo` on the continuous world (the default): the quick run end to end through the
CLI, its report, and the command's refusals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.world.continuous_demo import DEMO_RECIPE, ROWS, ContinuousDemoSettings
from mmdisco.world.continuous_eval import METRICS, NOISE_LEVELS


def _invoke(args: list[str]):
    threads = torch.get_num_threads()  # the command sets it; give it back to the test process
    try:
        return CliRunner().invoke(app, ["demo", *args])
    finally:
        torch.set_num_threads(threads)


def test_quick_continuous_demo_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    result = _invoke(["--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((out / "report.json").read_text())
    assert set(report["rows"]) == set(ROWS) == {"independent", "network", "exact_ratio"}
    for row, metrics in report["rows"].items():
        assert set(metrics) == set(METRICS), row
        assert all(0.0 <= value <= 1.0 for value in metrics.values()), (row, metrics)
    # The exact ratio with ideal base models samples the joint: its pairs agree (1.000 on
    # seeds 0-5 of the quick run), independent ones by chance.
    for metric in ("semantic", "temporal"):
        exact, independent = (report["rows"][r][metric] for r in ("exact_ratio", "independent"))
        assert exact >= 0.75 and exact > independent, metric

    settings = report["settings"]
    assert settings["world"] == "continuous" and settings["discriminator"] == (
        "SharedLatentDiscriminator"
    )
    assert settings["guidance_scale_audio"] == settings["guidance_scale_video"] == 2.0
    assert settings["use_dlsm"] is False and settings["exact_ratio_guidance_scale"] == 1.0
    assert settings["pairs"] == 8 and settings["calibration_pairs"] == {"real": 8, "fake": 8}
    assert settings["training"]["steps"] == 4 and settings["training"]["seed"] == 0
    assert 0.0 < settings["chance"]["semantic"] < 0.2
    calibration = report["calibration"]
    assert [row["noise_level"] for row in calibration] == list(NOISE_LEVELS)
    for row in calibration:
        for key in ("cos_audio", "cos_video"):
            assert row[key] is None or -1.0 <= row[key] <= 1.0
    timed = {"data", "train_network", "calibration", *(f"sample_{row}" for row in ROWS)}
    assert set(report["timings"]) == timed and report["seconds"] > 0

    md = (out / "report.md").read_text()
    assert md in result.output  # the command prints the report it writes
    for row in ROWS:
        assert f"\n| {row} | " in md
    assert md.count("\n| 0.") == len(NOISE_LEVELS)  # one calibration line per noise level
    assert (out / "report.png").stat().st_size > 1000


def test_the_demo_recipe_is_the_settings_default():
    settings = ContinuousDemoSettings(seed=3)
    assert settings.recipe is DEMO_RECIPE
    assert settings.train_config().seed == 3 and settings.train_config().steps == DEMO_RECIPE.steps
    assert settings.to_dict()["recipe"] == "DEMO_RECIPE"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--world", "foo"], "error: --world: must be one of 'continuous', 'finite', got 'foo'"),
        (["--guidance-scale", "3"], "error: --guidance-scale: must be >= 0.5 and <= 2.0, got 3.0"),
        (
            ["--guidance-scale-audio", "1"],
            "error: --guidance-scale-audio: applies to the other world, not --world continuous",
        ),
        (
            ["--world", "finite", "--guidance-scale", "1"],
            "error: --guidance-scale: applies to the other world, not --world finite",
        ),
    ],
)
def test_bad_options_give_one_error_line(tmp_path, args, message):
    result = _invoke(["--out", str(tmp_path / "demo"), "--quick", *args])
    assert result.exit_code == 2
    assert result.output.strip() == message
