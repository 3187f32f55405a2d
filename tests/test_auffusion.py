"""Auffusion done as its own pipeline does it, checked against an independent re-implementation
of the released pipeline (prompt handling, condition adapter, 10.24 s latent context, mel,
vocoder) on a tiny checkpoint laid out and pickled as the release is."""

from __future__ import annotations

import json
import math

import librosa
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

from _tiny import (
    AUFFUSION,
    RELEASED_VOCODER,
    WORDS,
    ReleasedHifiGan,
    save_auffusion,
    save_auffusion_release,
)
from mmdisco.base_models import load_base_model
from mmdisco.base_models.auffusion import AuffusionModel, convert_auffusion
from mmdisco.errors import InputError
from mmdisco.sampling import Stream, joint_sample

PROMPTS = ["a dog barks", "hammer hits wood"]
LOG_MIN, LOG_MAX = math.log(1e-5), math.log(200.0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("auffusion")
    converted = save_auffusion(root / "converted")  # also writes root / "converted-release"
    return root / "converted-release", converted


@pytest.fixture(scope="module")
def model(tiny):
    return load_base_model("auffusion", str(tiny[1]), **AUFFUSION)


class Reference:
    """The released pipeline's pieces, rebuilt from the release files (not the converted ones)."""

    def __init__(self, release) -> None:
        self.conditions = []  # (tokenizer, text encoder, adapter) in condition_config order
        for item in json.loads((release / "condition_config.json").read_text()):
            folder = release / item["text_encoder_name"]
            architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
            encoder_cls = {"CLIPTextModel": CLIPTextModel, "T5EncoderModel": T5EncoderModel}
            encoder = encoder_cls[architecture].from_pretrained(folder).eval()
            state = torch.load(release / item["condition_adapter_name"] / "condition_adapter.pt")
            adapter = torch.nn.Module()
            adapter.proj, adapter.norm = torch.nn.Linear(32, 24), torch.nn.LayerNorm(24)
            adapter.load_state_dict(state)
            self.conditions.append((AutoTokenizer.from_pretrained(folder), encoder, adapter))
        self.unet = UNet2DConditionModel.from_pretrained(release / "unet").eval()
        self.vae = AutoencoderKL.from_pretrained(release / "vae").eval()
        self.vocoder = ReleasedHifiGan(RELEASED_VOCODER)
        pickled = torch.load(release / "vocoder" / "vocoder.pt")["generator"]
        self.vocoder.load_state_dict(pickled)
        self.vocoder.eval()
        self.max_length = 77  # AuffusionPipeline's tokenizer_model_max_length, whatever the encoder

    @torch.no_grad()
    def prompt_embeds(self, prompts: list[str]) -> torch.Tensor:
        """AuffusionPipeline._encode_prompt: the whole prompt's unpadded tokens, the first 77
        hidden states zero-padded to 77, then the adapter; encoders concatenated."""
        rows = []
        for prompt in prompts:
            parts = []
            for tokenizer, encoder, adapter in self.conditions:
                hidden = encoder(tokenizer(prompt, return_tensors="pt").input_ids).last_hidden_state
                if hidden.shape[1] < self.max_length:
                    hidden = F.pad(hidden, (0, 0, 0, self.max_length - hidden.shape[1]), value=0)
                else:
                    hidden = hidden[:, : self.max_length]
                parts.append(adapter.norm(adapter.proj(hidden)))
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows)

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Auffusion's mel_spectrogram: (B, mels, T), magnitude sqrt(re^2 + im^2 + 1e-9)."""
        h = RELEASED_VOCODER
        n_fft, hop, win = h["n_fft"], h["hop_size"], h["win_size"]
        pad = (n_fft - hop) // 2
        y = F.pad(wave[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(
            y, n_fft, hop, win, torch.hann_window(win), center=False, return_complex=True
        )
        spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
        basis = librosa.filters.mel(
            sr=h["sampling_rate"], n_fft=n_fft, n_mels=h["num_mels"], fmin=0, fmax=h["fmax"]
        )
        return torch.log(torch.clamp(torch.from_numpy(basis) @ spec, min=1e-5))

    def image(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """normalize_spectrogram, pad_spec to ``frames`` with 0, then 2x - 1."""
        data = (self.mel(wave).clamp(LOG_MIN, LOG_MAX) - LOG_MIN) / (LOG_MAX - LOG_MIN)
        data = torch.flip(data[:, None].repeat(1, 3, 1, 1), [2])
        data = F.pad(data, (0, frames - data.shape[-1]), value=0)[..., :frames]
        return 2 * data - 1

    @torch.no_grad()
    def latents(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, C, mels / 2, frames / 2): the posterior mode of the padded image."""
        posterior = self.vae.encode(self.image(wave, frames)).latent_dist
        return posterior.mode() * self.vae.config.scaling_factor

    @torch.no_grad()
    def predict(self, x, t, text, schedule, pad_noise) -> torch.Tensor:
        """Auffusion.predict_noise of the reference release: noisy silence up to 16 latent
        frames (the tiny 10.24 s), UNet, prediction cut back to the clip."""
        frames = x.shape[-1]
        silence = self.latents(torch.zeros(1, 32 * 4), 32)
        alpha, sigma = schedule.alpha_sigma(torch.as_tensor(t).reshape(-1))
        pad = alpha * silence[..., frames:] + sigma * pad_noise[..., frames:]
        full = torch.cat([x, pad.expand(x.shape[0], -1, -1, -1)], dim=-1)
        return self.unet(full, t, encoder_hidden_states=text).sample[..., :frames]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, samples: int) -> torch.Tensor:
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1)  # VaeImageProcessor.postprocess
        data = torch.flip(image, [2])[:, 0]  # denormalize_spectrogram reads channel 0
        mel = data * (LOG_MAX - LOG_MIN) + LOG_MIN
        return self.vocoder(mel)[:, :samples]


def pad_noise(model: AuffusionModel) -> torch.Tensor:
    """The adapter's documented padding noise: N(0, I) from ``pad_seed``, in the UNet layout."""
    c, _, f = model.latent_shape()
    return torch.randn(1, c, f, 16, generator=torch.Generator().manual_seed(model.pad_seed))


def test_prompts_are_encoded_unpadded_then_zero_padded_and_adapted(tiny, model):
    ref = Reference(tiny[0])
    cond = model.encode_prompt(PROMPTS)
    torch.testing.assert_close(cond.hidden_states, ref.prompt_embeds(PROMPTS))
    # The adapter's LayerNorm turns the zero padding into a constant row (not zeros).
    assert cond.hidden_states[1, -1].abs().sum() > 0
    torch.testing.assert_close(cond.pooled, cond.hidden_states.mean(dim=1))
    # The unconditional input is the pipeline's: zeros, not the encoding of "".
    empty = model.encode_prompt(["", "a dog barks"]).hidden_states
    assert empty[0].abs().sum() == 0 and empty[1].abs().sum() > 0


def test_long_prompts_are_encoded_whole_then_cut_to_77_hidden_states(tiny, model):
    ref = Reference(tiny[0])
    (clip_tok, clip, clip_adapter), (t5_tok, t5, t5_adapter) = ref.conditions
    prompt = " ".join(WORDS * 10)
    t5_ids = t5_tok(prompt, return_tensors="pt").input_ids
    assert t5_ids.shape[1] == 91 and t5_ids[0, -1] == t5_tok.eos_token_id
    got = model.encode_prompt([prompt]).hidden_states
    assert got.shape == (1, 2 * 77, 24)
    with torch.no_grad():
        whole = t5(t5_ids).last_hidden_state[:, :77]  # the end token was read, then cut
        torch.testing.assert_close(got[:, 77:], t5_adapter.norm(t5_adapter.proj(whole)))
        ids_cut_first = t5(t5_ids[:, :77]).last_hidden_state
        assert (ids_cut_first - whole).norm() / whole.norm() > 1e-3
        # CLIP cannot read past its 77 learned positions (Auffusion's pipeline fails there).
        clip_ids = clip_tok(prompt, return_tensors="pt").input_ids
        assert clip_ids.shape[1] > 77
        hidden = clip(clip_ids[:, :77]).last_hidden_state
        torch.testing.assert_close(got[:, :77], clip_adapter.norm(clip_adapter.proj(hidden)))


def test_prediction_sees_ten_seconds_of_context(tiny, model):
    ref = Reference(tiny[0])
    c, t, f = model.latent_shape()
    assert (t, f) == (8, 4) and model.context_frames == 32
    x = torch.randn(2, c, t, f, generator=torch.Generator().manual_seed(0))
    text = ref.prompt_embeds(PROMPTS)
    for step in (999, 500, 3):
        got = model.predict(x, torch.tensor(step), model.encode_prompt(PROMPTS))
        want = ref.predict(x.transpose(-1, -2), step, text, model.schedule, pad_noise(model))
        torch.testing.assert_close(got, want.transpose(-1, -2), rtol=1e-4, atol=1e-5)
    # Without the context the UNet's answer for the clip differs: the padding is not inert.
    bare = ref.unet(x.transpose(-1, -2), 500, encoder_hidden_states=text).sample
    got = model.predict(x, torch.tensor(500), model.encode_prompt(PROMPTS))
    assert not torch.allclose(got, bare.detach().transpose(-1, -2), atol=1e-3)


def test_unguided_sampling_reproduces_the_release_loop(tiny, model):
    """joint_sample with no discriminator == the release's denoising loop (CFG against zeros)."""
    ref = Reference(tiny[0])
    cfg, steps = 8.0, 3
    scheduler = model.make_scheduler(DDPMScheduler)
    cond, uncond = model.encode_prompt_pair(PROMPTS)
    stream = Stream(model, scheduler, cond, uncond, cfg_scale=cfg)
    stream.generator = torch.Generator().manual_seed(0)
    other = Stream(model, model.make_scheduler(DDPMScheduler), cond, uncond, cfg_scale=1.0)
    other.generator = torch.Generator().manual_seed(1)
    got, _ = joint_sample(stream, other, None, batch_size=2, num_inference_steps=steps)

    reference = DDPMScheduler.from_config(model.scheduler_config)
    reference.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    c, t, f = model.latent_shape()
    # Kept in our (time-first) layout so that DDPM's noise is drawn in the same order.
    x = torch.randn(2, c, t, f, generator=generator)
    text = ref.prompt_embeds(PROMPTS)
    noise = pad_noise(model)
    for step in reference.timesteps:
        unet_x = x.transpose(-1, -2)
        eps_c = ref.predict(unet_x, step, text, model.schedule, noise)
        eps_u = ref.predict(unet_x, step, torch.zeros_like(text), model.schedule, noise)
        eps = (eps_u + cfg * (eps_c - eps_u)).transpose(-1, -2)
        x = reference.step(eps, step, x, generator=generator).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-5)


def test_auffusion_noise_layout_reproduces_auffusions_seeded_loop(tiny):
    """A full 10.24 s clip (tiny: 32 mel frames, no context padding) with noise drawn as
    Auffusion's pipeline draws it: the initial latents and every DDPM step's noise in the
    UNet's (mels, frames) layout, from one seeded generator."""
    full = {"spectrogram": {"duration": 128 / 16000}, "context_frames": 32}
    model = load_base_model("auffusion", str(tiny[1]), noise_layout="auffusion", **full)
    ref = Reference(tiny[0])
    cfg, steps = 8.0, 3
    cond, uncond = model.encode_prompt_pair(PROMPTS)

    def sample(model, seed: int) -> torch.Tensor:
        stream = Stream(model, model.make_scheduler(DDPMScheduler), cond, uncond, cfg_scale=cfg)
        stream.generator = torch.Generator().manual_seed(seed)
        other = Stream(model, model.make_scheduler(DDPMScheduler), cond, uncond)
        other.generator = torch.Generator().manual_seed(seed + 1)
        return joint_sample(stream, other, None, batch_size=2, num_inference_steps=steps)[0]

    got = sample(model, seed=0)
    reference = DDPMScheduler.from_config(model.scheduler_config)
    reference.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    c, t, f = model.latent_shape()
    assert t == 16  # the whole context: nothing is padded
    x = torch.randn(2, c, f, t, generator=generator)  # AuffusionPipeline.prepare_latents
    text = ref.prompt_embeds(PROMPTS)
    with torch.no_grad():
        for step in reference.timesteps:
            eps_c = ref.unet(x, step, encoder_hidden_states=text).sample
            eps_u = ref.unet(x, step, encoder_hidden_states=torch.zeros_like(text)).sample
            eps = eps_u + cfg * (eps_c - eps_u)
            x = reference.step(eps, step, x, generator=generator).prev_sample
    torch.testing.assert_close(got, x.transpose(-1, -2), rtol=1e-4, atol=1e-5)
    # The default layout (the MMDisCo release's) draws the same numbers in another order.
    default = load_base_model("auffusion", str(tiny[1]), **full)
    assert default.noise_layout == "mmdisco"
    assert not torch.allclose(sample(default, seed=0), got, atol=1e-2)
    with pytest.raises(InputError, match="noise_layout: must be one of 'mmdisco', 'auffusion'"):
        load_base_model("auffusion", str(tiny[1]), noise_layout="mels")


def test_encode_pads_with_silence_to_the_context_and_decode_uses_the_vocoder(tiny, model):
    ref = Reference(tiny[0])
    wave = 0.3 * torch.randn(2, model.num_samples, generator=torch.Generator().manual_seed(3))
    want = ref.latents(wave, 32)[..., :8].transpose(-1, -2)
    torch.testing.assert_close(model.encode(wave), want, rtol=1e-4, atol=1e-5)
    # Posterior sampling: reproducible from the generator, and not the mode.
    a = model.encode(wave, torch.Generator().manual_seed(0))
    b = model.encode(wave, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, want, atol=1e-3)

    latents = torch.randn(2, *model.latent_shape(), generator=torch.Generator().manual_seed(4))
    audio = model.decode(latents)
    assert audio.shape == (2, model.num_samples) and audio.abs().max() > 1e-3
    expected = ref.decode(latents.transpose(-1, -2), model.num_samples)
    torch.testing.assert_close(audio, expected, rtol=1e-4, atol=1e-5)


def test_converted_vocoder_matches_the_weight_normalised_release(tiny, model):
    ref = Reference(tiny[0])
    mel = torch.randn(2, 8, 11, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model.vocoder(mel), ref.vocoder(mel), rtol=1e-5, atol=1e-6)
    assert model.vocoder(mel).shape == (2, 11 * 4)
    converted = json.loads((tiny[1] / "spectrogram.json").read_text())
    assert (converted["n_fft"], converted["hop_length"], converted["n_mels"]) == (16, 4, 8)
    for file in tiny[1].rglob("*"):
        assert file.suffix not in (".pt", ".bin", ".pkl"), file


def test_release_must_be_converted_and_pickles_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="convert it first: mmdisco convert-auffusion"):
        load_base_model("auffusion", str(tiny[0]))
    # A pickle that would build an arbitrary object is refused, naming the file.
    release = save_auffusion_release(tmp_path / "release")
    torch.save({"generator": {"x": torch.nn.Linear(1, 1)}}, release / "vocoder" / "vocoder.pt")
    with pytest.raises(ValueError, match=r"vocoder\.pt: refused or unreadable"):
        convert_auffusion(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()
