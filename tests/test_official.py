"""The reference release's discriminators, converted: logits and input-gradients equal those
of an independent, functional re-implementation of the release's forward pass (written here
from its code's structure: (B, F, C, H, W) video, per-frame 2-D then per-pixel 1-D
convolutions, convolve-then-pool blocks, x-transformers heads), on random state dicts in the
release's key layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from einops import rearrange

from mmdisco.discriminator.official import (
    RELEASES,
    SAMPLING_FILE,
    OfficialConfig,
    OfficialDiscriminator,
    convert_official,
    is_official,
    official_to_ours,
    release_sampling,
    write_release_sampling,
)
from mmdisco.errors import InputError
from mmdisco.guidance import discriminator_gradients
from mmdisco.io import state_dict_mismatches

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_2D = OfficialConfig(
    video_channels=4,
    audio_channels=8,
    channels=32,
    channel_mult=(1, 2),
    blocks_per_level=2,
    time_embed_dim=32,
    text_dim_video=12,
    text_dim_audio=10,
    fusion="cat_time_and_apply_transformer",
    fusion_layers=1,
    fusion_width=64,
    fusion_out=16,
)
TINY_1D = OfficialConfig(
    video_channels=3,
    audio_channels=1,
    audio_kind="1d",
    channels=32,
    channel_mult=(1, 2),
    blocks_per_level=2,
    time_embed_dim=32,
    max_dilation=10,
    text_dim_video=None,
    text_dim_audio=None,
    schedule={"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
)


# ------------------------------------------------------------------------------------------
# The release's key layout and forward pass, written out
# ------------------------------------------------------------------------------------------


def release_layout(c: OfficialConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release's MultimodalDiscriminator state dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    e = c.time_embed_dim

    def linear(name, i, o, bias=True):
        shapes[name + ".weight"] = (o, i)
        if bias:
            shapes[name + ".bias"] = (o,)

    def conv(name, i, o, *kernel):
        shapes[name + ".weight"] = (o, i, *kernel)
        shapes[name + ".bias"] = (o,)

    linear("time_embed.projection.linear_1", e, e)
    linear("time_embed.projection.linear_2", e, e)
    if c.text_dim_video:
        linear("video_text_embed", c.text_dim_video, e)
        linear("audio_text_embed", c.text_dim_audio, e)
    k2 = (3,) if c.audio_kind == "1d" else (3, 3)
    k1 = (1,) if c.audio_kind == "1d" else (1, 1)
    ch = c.channels * c.channel_mult[0]
    block = "feature_extractor.input_blocks"
    conv(f"{block}.0.0.video_conv.video_conv_spatial", c.video_channels, ch, 3, 3)
    conv(f"{block}.0.0.video_conv.video_conv_temporal", ch, ch, 3)
    conv(f"{block}.0.0.audio_conv.audio_conv", c.audio_channels, ch, *k2)
    n = 0
    for level, mult in enumerate(c.channel_mult):
        last = level == len(c.channel_mult) - 1
        for down in [False] * c.blocks_per_level + ([] if last else [True]):
            n += 1
            out = ch if down else c.channels * mult
            p = f"{block}.{n}.0"
            for m in ("video", "audio"):
                shapes[f"{p}.{m}_in_layers.0.GroupNorm.weight"] = (ch,)
                shapes[f"{p}.{m}_in_layers.0.GroupNorm.bias"] = (ch,)
                linear(f"{p}.{m}_out_layers.0.projection.1", e, 2 * out)
            conv(f"{p}.video_in_layers.2.video_conv_spatial", ch, out, 3, 3)
            conv(f"{p}.video_in_layers.2.video_conv_temporal", out, out, 3)
            conv(f"{p}.audio_in_layers.2.audio_conv", ch, out, *k2)
            conv(f"{p}.video_out_layers.3.video_conv", out, out, 1, 1, 1)
            conv(f"{p}.audio_out_layers.3.audio_conv", out, out, *k1)
            if out != ch:
                conv(f"{p}.video_skip_connection.video_conv", ch, out, 1, 1, 1)
                conv(f"{p}.audio_skip_connection.audio_conv", ch, out, *k1)
            ch = out
    if c.fusion == "aggregate_time_and_cat_ch":
        linear("last_linear", 2 * ch, 1)
        return shapes
    w = c.fusion_width
    half = c.fusion.startswith("interp")
    linear("fusion_model.fm_video_in", ch, w // 2 if half else w)
    linear("fusion_model.fm_audio_in", ch, w // 2 if half else w)
    linear("fusion_model.fm_time_in", e, w)
    fm = "fusion_model.fm"
    shapes[f"{fm}.cls_emb"] = (1, 1, w)
    shapes[f"{fm}.pos_emb.emb.weight"] = (c.max_tokens, w)
    for i in range(2 * (c.fusion_layers + 1)):
        shapes[f"{fm}.attn_layers.layers.{i}.0.weight"] = (w,)
        shapes[f"{fm}.attn_layers.layers.{i}.0.bias"] = (w,)
        if i % 2 == 0:
            for q in ("to_q", "to_k", "to_v"):
                linear(f"{fm}.attn_layers.layers.{i}.1.{q}", w, 512, bias=False)
            linear(f"{fm}.attn_layers.layers.{i}.1.to_out", 512, w)
        else:
            linear(f"{fm}.attn_layers.layers.{i}.1.net.0.0", w, 4 * w)
            linear(f"{fm}.attn_layers.layers.{i}.1.net.2", 4 * w, w)
    shapes[f"{fm}.norm.weight"] = shapes[f"{fm}.norm.bias"] = (w,)
    linear(f"{fm}.out_layer", w, c.fusion_out)
    linear("last_linear", c.fusion_out, 1)
    return shapes


def random_release_state(c: OfficialConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in release_layout(c).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        scale = 1.0 if len(shape) == 1 else 1.5 / math.sqrt(fan_in)
        state[key] = torch.randn(shape, generator=g) * scale
        if key.endswith("GroupNorm.weight") or (key.endswith(".0.weight") and len(shape) == 1):
            state[key] = 1 + 0.2 * torch.randn(shape, generator=g)
    return state


class Release:
    """The release's forward pass, functionally, on its own state dict (video (B, F, C, H, W))."""

    def __init__(self, state: dict[str, torch.Tensor], c: OfficialConfig) -> None:
        self.s, self.c = state, c

    def groupnorm(self, x, key=None, channel=None):
        flip = x.ndim == 5 and x.shape[1] != channel  # the release's (B, F, C, H, W) wrapper
        if flip:
            x = rearrange(x, "b t c h w -> b c t h w")
        w = self.s[key + ".weight"] if key else None
        b = self.s[key + ".bias"] if key else None
        x = F.group_norm(x.float(), 32, w, b)
        return rearrange(x, "b c t h w -> b t c h w") if flip else x

    def video_conv(self, x, key, three_d=False):
        b, _, _, h, _ = x.shape
        if three_d:
            x = rearrange(x, "b f c h w -> b c f h w")
            x = F.conv3d(x, self.s[key + ".video_conv.weight"], self.s[key + ".video_conv.bias"])
            return rearrange(x, "b c f h w -> b f c h w")
        x = rearrange(x, "b f c h w -> (b f) c h w")
        x = F.conv2d(
            x,
            self.s[key + ".video_conv_spatial.weight"],
            self.s[key + ".video_conv_spatial.bias"],
            padding="same",
        )
        x = rearrange(x, "(b f) c h w -> (b h w) c f", b=b)
        x = F.conv1d(
            x,
            self.s[key + ".video_conv_temporal.weight"],
            self.s[key + ".video_conv_temporal.bias"],
            padding="same",
        )
        return rearrange(x, "(b h w) c f -> b f c h w", b=b, h=h)

    def audio_conv(self, x, key, dilation=1):
        conv = F.conv1d if self.c.audio_kind == "1d" else F.conv2d
        return conv(
            x, self.s[key + ".weight"], self.s[key + ".bias"], padding="same", dilation=dilation
        )

    def modulate(self, h, key, emb, channel_dim):
        t = F.linear(
            F.silu(emb), self.s[key + ".projection.1.weight"], self.s[key + ".projection.1.bias"]
        )
        scale, shift = torch.chunk(t, 2, dim=1)
        shape = [h.shape[0]] + [1] * (h.ndim - 1)
        shape[channel_dim] = scale.shape[1]
        h = self.groupnorm(h, None, scale.shape[1])
        return h * (1 + scale.reshape(shape)) + shift.reshape(shape)

    def pool_video(self, x):
        x = rearrange(x, "b f c h w -> b c f h w")
        return rearrange(F.avg_pool3d(x, (1, 2, 2), (1, 2, 2)), "b c f h w -> b f c h w")

    def pool_audio(self, x):
        if self.c.audio_kind == "1d":
            return F.avg_pool1d(x, 4, 4)
        return F.avg_pool2d(x, (1, 2), (1, 2))

    def resblock(self, p, v, a, emb_v, emb_a, down, dilation):
        ch = v.shape[2]
        vh = self.video_conv(
            F.silu(self.groupnorm(v, f"{p}.video_in_layers.0.GroupNorm", ch)),
            f"{p}.video_in_layers.2",
        )
        ah = self.audio_conv(
            F.silu(self.groupnorm(a, f"{p}.audio_in_layers.0.GroupNorm", ch)),
            f"{p}.audio_in_layers.2.audio_conv",
            dilation,
        )
        if down:
            vh, v = self.pool_video(vh), self.pool_video(v)
            ah, a = self.pool_audio(ah), self.pool_audio(a)
        vo = self.video_conv(
            F.silu(self.modulate(vh, f"{p}.video_out_layers.0", emb_v, 2)),
            f"{p}.video_out_layers.3",
            three_d=True,
        )
        ao = self.audio_conv(
            F.silu(self.modulate(ah, f"{p}.audio_out_layers.0", emb_a, 1)),
            f"{p}.audio_out_layers.3.audio_conv",
        )
        if f"{p}.video_skip_connection.video_conv.weight" in self.s:
            v = self.video_conv(v, f"{p}.video_skip_connection", three_d=True)
            a = self.audio_conv(a, f"{p}.audio_skip_connection.audio_conv")
        return v + vo, a + ao

    def linear(self, x, key):
        return F.linear(x, self.s[key + ".weight"], self.s.get(key + ".bias"))

    def transformer(self, x):
        fm = "fusion_model.fm"
        x = torch.cat([torch.tile(self.s[f"{fm}.cls_emb"], (x.shape[0], 1, 1)), x], dim=1)
        x = x + self.s[f"{fm}.pos_emb.emb.weight"][: x.shape[1]][None]
        for i in range(2 * (self.c.fusion_layers + 1)):
            p = f"{fm}.attn_layers.layers.{i}"
            y = F.layer_norm(x, (x.shape[-1],), self.s[f"{p}.0.weight"], self.s[f"{p}.0.bias"])
            if i % 2 == 0:
                q, k, v = (
                    rearrange(self.linear(y, f"{p}.1.{n}"), "b n (h d) -> b h n d", h=8)
                    for n in ("to_q", "to_k", "to_v")
                )
                dots = torch.einsum("b h i d, b h j d -> b h i j", q, k) * 64**-0.5
                out = torch.einsum("b h i j, b h j d -> b h i d", dots.softmax(-1), v)
                y = self.linear(rearrange(out, "b h n d -> b n (h d)"), f"{p}.1.to_out")
            else:
                y = self.linear(F.gelu(self.linear(y, f"{p}.1.net.0.0")), f"{p}.1.net.2")
            x = y + x
        x = F.layer_norm(x, (x.shape[-1],), self.s[f"{fm}.norm.weight"], self.s[f"{fm}.norm.bias"])
        return self.linear(x, f"{fm}.out_layer")

    def logit(self, video, audio, timesteps, text_v=None, text_a=None):
        c = self.c
        temb = get_timestep_embedding(timesteps, c.time_embed_dim)
        temb = self.linear(
            F.silu(self.linear(temb, "time_embed.projection.linear_1")),
            "time_embed.projection.linear_2",
        )
        emb_v = temb + (self.linear(text_v.mean(1), "video_text_embed") if c.text_dim_video else 0)
        emb_a = temb + (self.linear(text_a, "audio_text_embed") if c.text_dim_audio else 0)
        block = "feature_extractor.input_blocks"
        v = self.video_conv(video, f"{block}.0.0.video_conv")
        a = self.audio_conv(audio, f"{block}.0.0.audio_conv.audio_conv")
        n, dilation = 0, 1
        for level in range(len(c.channel_mult)):
            last = level == len(c.channel_mult) - 1
            for down in [False] * c.blocks_per_level + ([] if last else [True]):
                n += 1
                d = 2 ** (dilation % c.max_dilation)
                v, a = self.resblock(f"{block}.{n}.0", v, a, emb_v, emb_a, down, d)
                dilation += 1
        v_feats = v.mean(dim=(3, 4))
        a_feats = (a.mean(dim=3) if a.ndim == 4 else a).permute(0, 2, 1)
        if c.fusion == "aggregate_time_and_cat_ch":
            fused = torch.cat([v_feats.mean(1), a_feats.mean(1)], dim=1)
        else:
            tokens = torch.cat(
                [
                    self.linear(temb, "fusion_model.fm_time_in")[:, None],
                    self.linear(v_feats, "fusion_model.fm_video_in"),
                    self.linear(a_feats, "fusion_model.fm_audio_in"),
                ],
                dim=1,
            )
            fused = self.transformer(tokens)[:, 0]
        return self.linear(fused, "last_linear").squeeze(1)


def release_logit_exp(h):
    p = torch.sigmoid(h)
    return torch.log(p + 1e-5) - torch.log1p(-p + 1e-5)


# ------------------------------------------------------------------------------------------


def inputs(c: OfficialConfig, seed: int):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(3, c.video_channels, 3, 8, 8, generator=g)  # 3 frames (!= channels)
    if c.audio_kind == "1d":
        audio = torch.randn(3, c.audio_channels, 64, generator=g)
    else:
        audio = torch.randn(3, c.audio_channels, 6, 8, generator=g)
    text_v = torch.randn(3, 5, c.text_dim_video, generator=g) if c.text_dim_video else None
    text_a = torch.randn(3, c.text_dim_audio, generator=g) if c.text_dim_audio else None
    return video, audio, text_v, text_a


@pytest.mark.parametrize("config", [TINY_2D, TINY_1D], ids=["2d-transformer", "1d-aggregate"])
def test_converted_network_reproduces_the_release_logits_and_gradients(tmp_path, config):
    state = random_release_state(config)
    checkpoint = tmp_path / "release.pt"
    torch.save(state, checkpoint)
    disc = convert_official(checkpoint, config, tmp_path / "converted")
    assert is_official(tmp_path / "converted")
    assert release_sampling(tmp_path / "converted") is None  # a config, not a named release
    release = Release(state, config)
    video, audio, text_v, text_a = inputs(config, 1)
    timesteps = torch.tensor([999, 500, 3])
    log_snr = disc.schedule.log_snr(timesteps)

    ref_v = video.permute(0, 2, 1, 3, 4).clone().requires_grad_()  # the release's layout
    ref_a = audio.clone().requires_grad_()
    h_ref = release.logit(ref_v, ref_a, timesteps, text_v, text_a)
    target = release_logit_exp(h_ref)
    g_v, g_a = torch.autograd.grad(target.sum(), (ref_v, ref_a))

    cond = {"text_audio": text_a, "text_video": text_v}
    cond = {k: v for k, v in cond.items() if v is not None}
    h = disc.logit(audio, video, log_snr, log_snr, **cond)
    torch.testing.assert_close(h, h_ref.detach(), rtol=1e-5, atol=1e-5)
    out = discriminator_gradients(disc, audio, video, log_snr, log_snr, **cond)
    torch.testing.assert_close(out.logits, target.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.grad_audio, g_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.grad_video, g_v.permute(0, 2, 1, 3, 4), rtol=1e-4, atol=1e-6)
    assert out.grad_video.abs().max() > 1e-4 and out.grad_audio.abs().max() > 1e-4

    # Saved and loaded back: the same network.
    again = OfficialDiscriminator.from_pretrained(tmp_path / "converted")
    torch.testing.assert_close(again.logit(audio, video, log_snr, log_snr, **cond), h)


def test_timesteps_are_recovered_exactly_from_the_log_snr():
    disc = OfficialDiscriminator(TINY_1D)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(disc.timesteps(disc.schedule.log_snr(t)), t.float(), rtol=0, atol=0)
    between = disc.timesteps(disc.schedule.log_snr(torch.tensor([17.25])))
    assert 17.2 < between.item() < 17.3


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_layouts_convert_to_the_right_shapes(name):
    """The full-size layouts, on the meta device (shapes only)."""
    config = RELEASES[name]
    state = {k: torch.empty(s, device="meta") for k, s in release_layout(config).items()}
    ours, unknown = official_to_ours(state)
    assert not unknown
    with torch.device("meta"):
        model = OfficialDiscriminator(config)
    assert state_dict_mismatches(model.state_dict(), ours) == []
    params = sum(p.numel() for p in model.parameters())
    assert params == sum(math.prod(s) for s in release_layout(config).values())


def test_bad_checkpoints_are_refused_with_their_name(tmp_path):
    state = random_release_state(TINY_1D)
    state["feature_extractor.input_blocks.1.0.cross_attention.weight"] = torch.zeros(1)
    del state["last_linear.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        convert_official(path, TINY_1D)
    message = str(err.value)
    assert str(path) in message and "last_linear.bias" in message and "cross_attention" in message
    torch.save({"state_dict": {"w": torch.nn.Linear(1, 1)}}, path)  # a pickled module
    with pytest.raises(ValueError, match=r"bad\.pt: refused or unreadable"):
        convert_official(path, TINY_1D)
    with pytest.raises(ValueError, match="unknown release 'nope'"):
        convert_official(path, "nope")


def test_release_sampling_is_the_releases_inference_config(tmp_path):
    # conf/inference/default.yaml: joint_scale_audio 1.0, joint_scale_video 8.0, 50 steps of
    # the release's DDPM, CFG on the discriminator term; the same for both VGGSound releases.
    for name in ("audioldm_animediff_vggsound", "auffusion_videocrafter2_vggsound"):
        path = write_release_sampling(tmp_path / name, name)
        assert json.loads(path.read_text())["release"] == name
        assert release_sampling(tmp_path / name) == {
            "scheduler": "DDPMScheduler",
            "num_inference_steps": 50,
            "guidance_scale_audio": 1.0,
            "guidance_scale_video": 8.0,
            "cfg_on_discriminator": True,
        }
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / SAMPLING_FILE).write_text("[1, 2]")
    with pytest.raises(InputError, match=r"bad/sampling\.json.*'sampling' object"):
        release_sampling(tmp_path / "bad")


def test_text_is_required_for_text_conditioned_releases():
    disc = OfficialDiscriminator(TINY_2D)
    video, audio, text_v, _ = inputs(TINY_2D, 0)
    with pytest.raises(ValueError, match="text_audio is required: the release's discriminator"):
        disc(audio, video, torch.zeros(3), torch.zeros(3), text_video=text_v)


def test_cli_converts_a_full_size_release(tmp_path):
    from typer.testing import CliRunner

    from mmdisco.cli import app

    state = random_release_state(RELEASES["mmdiffusion_landscape"])
    checkpoint = tmp_path / "mmdiffusion_landscape.pt"
    torch.save(state, checkpoint)
    result = CliRunner().invoke(
        app, ["convert-official", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "d")]
    )
    assert result.exit_code == 0, result.output
    params = sum(v.numel() for v in state.values())
    assert f"mmdiffusion_landscape: {params / 1e6:.1f}M parameters" in result.output
    disc = OfficialDiscriminator.from_pretrained(tmp_path / "d")
    assert disc.config == RELEASES["mmdiffusion_landscape"]
    assert release_sampling(tmp_path / "d") == {
        "guidance_scale_audio": 1.0,
        "guidance_scale_video": 1.0,
    }  # conf/inference/mmdiff.yaml
    bad = CliRunner().invoke(
        app,
        [
            "convert-official",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "e"),
            "--release",
            "auffusion_videocrafter2_vggsound",
        ],
    )
    assert bad.exit_code == 2 and bad.output.startswith("error: ")
    assert "does not match the release config" in bad.output


# A tiny release discriminator for AudioLDM + AnimateDiff latents (4 channels each, text 32).
TINY_AUDIOLDM_RELEASE = OfficialConfig(
    video_channels=4,
    audio_channels=4,
    channels=32,
    channel_mult=(1, 2),
    blocks_per_level=1,
    time_embed_dim=32,
    text_dim_video=32,
    text_dim_audio=32,
    schedule={"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
)


def save_tiny_audioldm_release(tmp_path: Path) -> Path:
    """A random checkpoint of :data:`TINY_AUDIOLDM_RELEASE` in the release's format."""
    checkpoint = tmp_path / "release.pt"
    torch.save(random_release_state(TINY_AUDIOLDM_RELEASE, seed=3), checkpoint)
    return checkpoint


def test_sampling_audioldm_animatediff_with_a_release_discriminator(tmp_path):
    """The documented path: a converted release discriminator guides AudioLDM + AnimateDiff
    through the experiment config, with CFG on its term against the empty prompt's tokens."""
    import yaml

    from _tiny import audioldm_animatediff_experiment
    from mmdisco.config import ConfigError, load_experiment
    from mmdisco.experiment import sample_from_config

    config, checkpoint = TINY_AUDIOLDM_RELEASE, save_tiny_audioldm_release(tmp_path)
    convert_official(checkpoint, config, tmp_path / "disc")
    data = audioldm_animatediff_experiment(
        tmp_path,
        0.01,
        sampling={
            "scheduler": "DDPMScheduler",
            "num_inference_steps": 3,
            "guidance_scale_audio": 50.0,
            "guidance_scale_video": 50.0,
            "cfg_on_discriminator": True,
            "batch_size": 2,
        },
    )
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_experiment(path)
    runs = sample_from_config(cfg, ["a dog barks", "cat runs"], tmp_path / "out", tmp_path / "disc")
    plain, guided = runs["independent"], runs["guided"]
    assert torch.isfinite(guided.audio_latents).all() and torch.isfinite(guided.video_latents).all()
    assert not torch.allclose(plain.audio_latents, guided.audio_latents)
    assert not torch.allclose(plain.video_latents, guided.video_latents)
    assert len(list((tmp_path / "out").glob("guided-*.mp4"))) == 2

    # A release trained on another audio schedule is refused, naming the directory.
    from dataclasses import replace

    other = replace(
        config,
        schedule={"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195},
    )
    convert_official(checkpoint, other, tmp_path / "other")
    with pytest.raises(ConfigError, match="was trained on the noise schedule"):
        sample_from_config(cfg, ["a dog barks"], tmp_path / "out2", tmp_path / "other")


class _Sampled(Exception):
    """Raised by the spy below once it has seen the sampling settings."""


def test_sampling_with_a_converted_release_uses_the_releases_settings(
    tmp_path, monkeypatch, capsys
):
    """`sample --discriminator DIR` and `MMDisCoPipeline.from_experiment`: the release's
    joint scales (1 and 8), CFG on the discriminator term, DDPM and 50 steps replace the
    config's, unless release_sampling=False."""
    import yaml

    from _tiny import audioldm_animatediff_experiment
    from mmdisco import experiment
    from mmdisco.config import load_experiment
    from mmdisco.pipeline import MMDisCoPipeline

    config, checkpoint = TINY_AUDIOLDM_RELEASE, save_tiny_audioldm_release(tmp_path)
    disc_dir = tmp_path / "disc"
    convert_official(checkpoint, config, disc_dir)
    write_release_sampling(disc_dir, "audioldm_animediff_vggsound")  # as convert-official does
    data = audioldm_animatediff_experiment(
        tmp_path,
        0.01,
        sampling={"num_inference_steps": 3, "guidance_scale_video": 1.0, "batch_size": 2},
    )
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_experiment(path)
    seen = []

    def spy(audio, video, n, settings, **kwargs):
        seen.append(settings)
        raise _Sampled

    monkeypatch.setattr(experiment, "sample_batches", spy)
    release = (1.0, 8.0, True, "DDPMScheduler", 50)
    for use, expected in ((True, release), (False, (1.0, 1.0, False, cfg.sampling.scheduler, 3))):
        with pytest.raises(_Sampled):
            experiment.sample_from_config(
                cfg, ["a dog barks"], tmp_path / "out", disc_dir, release_sampling=use
            )
        s = seen[-1]
        got = (s.guidance_scale_audio, s.guidance_scale_video, s.cfg_on_discriminator)
        assert (*got, s.scheduler, s.num_inference_steps) == expected
    pipe = MMDisCoPipeline.from_experiment(cfg, disc_dir)
    assert pipe.config.sampling.guidance_scale_video == 8.0
    assert pipe.config.sampling.cfg_on_discriminator and pipe.config.sampling.batch_size == 2
    # The command says which settings it took, and from where.
    from mmdisco.cli.experiment import sample_from_yaml

    with pytest.raises(_Sampled):
        sample_from_yaml(path, tmp_path / "out", disc_dir, ["a dog barks"])
    assert seen[-1].guidance_scale_video == 8.0
    printed = capsys.readouterr().out
    assert f"sampling as the release ({disc_dir / SAMPLING_FILE}):" in printed
    assert "guidance_scale_video=8.0" in printed
