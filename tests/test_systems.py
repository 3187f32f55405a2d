"""The systems comparison in its quick mode: every row, consistent numbers, resumable."""

from __future__ import annotations

import json

import pytest
import torch

from mmdisco.world.systems import METRICS, TASKS, SystemsSettings, run_systems

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("systems")
    return out, run_systems(out, SystemsSettings.quick_settings(), progress=False)


@pytest.mark.slow
def test_quick_run_writes_every_row_with_its_costs(report):
    out, rep = report
    names = {r["name"] for r in rep["rows"]}
    expected = {
        "independent base models",
        "MMDisCo",
        "MMDisCo + re-ranking (N=2)",
        "best-of-N (N=2)",
        "cascade T2V -> V2A",
        "joint model from scratch",
        "joint model + MMDisCo",
        *(
            f"{t}: {m}"
            for t in TASKS[1:]
            for m in (
                "unguided base model (chance)",
                "cascade model",
                "MMDisCo, given clean",
                "MMDisCo, given re-noised",
            )
        ),
    }
    assert expected <= names
    for row in rep["rows"]:
        assert all(0.0 <= row[m] <= 1.0 for m in METRICS), row
        assert row["sample_cpu_s_per_pair"] > 0, row["name"]
        assert row["parameters"] is not None and row["train_cpu_s"] is not None, row["name"]
    rows = {r["name"]: r for r in rep["rows"]}
    # Trainable parameters: the joint model + its discriminator is the sum of both.
    disc = rows["MMDisCo"]["parameters"]
    assert (
        rows["joint model + MMDisCo"]["parameters"]
        == rows["joint model from scratch"]["parameters"] + disc
    )
    assert rows["independent base models"]["parameters"] == 0 < disc
    md = (out / "report.md").read_text()
    assert md.count("\n| ") == len(rows) + len(TASKS)  # one header per table
    assert (out / "systems.png").stat().st_size > 10_000
    # (a rerun in another test may have rewritten the file with its own CPU timings)
    written = json.loads((out / "report.json").read_text())["rows"]
    assert [_no_cpu(r) for r in written] == [_no_cpu(r) for r in rep["rows"]]


def _no_cpu(row: dict) -> dict:
    return {k: v for k, v in row.items() if "cpu" not in k}


@pytest.mark.slow
def test_resampling_with_one_candidate_is_the_plain_row(report):
    """Candidate 0 of every pool is the plain sample of the evaluation seed, so N = 1 of
    best-of-N is the independent row and N = 1 of re-ranking is the MMDisCo row."""
    _, rep = report
    rows = {r["name"]: r for r in rep["rows"]}
    for curve, row in (
        ("best-of-N (argmax)", "independent base models"),
        ("MMDisCo + re-ranking (sir)", "MMDisCo"),
    ):
        for metric in METRICS:
            assert rep["curves"][curve]["1"][metric] == rows[row][metric], (curve, metric)


@pytest.mark.slow
def test_given_clips_come_back_valid_and_a_rerun_resumes(report, tmp_path):
    out, rep = report
    for row in rep["rows"]:
        if row["task"] == "video-to-audio":
            assert row["validity_video"] == 1.0  # the held-out real videos themselves
        if row["task"] == "audio-to-video":
            assert row["validity_audio"] == 1.0
    # A second run finds the fakes and discriminators and repeats every number.
    threads = torch.get_num_threads()
    again = run_systems(out, SystemsSettings.quick_settings(), progress=False)
    torch.set_num_threads(threads)
    assert [_no_cpu(r) for r in again["rows"]] == [_no_cpu(r) for r in rep["rows"]]
    fakes_cost = {r["name"]: r["train_cpu_s"] for r in again["rows"]}
    assert fakes_cost == {r["name"]: r["train_cpu_s"] for r in rep["rows"]}  # recorded once


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_eval", 0, "n_eval: must be >= 1, got 0"),
        ("scheduler", "euler-ish", "scheduler: must be one of 'default', "),
        ("table_candidates", 9, "table_candidates: must be >= 1 and <= 8, got 9"),
        ("disc_seeds", (), r"disc_seeds: must be a non-empty list of integers, got \(\)"),
        ("disc_seeds", (0, -1), r"disc_seeds\[1\]: must be >= 0, got -1"),
        ("clean_prob", float("nan"), "clean_prob: must be finite, got nan"),
    ],
)
def test_settings_are_checked_before_any_work(field, value, message):
    with pytest.raises(ValueError, match=message):
        SystemsSettings(**{field: value})
