"""The calibration benchmark's quick mode: known offsets on world clips, exact truth."""

import json

import pytest
import torch

from _scripts import load_benchmark


@pytest.fixture(scope="module")
def calibration():
    return load_benchmark("metric_calibration")


def test_shift_is_exact_and_zero_filled(calibration):
    from mmdisco.world import WorldConfig

    config = WorldConfig()
    audio = torch.arange(1, 4001, dtype=torch.float32)[None]  # 2000 samples per frame
    late = calibration.shift_audio(audio, 1, config)
    assert torch.equal(late[0, :2000], torch.zeros(2000)) and late[0, 2000] == 1
    early = calibration.shift_audio(audio, -1, config)
    assert early[0, 0] == 2001 and torch.equal(early[0, 2000:], torch.zeros(2000))


def test_quick_calibration_knows_the_truth(calibration, tmp_path):
    result = calibration.calibrate(n_clips=2, offsets=(-2, 0, 2), progress=False)
    rows = result["conditions"]
    # The world's exact scores: no shift is perfectly aligned, a class swap is never semantic.
    assert rows["offset +0"]["world_temporal"]["mean"] == 1.0
    assert rows["class swap"]["world_semantic"]["mean"] == 0.0
    assert rows["class swap"]["world_temporal"]["mean"] == 1.0
    # Clips were chosen so that a 2-frame shift keeps every impact detectable: truth < 1.
    assert rows["offset +2"]["world_temporal"]["mean"] < 1.0
    assert rows["offset +2"]["world_semantic"]["mean"] == 1.0
    # AV-Align sees timing only: swapping the class leaves it unchanged.
    for key in ("av_align_2023", "av_align_2025"):
        assert rows["class swap"][key]["mean"] == pytest.approx(rows["offset +0"][key]["mean"])
    assert result["ranking"]["world_temporal"]["spearman_vs_truth"] == pytest.approx(1.0)
    assert set(result["skipped"]) == {"ib_av", "desync"}
    calibration.plot(result, tmp_path / "c.png")
    text = calibration.markdown(result)
    assert "| class swap |" in text and "Spearman vs truth" in text
    assert (tmp_path / "c.png").stat().st_size > 0
    json.dumps(result)  # JSON-able


class _ZeroOffsetSync:
    def extract_vfeats(self, vis):
        return torch.zeros(1, vis.shape[1], 8, 4)

    def extract_afeats(self, aud):
        return torch.zeros(1, aud.shape[1], 6, 4)

    def compare_v_a(self, vis, aud):
        logits = torch.zeros(1, 21)
        logits[0, 10] = 1.0  # offset 0 s
        return logits


class _MeanEmbedder:
    def embed(self, modality, inputs):
        flat = inputs.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1), torch.ones(len(flat))], -1)


def test_optional_metrics_run_when_models_are_given(calibration):
    result = calibration.calibrate(
        n_clips=1, offsets=(0,), imagebind=_MeanEmbedder(), sync_model=_ZeroOffsetSync(),
        progress=False,
    )  # fmt: skip
    row = result["conditions"]["offset +0"]
    assert row["desync"]["mean"] == 0.0 and -1.0 <= row["ib_av"]["mean"] <= 1.0
    assert result["skipped"] == {}
