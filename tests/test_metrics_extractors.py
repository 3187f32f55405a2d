"""Feature extractors: weight loading, preprocessing, offline extractors, ImageBind scores."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmdisco.metrics import imagebind as ib
from mmdisco.metrics.base import AudioClip, FeatureExtractor, VideoClip, load_weights
from mmdisco.metrics.i3d import I3DConfig, I3DExtractor, InceptionI3d, preprocess_video
from mmdisco.metrics.offline import OfflineAudioExtractor, OfflineVideoExtractor
from mmdisco.metrics.stats import frechet_distance_from_features
from mmdisco.metrics.vggish import (
    VGGish,
    VGGishConfig,
    VGGishExtractor,
    log_mel_spectrogram,
    mel_matrix,
    waveform_to_examples,
)

TINY_VGGISH = VGGishConfig(channels=(2, 4, 4, 8), hidden=16, embedding=8)
TINY_I3D = I3DConfig(num_classes=10, width_divisor=32)


def _tone(freq: float, sr: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _save_state(module: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


# ---------------------------------------------------------------- weight loading


@pytest.mark.parametrize(
    ("factory", "make_input"),
    [
        (lambda: VGGish(TINY_VGGISH), lambda g: torch.randn(2, 1, 96, 64, generator=g)),
        (lambda: InceptionI3d(TINY_I3D), lambda g: torch.randn(1, 3, 16, 224, 224, generator=g)),
    ],
)
def test_safetensors_round_trip(tmp_path, factory, make_input):
    torch.manual_seed(0)
    src, dst = factory().eval(), factory().eval()
    for p in src.parameters():  # make sure the two really differ before loading
        p.data.add_(0.1)
    path = tmp_path / "w.safetensors"
    _save_state(src, path)
    load_weights(dst, path)
    for (key, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), key  # stored numbers: bit for bit
    x = make_input(torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(src(x), dst(x))  # two instances: up to summation order


def test_load_errors_name_the_problem(tmp_path):
    model = VGGish(TINY_VGGISH)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["features.0.wrong"] = state.pop("features.0.weight")
    bad_key = tmp_path / "bad_key.safetensors"
    save_file(state, str(bad_key))
    with pytest.raises(
        ValueError, match=r"bad_key.safetensors.*missing keys \['features.0.weight'\]"
    ):
        load_weights(VGGish(TINY_VGGISH), bad_key)
    # Same keys, different architecture width: shape mismatch listed.
    other = tmp_path / "other.safetensors"
    _save_state(VGGish(VGGishConfig(channels=(3, 4, 4, 8), hidden=16, embedding=8)), other)
    with pytest.raises(ValueError, match=r"shape mismatches.*features\.0\.weight"):
        load_weights(VGGish(TINY_VGGISH), other)
    with pytest.raises(ValueError, match="safetensors"):
        (tmp_path / "w.pth").write_bytes(b"x")
        load_weights(model, tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError):
        load_weights(model, tmp_path / "missing.safetensors")


def test_published_architectures_have_reference_sizes():
    # torchvggish has 72,141,184 parameters; the I3D logits layer is 1024 -> 400.
    assert sum(p.numel() for p in VGGish().parameters()) == 72_141_184
    i3d = InceptionI3d()
    assert i3d.logits.conv3d.weight.shape == (400, 1024, 1, 1, 1)
    assert i3d.Mixed_5c.out_channels == 1024


# ---------------------------------------------------------------- VGGish preprocessing


def test_vggish_examples_shape_and_range():
    audio = np.stack([_tone(440, 22050, 3.0), _tone(880, 22050, 3.0)])  # stereo, 22.05 kHz
    x = waveform_to_examples(audio, 22050)
    # 3 s at 16 kHz -> 1 + (48000 - 400) // 160 = 298 frames -> 3 patches of 96.
    assert x.shape == (3, 1, 96, 64) and x.dtype == torch.float32
    assert x.min() >= np.log(0.01) - 1e-5
    assert waveform_to_examples(np.zeros(8000, np.float32), 16000).shape == (0, 1, 96, 64)


def test_vggish_resampling_preserves_the_spectrum():
    at_16k = log_mel_spectrogram(_tone(1000, 16000, 1.0))
    at_44k = waveform_to_examples(_tone(1000, 44100, 1.0), 44100)[0, 0].numpy()
    assert np.abs(at_44k - at_16k[:96]).mean() < 0.05
    # The tone lands in the mel band whose centre is closest to 1 kHz.
    weights = mel_matrix(257)
    centre_hz = np.linspace(0, 8000, 257)[weights.argmax(axis=0)]
    assert at_16k.mean(axis=0).argmax() == np.abs(centre_hz - 1000).argmin()


def test_vggish_extractor_rows_per_patch():
    ex = VGGishExtractor(config=TINY_VGGISH)
    assert isinstance(ex, FeatureExtractor) and not ex.comparable_with_published
    feats = ex(AudioClip(_tone(300, 16000, 2.0), 16000))
    assert feats.shape == (2, 8) and np.isfinite(feats).all()


# ---------------------------------------------------------------- I3D preprocessing


def test_i3d_preprocess_shapes_and_scale():
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    frames[..., 0] = 255
    frames[:, :, :, 1] = 128
    x = preprocess_video(frames)
    assert x.shape == (1, 3, 16, 224, 224)
    assert torch.allclose(x[0, 0], torch.ones(16, 224, 224))
    assert torch.allclose(x[0, 2], -torch.ones(16, 224, 224))
    assert torch.allclose(x[0, 1], torch.full((16, 224, 224), 128 / 255 * 2 - 1), atol=1e-6)
    with pytest.raises(ValueError, match="16 frames"):
        preprocess_video(frames[:8])
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        preprocess_video(frames[..., :2])


def test_i3d_extractor_features():
    ex = I3DExtractor(config=TINY_I3D)
    rng = np.random.default_rng(0)
    feats = ex(VideoClip(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), 8.0))
    assert feats.shape == (1, 10) and np.isfinite(feats).all()


# ---------------------------------------------------------------- offline extractors


def test_offline_extractors_are_labelled_and_deterministic():
    a1, a2 = OfflineAudioExtractor(seed=3), OfflineAudioExtractor(seed=3)
    clip = AudioClip(_tone(500, 16000, 1.5), 16000)
    assert np.array_equal(a1(clip), a2(clip)) and a1(clip).shape == (1, 128 + 64)
    v = OfflineVideoExtractor()
    for ex in (a1, v):
        assert isinstance(ex, FeatureExtractor) and ex.comparable_with_published is False
    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    assert v(VideoClip(frames, 8.0)).shape == (1, 3 * 16 + 3 + 16)


def test_offline_features_separate_distributions():
    rng = np.random.default_rng(0)
    ex = OfflineAudioExtractor()

    def batch(freq_lo, freq_hi):
        return np.concatenate(
            [
                ex(AudioClip(_tone(rng.uniform(freq_lo, freq_hi), 16000, 1.0), 16000))
                for _ in range(12)
            ]
        )

    low1, low2, high = batch(300, 400), batch(300, 400), batch(2000, 2500)
    assert frechet_distance_from_features(low1, high) > 5 * frechet_distance_from_features(
        low1, low2
    )


# ---------------------------------------------------------------- ImageBind-style scores


def test_imagebind_audio_preprocessing():
    x = ib.preprocess_audio(_tone(1000, 44100, 5.0), 44100)
    assert x.shape == (3, 1, 128, 204)
    y = ib.preprocess_audio(_tone(1000, 16000, 5.0), 16000)
    # Resampled to 16 kHz first: same features up to the resampler's tiny out-of-band leakage.
    assert (x - y).abs().mean() < 1e-3
    # 2 s -> 1 + (32000 - 400) // 160 = 198 frames, zero-padded to 204, then normalised.
    assert torch.allclose(x[0, 0, :, 198:], torch.full((128, 6), 4.268 / 9.138))
    # Loudest band near the 1 kHz Kaldi mel bin.
    mel = 1127 * np.log(1 + np.array([20, 8000, 1000]) / 700)
    expected_bin = (mel[2] - mel[0]) / ((mel[1] - mel[0]) / 129) - 1
    assert abs(int(x[0, 0, :, :198].mean(dim=1).argmax()) - expected_bin) <= 1.5


def test_imagebind_video_preprocessing():
    frames = np.zeros((16, 90, 160, 3), np.uint8)
    frames[..., 1] = 255
    x = ib.preprocess_video(frames, fps=8.0)
    assert x.shape == (15, 3, 2, 224, 224)
    mean, std = torch.tensor(ib.CLIP_MEAN), torch.tensor(ib.CLIP_STD)
    expected = (torch.tensor([0.0, 1.0, 0.0]) - mean) / std
    assert torch.allclose(x[:, :, 0, 100, 100], expected.expand(15, 3), atol=1e-5)


class _ToyEmbedder:
    """A seeded linear joint embedding: enough to test the score plumbing."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.audio = torch.randn(128 * 204, 6, generator=g)
        self.vision = torch.randn(3 * 2 * 224 * 224, 6, generator=g) / 100

    def embed(self, modality, inputs):
        if modality == "text":
            return torch.stack([torch.ones(6) * len(t) for t in inputs])
        return inputs.flatten(1) @ getattr(self, modality)


def test_imagebind_scores_are_cosines():
    s = ib.scores_from_embeddings(
        torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    )
    assert s == {"ib_av": pytest.approx(0.5)}
    model = _ToyEmbedder()
    audio = [ib.preprocess_audio(_tone(f, 16000, 2.0), 16000) for f in (300, 900)]
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 24, 3), dtype=np.uint8)
    video = [ib.preprocess_video(f, 8.0) for f in frames]
    scores = ib.imagebind_scores(model, audio, video, ["a cat", "dog"])
    a = torch.stack(
        [torch.nn.functional.normalize(model.embed("audio", x).mean(0), dim=0) for x in audio]
    )
    v = torch.stack(
        [torch.nn.functional.normalize(model.embed("vision", x).mean(0), dim=0) for x in video]
    )
    assert scores["ib_av"] == pytest.approx(float((a * v).sum(1).mean()), rel=1e-5)
    assert set(scores) == {"ib_av", "ib_tv", "ib_ta"}
    assert all(-1 <= s <= 1 for s in scores.values())
    with pytest.raises(ValueError, match="paired"):
        ib.scores_from_embeddings(torch.ones(2, 3), torch.ones(3, 3))
