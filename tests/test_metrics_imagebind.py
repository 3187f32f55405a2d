"""Built-in ImageBind encoders: shapes, weights round trip, clip averaging, the CLI pipeline."""

import gzip
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.io import save_tensors_atomic
from mmdisco.media import write_mp4
from mmdisco.metrics.convert import convert_imagebind
from mmdisco.metrics.imagebind import imagebind_scores
from mmdisco.metrics.imagebind import preprocess_audio as ib_audio
from mmdisco.metrics.imagebind import preprocess_video as ib_video
from mmdisco.metrics.imagebind_model import (
    ClipTokenizer,
    ImageBind,
    ImageBindConfig,
    load_imagebind,
    save_imagebind,
)
from mmdisco.metrics.io import load_media

MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "b i", "bi r", "bir d</w>"]
TINY = dict(out_dim=16, vision_dim=32, vision_blocks=2, vision_heads=4, audio_dim=32,
            audio_blocks=2, audio_heads=4, text_dim=32, text_blocks=2, text_heads=4,
            context_length=12, vocab_size=512 + len(MERGES) + 2)  # fmt: skip
SMALL_INPUTS = dict(image_size=28, mel_bins=36, audio_frames=46)  # 4 and 3x4 patches


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "vocab.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *MERGES]) + "\n")
    return path


def _model(seed=0, **sizes):
    """A tiny ImageBind with every tensor random (zero-initialised ones would hide bugs)."""
    torch.manual_seed(seed)
    model = ImageBind(ImageBindConfig(**TINY, **sizes)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and "log_logit_scale" not in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def test_tokenizer_matches_clip_ids(bpe):
    tok = ClipTokenizer(bpe)
    assert tok.vocab_size == TINY["vocab_size"]
    # CLIP's vocabulary starts with the 256 byte symbols, then the same with "</w>":
    # "a" alone is id 320 in the real CLIP vocab, as here.
    assert tok.encode("A") == [320]
    cat, dog = tok.encoder["cat</w>"], tok.encoder["dog</w>"]
    assert tok.encode("  Cat,   dog ") == [cat, tok.encoder[",</w>"], dog]
    ids = tok(["a cat", "bird " * 20], context_length=12)
    assert ids.shape == (2, 12)
    assert ids[0, :4].tolist() == [tok.sot, 320, cat, tok.eot] and ids[0, 4:].eq(0).all()
    assert ids[1].tolist() == [tok.sot] + [tok.encoder["bird</w>"]] * 10 + [tok.eot]  # cut


def test_shapes_and_unit_norm(bpe):
    model = _model(**SMALL_INPUTS)
    model.tokenizer = ClipTokenizer(bpe)
    outs = {
        "vision": model.embed("vision", torch.randn(3, 3, 28, 28)),
        "video": model.embed("vision", torch.randn(3, 3, 2, 28, 28)),
        "audio": model.embed("audio", torch.randn(3, 1, 36, 46)),
        "text": model.embed("text", ["a cat", "dog", "bird bird"]),
    }
    for name, out in outs.items():
        assert out.shape == (3, 16), name
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), msg=name)
    # The official output multiplies the unit audio vector by the fixed logit scale 20.
    raw = model("audio", torch.randn(2, 1, 36, 46))
    torch.testing.assert_close(raw.norm(dim=-1), torch.full((2,), 20.0))
    with pytest.raises(ValueError, match="patches"):
        model.embed("audio", torch.randn(1, 1, 36, 60))


def test_video_clips_are_averaged_like_the_official_model():
    model = _model(**SMALL_INPUTS)
    video = torch.randn(2, 3, 6, 28, 28)  # three consecutive 2-frame clips
    per_clip = [F.normalize(model("vision", video[:, :, 2 * i : 2 * i + 2]), dim=-1)
                for i in range(3)]  # fmt: skip
    expected = F.normalize(torch.stack(per_clip).mean(0), dim=-1)
    torch.testing.assert_close(model.embed("vision", video), expected)
    stacked = video.view(2, 3, 3, 2, 28, 28).transpose(1, 2)  # (n, S, 3, 2, H, W)
    torch.testing.assert_close(model.embed("vision", stacked), expected)
    # An image is a video of two identical frames (PadIm2Video "repeat").
    image = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(
        model.embed("vision", image), model.embed("vision", image[:, :, None].repeat(1, 1, 2, 1, 1))
    )
    with pytest.raises(ValueError, match="multiple of 2"):
        model.embed("vision", torch.randn(1, 3, 3, 28, 28))


def test_text_is_causal_and_reads_the_end_token():
    model = _model(**SMALL_INPUTS)
    eot = TINY["vocab_size"] - 1
    tokens = torch.tensor([[eot - 1, 5, 9, eot, 0, 0, 0, 0, 0, 0, 0, 0]])
    changed = tokens.clone()
    changed[0, 5:] = 7  # tokens after the end token are invisible to it
    torch.testing.assert_close(model.embed("text", tokens), model.embed("text", changed))
    changed[0, 1] = 8  # tokens before it are not
    assert not torch.allclose(model.embed("text", tokens), model.embed("text", changed))


def test_safetensors_round_trip_and_key_errors(tmp_path, bpe):
    model = _model(**SMALL_INPUTS)
    path = save_imagebind(model, tmp_path / "ib.safetensors")
    loaded = load_imagebind(path, bpe)
    assert loaded.config == model.config and not loaded.training
    # The stored numbers come back bit for bit; the outputs only up to rounding, because the
    # loaded tensors are assigned from the file (not copied into aligned memory), and matmul
    # kernels may sum in another order for other alignments (6e-8 apart on some machines).
    loaded_state = loaded.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded_state[key], value), key
    x = {"vision": torch.randn(2, 3, 2, 28, 28), "audio": torch.randn(2, 1, 36, 46)}
    for modality, batch in x.items():
        torch.testing.assert_close(loaded.embed(modality, batch), model.embed(modality, batch))
    model.tokenizer = ClipTokenizer(bpe)
    torch.testing.assert_close(loaded.embed("text", ["a dog"]), model.embed("text", ["a dog"]))

    state = model.state_dict()
    state.pop("modality_heads.audio.2.weight")
    state["modality_trunks.depth.blocks.0.norm_1.weight"] = torch.ones(3)
    state["modality_preprocessors.vision.cls_token"] = torch.zeros(1, 1, 5)
    meta = {"config": json.dumps(vars(model.config))}
    save_tensors_atomic(tmp_path / "bad.safetensors", state, metadata=meta, finite=False)
    with pytest.raises(ValueError) as err:
        load_imagebind(tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "bad.safetensors" in message
    assert "missing keys ['modality_heads.audio.2.weight']" in message
    assert "unexpected keys ['modality_trunks.depth.blocks.0.norm_1.weight']" in message
    assert "modality_preprocessors.vision.cls_token: file (1, 1, 5) vs model (1, 1, 32)" in message


def test_convert_official_layout(tmp_path):
    """An official-style checkpoint ("module." prefix, depth/thermal/imu keys) converts."""
    model = _model(**SMALL_INPUTS)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    unused = ("trunks.depth.blocks.0.norm_1.weight", "heads.imu.3.weight",
              "postprocessors.thermal.1.log_logit_scale")  # fmt: skip
    for extra in unused:
        state[f"module.modality_{extra}"] = torch.ones(2)
    torch.save(state, tmp_path / "official.pth")  # stands in for imagebind_huge.pth
    dst = convert_imagebind(tmp_path / "official.pth", tmp_path / "ib.safetensors", model.config)
    audio = torch.randn(2, 1, 36, 46)
    converted = load_imagebind(dst).embed("audio", audio)
    torch.testing.assert_close(converted, model.embed("audio", audio))
    state.pop("module.modality_heads.vision.2.weight")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys \['modality_heads.vision.2.weight'\]"):
        convert_imagebind(tmp_path / "broken.pth", tmp_path / "x.safetensors", model.config)


def _block_params(d):
    return 12 * d * d + 13 * d  # qkv + out proj (4d^2 + 4d), MLP 4x (8d^2 + 5d), 2 LayerNorms


def test_full_size_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = ImageBind()
    count = {m: 0 for m in ("vision", "audio", "text")}
    for name, p in model.named_parameters():
        count[name.split(".")[1]] += p.numel()
    vision = (
        32 * _block_params(1280) + 1280 * 3 * 2 * 14 * 14 + 258 * 1280 + 4 * 1280 + 1280 * 1024
    )  # stem, cls + 257 pos, pre-LN + head LN, projection
    audio = (
        12 * _block_params(768)
        + 12 * 2 * 768
        + 768 * 256
        + 2 * 768
        + 230 * 768
        + 2 * 768
        + 768 * 1024
    )  # blocks (+ bias_k/v), stem + LN, cls + 229 pos, head
    text = 24 * _block_params(1024) + 49408 * 1024 + 77 * 1024 + 2 * 1024 + 1024**2 + 1
    assert count == {"vision": vision, "audio": audio, "text": text}  # fmt: skip
    assert 1.0e9 < sum(count.values()) < 1.2e9  # imagebind_huge is ~1.2B with depth/thermal/IMU


def test_evaluate_cli_reports_ib_scores(tmp_path, bpe):
    model = _model()  # full input geometry (224 crops, 128x204 fbank), tiny widths
    weights = save_imagebind(model, tmp_path / "ib.safetensors")
    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    captions = {}
    for i, caption in enumerate(["a cat", "a dog", "bird"]):
        frames = rng.integers(0, 255, (10, 32, 48, 3), dtype=np.uint8)
        write_mp4(gen / f"s{i}.mp4", frames, 8.0, 0.3 * rng.standard_normal(20000), 16000)
        captions[f"s{i}"] = caption
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    args = ["evaluate", "--generated", str(gen), "--out", str(tmp_path / "out"),
            "--metrics", "ib", "--imagebind-weights", str(weights), "--imagebind-bpe", str(bpe),
            "--captions", str(tmp_path / "captions.json")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    values = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]

    model.tokenizer = ClipTokenizer(bpe)
    items = [load_media(gen / f"s{i}.mp4") for i in range(3)]
    expected = imagebind_scores(
        model,
        audio=[ib_audio(it.audio.samples, it.audio.sample_rate) for it in items],
        video=[ib_video(it.video.frames, it.video.fps) for it in items],
        text=list(captions.values()),
    )
    assert set(values) == {"ib_av", "ib_tv", "ib_ta"}
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-5)
        assert -1.0 <= value <= 1.0
