"""PANNs CNN14: official key layout, STFT / log-mel against independent formulas, KL and IS."""

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdisco.metrics.base import AudioClip
from mmdisco.metrics.panns import (
    Cnn14,
    PANNsConfig,
    PANNsExtractor,
    inception_score,
    kl_divergences,
    prepare_waveform,
)

TINY = PANNsConfig(channels=(4, 4, 8, 8, 8, 16), embedding=16, classes=5)


def official_keys() -> dict[str, tuple[int, ...]]:
    """Cnn14(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50,
    fmax=8000, classes_num=527) of audioset_tagging_cnn, key -> shape, written out."""
    keys = {
        "spectrogram_extractor.stft.conv_real.weight": (257, 1, 512),
        "spectrogram_extractor.stft.conv_imag.weight": (257, 1, 512),
        "logmel_extractor.melW": (257, 64),
        "fc1.weight": (2048, 2048),
        "fc1.bias": (2048,),
        "fc_audioset.weight": (527, 2048),
        "fc_audioset.bias": (527,),
    }
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys |= {f"bn0.{k}": () if k == "num_batches_tracked" else (64,) for k in bn}
    cin = 1
    for i, cout in enumerate((64, 128, 256, 512, 1024, 2048), start=1):
        keys[f"conv_block{i}.conv1.weight"] = (cout, cin, 3, 3)
        keys[f"conv_block{i}.conv2.weight"] = (cout, cout, 3, 3)
        for b in ("bn1", "bn2"):
            keys |= {
                f"conv_block{i}.{b}.{k}": () if k == "num_batches_tracked" else (cout,) for k in bn
            }
        cin = cout
    return keys


def test_key_layout_is_the_official_one():
    with torch.device("meta"):
        model = Cnn14()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_keys()


def test_spectrogram_and_log_mel_equal_torch_stft_and_librosa():
    model = Cnn14(TINY).eval()
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    with torch.no_grad():
        power = model.spectrogram_extractor(x)[:, 0]  # (B, T, 257)
    window = torch.hann_window(512, periodic=True)
    ref = torch.stft(
        x, 512, 160, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    assert torch.allclose(power, ref.abs().pow(2).transpose(1, 2), rtol=1e-4, atol=1e-3)
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000, norm="slaney")
    with torch.no_grad():
        log_mel = model.logmel_extractor(power)
    expected = 10 * np.log10(np.maximum(power.numpy() @ mel.T, 1e-10))
    assert np.allclose(log_mel.numpy(), expected, atol=1e-3)


def test_forward_pools_and_heads_as_the_reference():
    model = Cnn14(TINY).eval()
    x = torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out["2048"].shape == (1, 16) and out["logits"].shape == (1, 5)
    assert (out["2048"] >= 0).all()  # the FD embedding is taken after the ReLU
    assert torch.allclose(out["logits"], model.fc_audioset(out["2048"]), atol=1e-6)


def test_inputs_of_av_benchmark_and_audioldm_eval():
    rng = np.random.default_rng(0)
    stereo = np.stack([0.2 + rng.standard_normal(8000), rng.standard_normal(8000)]).astype(
        np.float32
    )
    av = prepare_waveform(stereo, 16000)
    mono = stereo.mean(0)
    assert np.allclose(av, mono - mono.mean(), atol=1e-6)  # channel mean, mean removed
    assert prepare_waveform(np.zeros(16000 * 10, np.float32), 16000).shape == (16000 * 8,)
    old = prepare_waveform(stereo, 16000, "audioldm_eval")
    assert old.shape == (32000,) and np.allclose(
        old[:8000], stereo[0] - stereo[0].mean(), atol=1e-6
    )
    ex = PANNsExtractor(config=TINY)
    emb, logits = ex.extract(AudioClip(stereo, 16000))
    assert emb.shape == (1, 16) and logits.shape == (1, 5) and not ex.comparable_with_published
    with pytest.raises(ValueError, match="audio too short for PANNs"):
        ex.extract(AudioClip(np.zeros(100, np.float32), 16000))


def test_kl_is_av_benchmarks_formula():
    rng = np.random.default_rng(0)
    gen, ref = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    p_ref, p_gen = F.softmax(torch.tensor(ref), 1).numpy(), F.softmax(torch.tensor(gen), 1).numpy()
    expected = (p_ref * (np.log(p_ref) - np.log(p_gen))).sum() / 4
    kl = kl_divergences(gen, ref)
    assert kl["softmax"] == pytest.approx(expected, rel=1e-10)
    s_ref, s_gen = 1 / (1 + np.exp(-ref)), 1 / (1 + np.exp(-gen))
    assert kl["sigmoid"] == pytest.approx(
        (s_ref * (np.log(s_ref) - np.log(s_gen))).sum() / 4, rel=1e-10
    )
    assert kl_divergences(ref, ref)["softmax"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="paired logits"):
        kl_divergences(gen, ref[:3])


def test_inception_score_limits():
    # Confident and uniformly spread over k classes -> IS = k; identical rows -> IS = 1.
    k = 5
    confident = np.tile(np.eye(k) * 50, (4, 1))  # 20 rows, 2 splits of 10
    assert inception_score(confident, splits=1) == pytest.approx((k, 0.0), abs=1e-6)
    # Two splits after the reference's RandomState(2020) shuffle: for one-hot rows
    # KL(p || q) = -log q[class], so each split scores exp(mean -log q[class]).
    classes = np.tile(np.arange(k), 4)[np.random.RandomState(2020).permutation(20)]
    expected = []
    for part in (classes[:10], classes[10:]):
        q = np.bincount(part, minlength=k) / 10
        expected.append(np.exp(np.mean(-np.log(q[part]))))
    assert inception_score(confident, splits=2) == pytest.approx(
        (np.mean(expected), np.std(expected)), rel=1e-6
    )
    assert inception_score(np.ones((20, k)), splits=2)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="IS needs at least 10 logit rows"):
        inception_score(np.ones((5, k)))


def test_convert_panns_checkpoint(tmp_path, monkeypatch):
    from mmdisco.metrics import convert as convert_mod
    from mmdisco.metrics.base import load_weights

    monkeypatch.setitem(convert_mod.ARCHITECTURES, "panns", lambda: Cnn14(TINY))
    src = Cnn14(TINY)
    torch.save({"iteration": 560000, "model": src.state_dict()}, tmp_path / "Cnn14_16k.pth")
    dst = convert_mod.convert("panns", tmp_path / "Cnn14_16k.pth", tmp_path / "panns.safetensors")
    loaded = load_weights(Cnn14(TINY), dst)
    for k, v in src.state_dict().items():
        assert torch.allclose(loaded.state_dict()[k].double(), v.double())
