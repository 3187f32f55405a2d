"""CLAP through transformers' ClapModel: a tiny random checkpoint saved and loaded locally."""

import json

import numpy as np
import pytest
import torch
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    RobertaTokenizer,
)

from mmdisco.metrics.base import AudioClip
from mmdisco.metrics.clap import ClapScorer, clap_score, clap_waveform


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    """A random ClapModel + processor (HTSAT audio, Roberta text, rand_trunc/repeatpad)."""
    d = tmp_path_factory.mktemp("clap")
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 1], patch_embeds_hidden_size=8,
                          hidden_size=16, window_size=8, enable_fusion=False),
        projection_dim=8,
    )  # fmt: skip
    ClapModel(config).eval().save_pretrained(d)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġ": 4}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab["Ġ" + c] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = RobertaTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    ClapProcessor(ClapFeatureExtractor(truncation="rand_trunc"), tokenizer).save_pretrained(d)
    return d


def test_waveform_follows_av_benchmark_and_laion_clap():
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((2, 16000 * 10)) + 0.3).astype(np.float32)
    wav = clap_waveform(stereo, 16000)
    assert wav.shape == (48000 * 8,)  # 48 kHz, truncated to 8 s
    assert abs(wav.mean()) < 1e-3  # mean removed
    assert np.allclose(wav * 32767, np.round(wav * 32767), atol=1e-3)  # int16 grid


def test_scores_are_cosines_of_the_model_embeddings(tiny_clap):
    scorer = ClapScorer(tiny_clap)
    clip = AudioClip(np.sin(np.linspace(0, 400, 32000)).astype(np.float32), 16000)
    audio = scorer.embed_audio(clip)
    text = scorer.embed_text(["a dog barks", "rain"])
    assert audio.shape == (8,) and text.shape == (2, 8)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-6)
    # The text embedding is the projection of the text model's pooled output.
    model = scorer.model
    ids = scorer.processor(text=["rain"], return_tensors="pt")
    with torch.no_grad():
        manual = model.text_projection(model.text_model(**ids).pooler_output)
    assert torch.allclose(text[1], torch.nn.functional.normalize(manual, dim=-1)[0], atol=1e-5)
    score = clap_score(text[:1], audio[None])
    assert score == pytest.approx(float(text[0] @ audio), abs=1e-6)
    with pytest.raises(ValueError, match="CLAP embeddings must be paired"):
        clap_score(text, audio[None])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a transformers CLAP checkpoint directory"):
        ClapScorer(tmp_path)
