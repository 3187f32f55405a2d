"""The built-in Synchformer: av-benchmark's key layout, divided attention against a dense
masked reference, conversion of the released state dict, DeSync through `mmdisco evaluate`."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.errors import InputError
from mmdisco.media import write_mp4
from mmdisco.metrics.base import AudioClip, VideoClip
from mmdisco.metrics.convert import convert_synchformer
from mmdisco.metrics.desync import DeSync, SyncModel
from mmdisco.metrics.synchformer import (
    DividedAttention,
    Synchformer,
    SynchformerConfig,
    load_synchformer,
    save_synchformer,
)

TINY = dict(dim=16, video_depth=1, video_heads=2, audio_depth=1, audio_heads=2,
            global_depth=1, global_heads=2)  # fmt: skip


def random_model(seed: int = 0, **sizes) -> Synchformer:
    """Random weights everywhere (the reference's init zeroes some layers)."""
    model = Synchformer(SynchformerConfig(**sizes)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm = name.endswith("weight") and p.ndim == 1
            p.copy_(1 + 0.1 * noise if is_norm else 0.2 * noise)
    return model


def test_full_size_key_layout_is_av_benchmarks():
    """Key names and shapes of av-benchmark's ``Synchformer().state_dict()`` (513 tensors,
    237.5M parameters): the released ``synchformer_state_dict.pth`` loads as it is."""
    with torch.device("meta"):
        state = Synchformer().state_dict()
    assert len(state) == 513
    assert sum(v.numel() for v in state.values()) == 237_460_245
    expected = {
        "vfeat_extractor.patch_embed.proj.weight": (768, 3, 16, 16),
        "vfeat_extractor.patch_embed_3d.proj.weight": (768, 3, 2, 16, 16),
        "vfeat_extractor.pos_embed": (1, 197, 768),
        "vfeat_extractor.temp_embed": (1, 8, 768),
        "vfeat_extractor.blocks.11.timeattn.qkv.weight": (2304, 768),
        "vfeat_extractor.blocks.11.norm3.bias": (768,),
        "vfeat_extractor.spatial_attn_agg.cls_token": (1, 1, 768),
        "vfeat_extractor.spatial_attn_agg.self_attn.in_proj_weight": (2304, 768),
        "afeat_extractor.ast.embeddings.position_embeddings": (1, 74, 768),
        "afeat_extractor.ast.embeddings.patch_embeddings.projection.weight": (768, 1, 16, 16),
        "afeat_extractor.ast.encoder.layer.11.attention.attention.query.weight": (768, 768),
        "afeat_extractor.ast.encoder.layer.11.attention.output.dense.weight": (768, 768),
        "afeat_extractor.ast.encoder.layer.11.intermediate.dense.weight": (3072, 768),
        "afeat_extractor.ast.layernorm.weight": (768,),
        "afeat_extractor.freq_attn_agg.linear1.weight": (3072, 768),
        "vproj.weight": (768, 768),
        "transformer.OFF_tok": (1, 1, 768),
        "transformer.pos_emb_cfg.pos_emb": (1, 198, 768),
        "transformer.blocks.2.attn.query.weight": (768, 768),
        "transformer.blocks.2.mlp.2.weight": (768, 3072),
        "transformer.off_head.weight": (21, 768),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    top = collections.Counter(k.split(".")[0] for k in state)
    # video: 2 patch embeddings (4) + cls/pos/temp (3) + 12 blocks x 18 + norm (2) + pooling
    # layer (13); audio: embeddings (5) + 12 layers x 16 + layernorm (2) + pooling layer (13);
    # transformer: in-norms (4) + OFF/MOD/pos (3) + 3 blocks x 16 + ln_f (2) + head (2).
    assert top == {"vfeat_extractor": 238, "afeat_extractor": 212, "vproj": 2, "aproj": 2,
                   "transformer": 59}  # fmt: skip


@pytest.mark.parametrize("over_time", [True, False])
def test_divided_attention_equals_dense_attention_with_the_group_mask(over_time):
    """CLS attends to everything; a patch token to CLS and its own frame (space) or its own
    patch position over frames (time)."""
    torch.manual_seed(0)
    frames, patches, dim, heads = 3, 4, 8, 2
    attn = DividedAttention(dim, heads)
    x = torch.randn(2, 1 + frames * patches, dim)
    frame = torch.tensor([-1] + [i // patches for i in range(frames * patches)])
    column = torch.tensor([-1] + [i % patches for i in range(frames * patches)])
    group = column if over_time else frame
    allowed = (group[:, None] == group[None, :]) | (group[None, :] == -1) | (group[:, None] == -1)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in attn.qkv(x).chunk(3, -1))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    expected = attn.proj(dense.transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x, frames, over_time), expected, atol=1e-6, rtol=1e-5)


def test_shapes_on_short_clips_and_the_window_length_check():
    model = random_model(**TINY, image_size=32)
    assert isinstance(model, SyncModel)
    with torch.no_grad():
        vis = model.extract_vfeats(torch.randn(2, 14, 16, 3, 32, 32))
        aud = model.extract_afeats(torch.randn(2, 14, 1, 128, 66))
        assert vis.shape == (2, 14, 8, 16) and aud.shape == (2, 14, 6, 16)
        logits = model.compare_v_a(vis, aud)
        assert logits.shape == (2, 21) and torch.isfinite(logits).all()
        # Segments are encoded independently: one segment alone gives the same features.
        torch.testing.assert_close(
            model.extract_vfeats(torch.zeros(1, 1, 16, 3, 32, 32))[0, 0],
            model.extract_vfeats(torch.zeros(1, 3, 16, 3, 32, 32))[0, 2],
        )
        with pytest.raises(ValueError, match=r"windows of 198 tokens .* got 184"):
            model.compare_v_a(vis[:, :13], aud[:, :13])


def test_convert_released_layout_and_key_errors(tmp_path):
    model = random_model(**TINY, image_size=32)
    state = model.state_dict()
    torch.save(state, tmp_path / "synchformer_state_dict.pth")  # plain dict, as released
    dst = convert_synchformer(tmp_path / "synchformer_state_dict.pth",
                              tmp_path / "sync.safetensors", model.config)  # fmt: skip
    loaded = load_synchformer(dst)
    assert loaded.config == model.config and not loaded.training
    vis, aud = torch.randn(1, 14, 8, 16), torch.randn(1, 14, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.compare_v_a(vis, aud), model.compare_v_a(vis, aud))

    missing = {k: v for k, v in state.items() if k != "transformer.MOD_tok"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys \['transformer\.MOD_tok'\]"):
        convert_synchformer(tmp_path / "missing.pth", tmp_path / "x.safetensors", model.config)
    renamed = dict(state, **{"transformer.head.weight": state["transformer.off_head.weight"]})
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"unexpected keys \['transformer\.head\.weight'\]"):
        convert_synchformer(tmp_path / "renamed.pth", tmp_path / "x.safetensors", model.config)
    torch.save(state, tmp_path / "full.pth")  # a reduced file against the released size
    with pytest.raises(ValueError, match=r"full\.pth does not match Synchformer: missing keys "
                       r".*shape mismatches \['afeat_extractor\.ast\.embeddings\.cls_token: "
                       r"file \(1, 1, 16\) vs model \(1, 1, 768\)"):  # fmt: skip
        convert_synchformer(tmp_path / "full.pth", tmp_path / "x.safetensors")
    torch.save({"x": len, **state}, tmp_path / "code.pth")
    with pytest.raises(InputError, match=r"code\.pth: refused: it is not a plain state dict"):
        convert_synchformer(tmp_path / "code.pth", tmp_path / "x.safetensors", model.config)
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(ValueError, match=r"full\.pth: expected a \.safetensors file; convert"):
        load_synchformer(tmp_path / "full.pth")


def _class_model(offset_class: int) -> Synchformer:
    """Released input geometry, tiny widths; the head always predicts ``offset_class``."""
    model = random_model(**TINY)
    with torch.no_grad():
        model.transformer.off_head.weight.zero_()
        model.transformer.off_head.bias.copy_(F.one_hot(torch.tensor(offset_class), 21) * 5.0)
    return model


def test_desync_end_to_end_through_evaluate(tmp_path):
    """8 s mp4s -> `mmdisco evaluate --metrics desync --sync-weights`: a head fixed on
    class 13 (+0.6 s) gives exactly 0.6 through decoding, preprocessing and all three parts."""
    weights = save_synchformer(_class_model(13), tmp_path / "sync.safetensors")
    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (64, 24, 32, 3), dtype=np.uint8)
    audio = (0.3 * rng.standard_normal(16000 * 8)).astype(np.float32)
    write_mp4(gen / "s0.mp4", frames, 8.0, audio, 16000)
    args = ["evaluate", "--generated", str(gen), "--out", str(tmp_path / "out"),
            "--metrics", "desync", "--sync-weights", str(weights)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["metrics"]["desync"] == pytest.approx(0.6, abs=1e-6)
    assert "reduced size (NOT comparable)" in json.dumps(report)
    both = CliRunner().invoke(app, [*args, "--sync-model", "x:y"])
    assert both.exit_code != 0 and "one of --sync-weights or --sync-model" in both.output


def test_desync_direct_matches_network_argmax():
    model = random_model(seed=3, **TINY)
    rng = np.random.default_rng(1)
    video = VideoClip(rng.integers(0, 255, (125, 24, 32, 3), dtype=np.uint8), 25.0)
    audio = AudioClip((0.3 * rng.standard_normal(16000 * 5)).astype(np.float32), 16000)
    score = DeSync(model, seconds=4.8)(video, audio)
    from mmdisco.metrics.desync import OFFSETS, preprocess_audio, preprocess_video

    with torch.no_grad():
        logits = model.compare_v_a(
            model.extract_vfeats(preprocess_video(video, 4.8)[None]),
            model.extract_afeats(preprocess_audio(audio, 4.8)[None]),
        )
    assert score == pytest.approx(abs(float(OFFSETS[logits.argmax()])), abs=1e-6)
