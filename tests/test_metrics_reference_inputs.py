"""The references' exact inputs: torchaudio resampling, audioldm_eval's FAD input."""

import math

import numpy as np
import pytest
import torch

from mmdisco.metrics.base import resample, sinc_resample
from mmdisco.metrics.vggish import audioldm_eval_waveform, waveform_to_examples


def direct_sinc_resample(x: np.ndarray, orig: int, new: int, width: int = 6, rolloff=0.99):
    """torchaudio's sinc_interp_hann written as a plain sum over input samples: output n sits
    at n * orig / new input samples; the tap of input k is the Hann-tapered sinc of the
    distance, with cutoff rolloff * min(orig, new) (rates reduced by their gcd)."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    out = np.zeros(math.ceil(new * len(x) / orig))
    for n in range(len(out)):
        u = (np.arange(len(x)) - n * orig / new) / orig * base
        u = np.clip(u, -width, width)
        taps = np.sinc(u) * np.cos(u * np.pi / width / 2) ** 2 * base / orig
        out[n] = taps @ x
    return out


@pytest.mark.parametrize(("orig", "new"), [(48000, 16000), (44100, 16000), (16000, 22050)])
def test_sinc_resample_equals_the_direct_sum(orig, new):
    x = np.random.default_rng(0).standard_normal(700)
    ours = sinc_resample(torch.from_numpy(x), orig, new).numpy()
    assert ours.shape == (
        math.ceil(new / math.gcd(orig, new) * 700 / (orig // math.gcd(orig, new))),
    )
    assert np.allclose(ours, direct_sinc_resample(x, orig, new), atol=1e-10)


def _gain_db(freq: float, orig: int = 48000, new: int = 16000) -> float:
    t = np.arange(orig * 2) / orig
    y = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), orig, new, "torchaudio")
    return float(20 * np.log10(np.sqrt(2) * y[2000:-2000].std()))


def test_torchaudio_resampler_response():
    # A windowed-sinc low-pass passes half the amplitude at its cutoff, 0.99 x 8 kHz.
    assert _gain_db(7920) == pytest.approx(-6.02, abs=0.05)
    # -3.2 dB at 7.4 kHz (measured on torchaudio.functional.resample, 48 -> 16 kHz).
    assert _gain_db(7400) == pytest.approx(-3.2, abs=0.05)
    assert abs(_gain_db(1000)) < 0.01
    # soxr is flat there; the two resamplers really differ.
    t = np.arange(96000) / 48000
    y = resample(np.sin(2 * np.pi * 7400 * t).astype(np.float32), 48000, 16000, "soxr")
    assert abs(20 * np.log10(np.sqrt(2) * y[2000:-2000].std())) < 0.1
    with pytest.raises(ValueError, match="unknown resampler 'sinc'"):
        resample(t, 48000, 16000, "sinc")


def test_audioldm_eval_input_first_channel_mean_removed_padded():
    rng = np.random.default_rng(0)
    left = (0.3 + 0.1 * rng.standard_normal(16000 * 3 // 2)).astype(np.float32)  # 1.5 s, DC 0.3
    right = rng.standard_normal(left.shape[0]).astype(np.float32)
    wav = audioldm_eval_waveform(np.stack([left, right]), 16000)
    assert wav.shape == (32000,)  # padded to 2 s
    assert np.allclose(wav[: left.shape[0]], left - left.mean(), atol=1e-6)  # channel 0 only
    assert np.all(wav[left.shape[0] :] == 0)
    assert audioldm_eval_waveform(np.zeros(48000 * 3, np.float32), 48000).shape == (48000,)


def test_fad_rows_for_short_clips_follow_audioldm_eval():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(25600) / 16000)).astype(np.float32)
    # A 1.6 s clip (Landscape / AIST++) gives 2 VGGish rows in audioldm_eval, 1 in torchvggish.
    assert waveform_to_examples(tone, 16000, "audioldm_eval").shape[0] == 2
    assert waveform_to_examples(tone, 16000, "torchvggish").shape[0] == 1
    # A 0.9 s clip is not dropped by audioldm_eval.
    assert waveform_to_examples(tone[:14400], 16000, "audioldm_eval").shape[0] == 2
    assert waveform_to_examples(tone[:14400], 16000, "torchvggish").shape[0] == 0
    with pytest.raises(ValueError, match="unknown audio_input"):
        waveform_to_examples(tone, 16000, "vggish")


# ---------------------------------------------------------------- FVD weights


def _i3d_checkpoint(tmp_path, name):
    from mmdisco.metrics.i3d import I3DConfig, InceptionI3d

    tiny = I3DConfig(num_classes=10, width_divisor=32)
    torch.save(InceptionI3d(tiny).state_dict(), tmp_path / name)
    return tiny


@pytest.mark.parametrize(
    ("name", "variant", "comparable"),
    [("i3d_pretrained_400.pt", "tfhub", True), ("rgb_imagenet.pt", "deepmind", False)],
)
def test_i3d_variant_is_recorded_and_decides_comparability(
    tmp_path, monkeypatch, name, variant, comparable
):
    from mmdisco.metrics import convert as convert_mod
    from mmdisco.metrics.i3d import I3DExtractor, InceptionI3d, weights_variant

    tiny = _i3d_checkpoint(tmp_path, name)
    monkeypatch.setitem(convert_mod.ARCHITECTURES, "i3d", lambda: InceptionI3d(tiny))
    dst = convert_mod.convert("i3d", tmp_path / name, tmp_path / "i3d.safetensors")
    assert weights_variant(dst) == variant
    ex = I3DExtractor(dst, config=tiny)
    assert ex.variant == variant
    # A tiny config is never comparable; the full network is, with TF-Hub weights only.
    assert not ex.comparable_with_published
    monkeypatch.setattr("mmdisco.metrics.i3d.I3DConfig.__eq__", lambda a, b: True)
    assert I3DExtractor(dst, config=tiny).comparable_with_published is comparable


def test_i3d_unknown_file_needs_a_variant(tmp_path, monkeypatch):
    from mmdisco.metrics import convert as convert_mod
    from mmdisco.metrics.i3d import InceptionI3d, weights_variant

    tiny = _i3d_checkpoint(tmp_path, "weights.pt")
    monkeypatch.setitem(convert_mod.ARCHITECTURES, "i3d", lambda: InceptionI3d(tiny))
    with pytest.raises(ValueError, match="cannot tell which I3D weights these are; pass --variant"):
        convert_mod.convert("i3d", tmp_path / "weights.pt", tmp_path / "i3d.safetensors")
    dst = convert_mod.convert("i3d", tmp_path / "weights.pt", tmp_path / "i3d.safetensors", "tfhub")
    assert weights_variant(dst) == "tfhub"
    with pytest.raises(ValueError, match="variant: must be one of 'deepmind', 'tfhub', got 'kin"):
        convert_mod.convert("i3d", tmp_path / "weights.pt", tmp_path / "x.safetensors", "kinetics")


# ---------------------------------------------------------------- ImageBind data.py


def test_imagebind_clip_frames_follow_decord_and_uniform_subsample():
    from mmdisco.metrics.imagebind import clip_frame_indices, clip_starts

    # 33 frames at 10 fps: clips start at k * 1.3 / 4 s; decord keeps frames
    # ceil(10 s) .. ceil(10 (s + 2)) - 1 and UniformTemporalSubsample(2) the first and last.
    starts = clip_starts(33 / 10, 2.0, 5)
    got = [clip_frame_indices(33, 10.0, s, s + 2) for s in starts]
    assert got == [[0, 19], [4, 23], [7, 26], [10, 29], [13, 32]]  # round() would give 3 at k=1
    # Shorter than 2 s: every clip is the whole video.
    assert [clip_frame_indices(12, 8.0, s, s + 2) for s in clip_starts(1.5, 2.0, 5)] == [
        [0, 11]
    ] * 5


def test_imagebind_resize_floors_and_centre_crop_rounds_up():
    from mmdisco.metrics import imagebind as ib

    x = torch.arange(70 * 99, dtype=torch.float32).reshape(1, 1, 70, 99)
    assert ib.short_side_scale(x, 224).shape[-2:] == (224, 316)  # 99 / 70 * 224 = 316.8
    y = torch.arange(224 * 317).reshape(224, 317)
    crops = ib.three_crops(y, 224)
    assert [int(c[0, 0]) for c in crops] == [0, 47, 93]  # (317 - 224) / 2 = 46.5 -> 47
    tall = ib.three_crops(y.T, 224)
    assert [int(c[0, 0]) for c in tall] == [0, 47, 93]  # y.T[r, 0] = r


def test_imagebind_video_frames_are_the_reference_ones():
    from mmdisco.metrics import imagebind as ib

    frames = np.zeros((33, 224, 224, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(33)  # frame index written into one pixel
    x = ib.preprocess_video(frames, 10.0)
    picked = x[::3, 0, :, 0, 0] * ib.CLIP_STD[0] + ib.CLIP_MEAN[0]  # first crop of each clip
    assert torch.allclose(
        picked * 255,
        torch.tensor([[0, 19], [4, 23], [7, 26], [10, 29], [13, 32]]).float(),
        atol=1e-3,
    )


def test_imagebind_audio_reads_channel_zero_after_the_joint_mean():
    from mmdisco.metrics import imagebind as ib

    rng = np.random.default_rng(0)
    left = 0.1 * rng.standard_normal(32000).astype(np.float32)
    right = (0.5 + 0.1 * rng.standard_normal(32000)).astype(np.float32)  # DC 0.5
    x = ib.preprocess_audio(np.stack([left, right]), 16000)
    fbank = ib.kaldi_fbank(left - np.stack([left, right]).mean(), 16000).T
    expected = (np.pad(fbank, ((0, 0), (0, 204 - fbank.shape[1]))) + 4.268) / 9.138
    assert np.allclose(x[0, 0].numpy(), expected, atol=1e-4)
    # Averaging the channels (what we did before) gives other features.
    assert not np.allclose(
        ib.preprocess_audio((left + right) / 2, 16000)[0, 0].numpy(), expected, atol=1e-2
    )


def _imagebind_reference_fbanks(audio: np.ndarray) -> np.ndarray:
    """ImageBind's data.py at 16 kHz: three clips sliced from one waveform tensor, and
    ``waveform -= waveform.mean()`` on each slice, a view, before its fbank."""
    from mmdisco.metrics import imagebind as ib

    waveform = torch.from_numpy(audio.copy())
    out = []
    for start in ib.clip_starts(waveform.shape[1] / 16000, 2.0, 3):
        clip = waveform[:, int(start * 16000) : int((start + 2) * 16000)]
        clip -= clip.mean()
        fbank = ib.kaldi_fbank(clip[0].numpy(), 16000).T
        out.append((np.pad(fbank, ((0, 0), (0, 204 - fbank.shape[1]))) + 4.268) / 9.138)
    return np.stack(out)


@pytest.mark.parametrize("shape", [(2, 64000), (1, 84800)])  # stereo 4 s, mono 5.3 s
def test_imagebind_audio_overlapping_clips_see_earlier_mean_removal(shape):
    from mmdisco.metrics import imagebind as ib

    rng = np.random.default_rng(1)
    drift = np.linspace(0.0, 0.8, shape[1])  # a slow DC drift: each clip has its own mean
    audio = 0.05 * rng.standard_normal(shape) + drift * np.arange(1, shape[0] + 1)[:, None]
    audio = audio.astype(np.float32)
    given = audio.copy()
    expected = _imagebind_reference_fbanks(audio)
    x = ib.preprocess_audio(audio, 16000)[:, 0].numpy()
    assert np.allclose(x, expected, atol=1e-4)
    assert np.array_equal(audio, given)  # the caller's array is not the shared waveform
    # Each clip minus only its own mean: the first clip agrees, the later ones do not.
    own = ib.preprocess_audio(audio, 16000, shared_mean_removal=False)[:, 0].numpy()
    assert np.allclose(own[0], expected[0], atol=1e-4)
    assert np.abs(own[1:] - expected[1:]).max() > 1e-2
