"""The discriminator network: shapes, modality coupling, per-sample independence, persistence,
text conditioning, time axes and the paper's two presets."""

from __future__ import annotations

import json

import pytest
import torch

from mmdisco import Discriminator, DiscriminatorConfig
from mmdisco.discriminator.blocks import ResBlock
from mmdisco.discriminator.heads import HEADS, resample_time
from mmdisco.guidance import discriminator_gradients

HEAD_NAMES = tuple(HEADS)
COUPLED = tuple(h for h in HEAD_NAMES if h != "separable")
B, FRAMES = 2, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(fusion: str = "mlp", kind: str = "1d", **changes) -> DiscriminatorConfig:
    cfg = DiscriminatorConfig(
        audio_channels=1 if kind == "1d" else 2,
        video_channels=3,
        audio_kind=kind,
        channels=8,
        channel_mult=(1, 2),
        blocks_per_level=1,
        time_embed_dim=16,
        audio_downsample=4,
        audio_dilation_cycle=3,
        norm_groups=4,
        fusion=fusion,
        fusion_width=16,
        fusion_layers=1,
        fusion_heads=2,
        num_positions=8,
    )
    return cfg.replace(**changes)


def inputs(kind: str = "1d", batch: int = B, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio_shape = (batch, 1, 64) if kind == "1d" else (batch, 2, 12, 8)
    return torch.randn(audio_shape, generator=g), torch.randn(batch, 3, FRAMES, 8, 8, generator=g)


def model(cfg: DiscriminatorConfig, seed: int = 0) -> Discriminator:
    """A discriminator whose zero-initialised layers are randomised, so every branch is live."""
    torch.manual_seed(seed)
    disc = Discriminator(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in disc.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return disc


LOG_SNR_A, LOG_SNR_V = torch.tensor([2.0, -4.0]), torch.tensor(0.5)


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("fusion", HEAD_NAMES)
def test_logits_shape_and_double_backward(fusion: str, kind: str) -> None:
    disc = model(tiny(fusion, kind, fusion_product=True))
    audio, video = inputs(kind)
    out = discriminator_gradients(disc, audio, video, LOG_SNR_A, LOG_SNR_V, create_graph=True)
    assert out.logits.shape == (B,) and torch.isfinite(out.logits).all()
    assert out.grad_audio.shape == audio.shape and out.grad_video.shape == video.shape
    # L_DLSM differentiates the input-gradient w.r.t. the parameters (double backprop).
    (out.grad_audio.pow(2).sum() + out.grad_video.pow(2).sum()).backward()
    for part in (disc.audio_stream, disc.video_stream, disc.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_output_blocks_start_at_zero() -> None:
    disc = Discriminator(tiny())
    blocks = [m for m in disc.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * 3  # two streams x (1 block per level x 2 levels + 1 downsample)
    assert all(not p.any() for b in blocks for p in b.conv_out.parameters())


@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("fusion", HEAD_NAMES)
def test_video_gradient_depends_on_audio_unless_separable(fusion: str, product: bool) -> None:
    disc = model(tiny(fusion, fusion_product=product))
    audio, video = inputs()
    other_audio, _ = inputs(seed=1)
    grad_v = discriminator_gradients(disc, audio, video, LOG_SNR_A, LOG_SNR_V).grad_video
    grad_v2 = discriminator_gradients(disc, other_audio, video, LOG_SNR_A, LOG_SNR_V).grad_video
    if fusion == "separable":
        # h = h_a(a) + h_v(v): the "joint" guidance of the reference head ignores the audio.
        torch.testing.assert_close(grad_v, grad_v2, rtol=1e-6, atol=1e-7 * grad_v.abs().max())
    else:
        assert (grad_v - grad_v2).abs().max() > 1e-4 * grad_v.abs().max()


def test_product_features_are_the_elementwise_product() -> None:
    """The mlp head's extra input is exactly mean(a) * mean(v), so an all-linear MLP on it
    is a bilinear form in the pooled features."""
    from mmdisco.discriminator.heads import MLPHead

    cfg = tiny("mlp", fusion_product=True)
    head = MLPHead(5, cfg)
    seen = []
    head.mlp[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    g = torch.Generator().manual_seed(0)
    a, v = torch.randn(2, 7, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    head(a, v, torch.zeros(2, 2 * cfg.time_embed_dim))
    torch.testing.assert_close(seen[0][:, 10:15], a.mean(1) * v.mean(1))


@pytest.mark.parametrize("fusion", HEAD_NAMES)
def test_samples_are_independent(fusion: str) -> None:
    disc = model(tiny(fusion, "2d"))
    audio, video = inputs("2d")
    both = discriminator_gradients(disc, audio, video, LOG_SNR_A, LOG_SNR_V)
    for i in range(B):
        one = discriminator_gradients(
            disc, audio[i : i + 1], video[i : i + 1], LOG_SNR_A[i], LOG_SNR_V
        )
        torch.testing.assert_close(one.logits, both.logits[i : i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(one.grad_audio, both.grad_audio[i : i + 1], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(one.grad_video, both.grad_video[i : i + 1], atol=1e-6, rtol=1e-4)


def test_each_modality_has_its_own_noise_level() -> None:
    disc = model(tiny("mlp"))
    audio, video = inputs()
    base = disc(audio, video, 1.0, 1.0)
    assert not torch.allclose(base, disc(audio, video, 5.0, 1.0))
    assert not torch.allclose(base, disc(audio, video, 1.0, 5.0))
    # Scalars broadcast over the batch; a clean modality (log-SNR +20) is a valid input.
    torch.testing.assert_close(base, disc(audio, video, torch.ones(B), torch.tensor([1.0])))
    assert torch.isfinite(disc(audio, video, -20.0, 20.0)).all()
    with pytest.raises(ValueError, match="log_snr_audio"):
        disc(audio, video, torch.zeros(3), 0.0)


@pytest.mark.parametrize("fusion", ["mlp", "time_aligned"])
def test_save_load_round_trip(tmp_path, fusion: str) -> None:
    cfg = tiny(fusion, "2d", text_dim_audio=6, text_dim_video=5, text_drop_prob=0.1)
    disc = model(cfg)
    audio, video = inputs("2d")
    text_a, text_v = torch.randn(B, 6), torch.randn(B, 3, 5)
    disc.save_pretrained(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = Discriminator.from_pretrained(tmp_path / "d").eval()
    assert loaded.config == cfg
    args = (audio, video, LOG_SNR_A, LOG_SNR_V, text_a, text_v)
    for key, value in disc.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(disc(*args), loaded(*args))
    out, out2 = (discriminator_gradients(d, *args[:4], text_audio=text_a) for d in (disc, loaded))
    torch.testing.assert_close(out.grad_video, out2.grad_video)


def test_load_errors_name_files_keys_and_shapes(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        Discriminator.from_pretrained(tmp_path)
    model(tiny("mlp")).save_pretrained(tmp_path / "d")
    config_path = tmp_path / "d" / "config.json"
    config = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**config, "channels": 16}))
    expected = (
        r"audio_stream\.blocks\.0\.conv_in\.weight: config expects \(16, 16, 3\), file has \(8"
    )
    with pytest.raises(ValueError, match="shape mismatch " + expected):
        Discriminator.from_pretrained(tmp_path / "d")

    config_path.write_text(json.dumps({**config, "fusion": "separable"}))
    with pytest.raises(ValueError, match=r"unexpected keys: head\.mlp\.0\.bias") as err:
        Discriminator.from_pretrained(tmp_path / "d")
    assert "missing keys: head.linear.bias, head.linear.weight" in str(err.value)

    config_path.write_text(json.dumps({**config, "chanels": 16}))
    with pytest.raises(ValueError, match=r"unknown DiscriminatorConfig field.*chanels"):
        Discriminator.from_pretrained(tmp_path / "d")

    (tmp_path / "d" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        Discriminator.from_pretrained(tmp_path / "d")


def test_text_conditioning_and_drop() -> None:
    cfg = tiny("mlp", text_dim_audio=6, text_dim_video=5, text_drop_prob=0.5)
    disc = model(cfg)
    audio, video = inputs(batch=8)
    text_a, text_v = torch.randn(8, 6), torch.randn(8, 5)
    cond = disc(audio, video, 0.0, 0.0, text_a, text_v)
    uncond = disc(audio, video, 0.0, 0.0)
    assert (cond - uncond).abs().min() > 1e-6
    assert not torch.allclose(cond, disc(audio, video, 0.0, 0.0, -text_a, text_v))
    # Eval mode never drops; train mode drops both texts of a sample with p = 0.5, from the
    # generator (dropout = 0, so nothing else differs between the modes).
    disc.train()
    dropped = torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < dropped.sum() < 8
    out = disc(audio, video, 0.0, 0.0, text_a, text_v, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, torch.where(dropped, uncond, cond))
    with pytest.raises(ValueError, match=r"text_video must have shape \(8, 5\)"):
        disc(audio, video, 0.0, 0.0, text_a, torch.randn(8, 4))
    with pytest.raises(ValueError, match="text_dim_audio is None"):
        model(tiny("mlp"))(audio, video, 0.0, 0.0, text_a)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_time_axes_are_kept(kind: str) -> None:
    disc = model(tiny("time_aligned", kind))
    audio, video = inputs(kind)
    audio_tokens, video_tokens = disc.features(audio, video, 0.0, 0.0)
    assert video_tokens.shape == (B, FRAMES, 16)
    # 1-D: the waveform axis is time, divided by audio_downsample once; 2-D: T is kept.
    assert audio_tokens.shape == ((B, 64 // 4, 16) if kind == "1d" else (B, 12, 16))


def test_pooled_heads_ignore_token_order_time_aligned_does_not() -> None:
    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(B, 12, 16, generator=g), torch.randn(B, FRAMES, 16, generator=g)
    cond = torch.randn(B, 32, generator=g)
    shifted = torch.roll(audio, 3, dims=1)
    for fusion in HEAD_NAMES:
        head = model(tiny(fusion)).head
        diff = (head(audio, video, cond) - head(shifted, video, cond)).abs().max()
        if fusion in ("separable", "mlp"):
            assert diff < 1e-5, fusion
        else:
            assert diff > 1e-3, fusion


def test_resample_time() -> None:
    # Shrinking averages each frame's window; growing interpolates linearly.
    frames = torch.arange(4.0)[None, :, None]
    tokens = frames.repeat_interleave(5, dim=1) + torch.linspace(-1, 1, 5).repeat(4)[None, :, None]
    torch.testing.assert_close(resample_time(tokens, 4), frames)
    up = resample_time(torch.tensor([[[0.0], [4.0]]]), 4)
    torch.testing.assert_close(up[0, :, 0], torch.tensor([0.0, 1.0, 3.0, 4.0]))


def test_bad_inputs_are_named() -> None:
    disc = model(tiny("mlp"))
    audio, video = inputs()
    with pytest.raises(ValueError, match=r"video must have shape \(B, 3, F, H, W\)"):
        disc(audio, video[:, :2], 0.0, 0.0)
    with pytest.raises(ValueError, match=r"audio must have shape \(B, 1, L\)"):
        disc(audio[:, :, None], video, 0.0, 0.0)
    with pytest.raises(ValueError, match="batch size mismatch"):
        disc(audio[:1], video, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least 4"):
        disc(audio[..., :3], video, 0.0, 0.0)


def test_config_json_round_trip_and_validation() -> None:
    cfg = tiny("transformer", "2d", text_dim_video=7)
    assert DiscriminatorConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="fusion must be one of"):
        tiny("attention")
    with pytest.raises(ValueError, match="audio_kind"):
        tiny(kind="3d")
    with pytest.raises(ValueError, match="unknown DiscriminatorConfig field"):
        cfg.replace(width=3)


def test_for_shapes_keeps_a_token_per_frame() -> None:
    disc = Discriminator.for_shapes((32, 64), (3, 16, 16, 16), head="time_aligned")
    assert disc.config.audio_kind == "1d" and disc.config.fusion == "time_aligned"
    audio_tokens, video_tokens = disc.features(
        torch.randn(1, 32, 64), torch.randn(1, 3, 16, 16, 16), 0, 0
    )
    assert audio_tokens.shape[1] >= video_tokens.shape[1] == 16
    assert DiscriminatorConfig.for_shapes((8, 50, 16), (4, 16, 32, 32)).audio_kind == "2d"


def _count(cfg: DiscriminatorConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Discriminator(cfg).parameters())


@pytest.mark.parametrize(
    ("preset", "audio", "video", "texts", "separable", "mlp"),
    [
        ("mm_diffusion", (1, 25600), (3, 16, 64, 64), (), 12.7e6, (12e6, 15e6)),
        ("text_to_av", (8, 50, 16), (4, 16, 32, 32), ((512,), (768,)), 132e6, (125e6, 140e6)),
    ],
)
def test_presets_match_the_paper(preset, audio, video, texts, separable, mlp) -> None:
    cfg = getattr(DiscriminatorConfig, preset)()
    # Paper Table 6: 12.7M (text: "12.7M") and 132M, reached by the reference's linear head.
    assert abs(_count(cfg.replace(fusion="separable")) - separable) / separable < 0.01
    assert mlp[0] < _count(cfg) < mlp[1]
    with torch.device("meta"):
        disc = Discriminator(cfg)
        args = [torch.randn(2, *audio), torch.randn(2, *video), 0.0, 0.0]
        args += [torch.randn(2, *t) for t in texts]
        audio_tokens, video_tokens = disc.features(*args)
        assert disc(*args).shape == (2,)
    assert video_tokens.shape[1] == 16
    assert audio_tokens.shape[1] == (1600 if preset == "mm_diffusion" else 50)


def test_non_finite_weights_are_refused_when_saved_or_loaded(tmp_path) -> None:
    """A NaN discriminator would turn every guided sample black and silent: refused at load,
    naming the file and the tensor, and never written in the first place."""
    from safetensors.torch import save_file

    from mmdisco.errors import NonFiniteError

    disc = model(tiny())
    disc.save_pretrained(tmp_path / "d")
    state = {k: v.clone() for k, v in disc.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("nan")
    save_file(state, tmp_path / "d" / "model.safetensors")  # as a poisoned run would have
    with pytest.raises(NonFiniteError, match=rf"d/model\.safetensors: '{key}' holds 1 NaN"):
        Discriminator.from_pretrained(tmp_path / "d")
    disc.load_state_dict(state)
    with pytest.raises(NonFiniteError, match="holds 1 NaN"):
        disc.save_pretrained(tmp_path / "e")
    assert not (tmp_path / "e" / "model.safetensors").exists()
