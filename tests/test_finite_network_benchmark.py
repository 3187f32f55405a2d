"""The finite-world network benchmark end to end in seconds: its rows, settings and report."""

import dataclasses
import json

import pytest

from _scripts import load_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("finite_network")


def test_one_tiny_seed_gives_every_row_and_the_report(bench, tmp_path):
    train = dataclasses.replace(bench.RECIPE, steps=3, num_real=32, num_fake=32, batch_size=16)
    run = bench.run_seed(0, tmp_path / "work", pairs=4, steps=3, train=train, scale=2.0)
    assert set(run["rows"]) == set(bench.ROWS)
    for row in run["rows"].values():
        assert set(row) == set(bench.METRICS)
        assert all(0.0 <= value <= 1.0 for value in row.values())
    settings = run["settings"]
    assert settings["world"] == "finite" and settings["training"]["negatives"] == "fake"
    assert settings["guidance_scale_audio"] == settings["guidance_scale_video"] == 2.0
    assert settings["discriminator"] == "SharedLatentDiscriminator"
    assert [c["noise_level"] for c in run["calibration"]] == list(bench.NOISE_LEVELS)
    report = bench.aggregate([json.loads(json.dumps(run))] * 2, bench.ROWS, bench.METRICS)
    text = bench.markdown(report)
    for row in bench.ROWS:
        assert f"| {row} | " in text
    assert "InfoNCE with fake negatives" in text
