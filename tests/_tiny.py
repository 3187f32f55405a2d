"""Tiny random diffusers components for the real-model adapters, built offline.

Shared by the adapter tests and the end-to-end test: tiny configs, tokenizers from a small
vocabulary, each pipeline saved with ``save_pretrained`` so it loads back exactly as a
downloaded checkpoint would. Nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AnimateDiffPipeline,
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AudioLDM2UNet2DConditionModel,
    AudioLDMPipeline,
    AutoencoderKL,
    AutoencoderKLLTXVideo,
    AutoencoderOobleck,
    DDPMScheduler,
    EDMDPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    MotionAdapter,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import Tensor
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from mmdisco.base_models import BaseModel
from mmdisco.base_models.auffusion import SpectrogramImageConfig

WORDS = ["a", "dog", "barks", "hammer", "hits", "wood", "cat", "runs", "loud"]


# ---------------------------------------------------------------- tiny tokenizers


def _chars() -> list[str]:
    return sorted(set("".join(WORDS)))


def roberta_tokenizer() -> RobertaTokenizer:
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for piece in [*_chars(), "Ġ"]:
        vocab[piece] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=16)


def clip_tokenizer(max_length: int = 12) -> CLIPTokenizer:
    vocab: dict[str, int] = {}
    for c in _chars():
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    torch.manual_seed(0)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPTextConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
    )
    return CLIPTextModel(config)


def t5_tokenizer(max_length: int) -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -3.0) for c in _chars()]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def t5_encoder(vocab_size: int) -> T5EncoderModel:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def hifigan() -> SpeechT5HifiGan:
    torch.manual_seed(0)
    config = SpeechT5HifiGanConfig(
        model_in_dim=8,
        sampling_rate=16000,
        upsample_initial_channel=16,
        upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    )
    return SpeechT5HifiGan(config)


def sd_unet(**kwargs) -> UNet2DConditionModel:
    torch.manual_seed(0)
    config = dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    return UNet2DConditionModel(**{**config, **kwargs})


def kl_vae(channels: int) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=channels,
        out_channels=channels,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
    )


def sd_scheduler() -> DDPMScheduler:
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ---------------------------------------------------------------- tiny pipelines on disk


def save_audioldm(path: Path) -> Path:
    tokenizer = roberta_tokenizer()
    torch.manual_seed(0)
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            projection_dim=32,
        )
    )
    unet = sd_unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16),
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=32,
        class_embeddings_concat=True,
    )
    pipe = AudioLDMPipeline(
        vae=kl_vae(1),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_scheduler(),
        vocoder=hifigan(),
    )
    pipe.save_pretrained(path)
    return path


def save_audioldm2(path: Path) -> Path:
    tokenizer, tokenizer_2 = roberta_tokenizer(), t5_tokenizer(max_length=16)
    torch.manual_seed(0)
    text = ClapTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        projection_dim=16,
    )
    audio = ClapAudioConfig(
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        intermediate_size=37,
        depths=[2, 2],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
        hidden_size=192,
        projection_dim=16,
        patch_size=2,
        patch_stride=2,
        patch_embed_input_channels=4,
    )
    clap = ClapModel(
        ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    )
    language_model = GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=8, n_ctx=99, n_positions=99)
    )
    language_model.config.max_new_tokens = 4
    torch.manual_seed(0)
    unet = AudioLDM2UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 16, 32], [None, 16, 32]),
        attention_head_dim=4,
        norm_num_groups=4,
    )
    pipe = AudioLDM2Pipeline(
        vae=kl_vae(1),
        text_encoder=clap,
        text_encoder_2=t5_encoder(len(tokenizer_2)),
        projection_model=AudioLDM2ProjectionModel(
            text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16
        ),
        language_model=language_model,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        feature_extractor=ClapFeatureExtractor(),
        unet=unet,
        scheduler=sd_scheduler(),
        vocoder=hifigan(),
    )
    pipe.save_pretrained(path)
    return path


def save_animatediff(path: Path) -> Path:
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    adapter = MotionAdapter(
        block_out_channels=(8, 16),
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    pipe = AnimateDiffPipeline(
        vae=kl_vae(3),
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=sd_unet(),
        motion_adapter=adapter,
        scheduler=sd_scheduler(),
    )
    pipe.save_pretrained(path)
    return path


def save_spectrogram_image(path: Path) -> Path:
    """The generic spectrogram-image layout (SD pipeline + SpeechT5HifiGan vocoder)."""
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=kl_vae(3),
        text_encoder=clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=sd_unet(),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    hifigan().save_pretrained(path / "vocoder")
    spec = SpectrogramImageConfig(
        n_fft=16, win_length=16, hop_length=4, n_mels=8, duration=64 / 16000
    )
    spec.save(str(path / "spectrogram.json"))
    return path


def save_stable_audio(path: Path) -> Path:
    tokenizer = t5_tokenizer(max_length=12)
    text_encoder = t5_encoder(len(tokenizer))
    torch.manual_seed(0)
    transformer = StableAudioDiTModel(
        sample_size=4,
        in_channels=3,
        num_layers=2,
        attention_head_dim=4,
        num_key_value_attention_heads=2,
        out_channels=3,
        cross_attention_dim=4,
        time_proj_dim=8,
        global_states_input_dim=8,
        cross_attention_input_dim=4,
    )
    torch.manual_seed(0)
    vae = AutoencoderOobleck(
        encoder_hidden_size=6,
        downsampling_ratios=[1, 2],
        decoder_channels=3,
        decoder_input_channels=3,
        audio_channels=2,
        channel_multiples=[2, 4],
        sampling_rate=4,
    )
    torch.manual_seed(0)
    projection = StableAudioProjectionModel(
        text_encoder_dim=32, conditioning_dim=4, min_value=0, max_value=32
    )
    # The real checkpoint names CosineDPMSolverMultistepScheduler, which needs torchsde; it
    # cannot be instantiated here, so write its config under that name by hand.
    scheduler = EDMDPMSolverMultistepScheduler(
        sigma_min=0.3,
        sigma_max=500,
        solver_order=2,
        prediction_type="v_prediction",
        sigma_data=1.0,
        sigma_schedule="exponential",
    )
    pipe = StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(path)
    for name in ("model_index.json", "scheduler/scheduler_config.json"):
        file = path / name
        text = file.read_text().replace(
            "EDMDPMSolverMultistepScheduler", "CosineDPMSolverMultistepScheduler"
        )
        file.write_text(text)
    config = json.loads((path / "scheduler/scheduler_config.json").read_text())
    config["algorithm_type"] = "sde-dpmsolver++"  # as shipped; the adapter makes it an ODE
    (path / "scheduler/scheduler_config.json").write_text(json.dumps(config))
    return path


def save_ltx(path: Path) -> Path:
    tokenizer = t5_tokenizer(max_length=16)
    text_encoder = t5_encoder(len(tokenizer))
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    pipe = LTXPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    return path


# ---------------------------------------------------------------- Auffusion as released

# A tiny HiFi-GAN config in the released format (training keys included). The first upsampler
# has an odd kernel - rate, which the released generator pads asymmetrically.
RELEASED_VOCODER = {
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "upsample_rates": [2, 2],
    "upsample_kernel_sizes": [5, 4],
    "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_mels": 8,
    "n_fft": 16,
    "hop_size": 4,
    "win_size": 16,
    "sampling_rate": 16000,
    "fmin": 0,
    "fmax": 8000,
}
AUFFUSION_SECONDS = 64 / 16000  # 16 mel frames at hop 4 -> 8 latent frames
AUFFUSION = dict(context_frames=32)  # the UNet sees 16 latent frames: 8 of clip, 8 of silence


class ReleasedHifiGan(torch.nn.Module):
    """HiFi-GAN's generator as the Auffusion release builds it (torch weight_norm on every
    conv, asymmetric padding for odd kernel - rate): the reference the converter must match."""

    def __init__(self, h: dict) -> None:
        super().__init__()
        wn, conv = torch.nn.utils.weight_norm, torch.nn.Conv1d
        ch = h["upsample_initial_channel"]
        self.conv_pre = wn(conv(h["num_mels"], ch, 7, 1, padding=3))
        self.ups = torch.nn.ModuleList()
        rates = zip(h["upsample_rates"], h["upsample_kernel_sizes"], strict=True)
        for i, (u, k) in enumerate(rates):
            pad, extra = ((k - u) // 2, 0) if (k - u) % 2 == 0 else ((k - u) // 2 + 1, 1)
            self.ups.append(
                wn(torch.nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, pad, extra))
            )
        self.resblocks = torch.nn.ModuleList()
        for i in range(len(self.ups)):
            c = ch // 2 ** (i + 1)
            for k, ds in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"], strict=True):
                block = torch.nn.Module()
                block.convs1 = torch.nn.ModuleList(
                    wn(conv(c, c, k, 1, dilation=d, padding=(k * d - d) // 2)) for d in ds
                )
                block.convs2 = torch.nn.ModuleList(
                    wn(conv(c, c, k, 1, dilation=1, padding=(k - 1) // 2)) for _ in ds
                )
                self.resblocks.append(block)
        self.conv_post = wn(conv(c, 1, 7, 1, padding=3))
        self.kernels = len(h["resblock_kernel_sizes"])
        for p in self.parameters():  # released weights are not tiny-init; make outputs lively
            torch.nn.init.normal_(p, 0.0, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            xs = 0
            for block in self.resblocks[i * self.kernels : (i + 1) * self.kernels]:
                y = x
                for c1, c2 in zip(block.convs1, block.convs2, strict=True):
                    y = c2(F.leaky_relu(c1(F.leaky_relu(y, 0.1)), 0.1)) + y
                xs = xs + y
            x = xs / self.kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))[:, 0]


def save_auffusion_release(path: Path) -> Path:
    """A tiny checkpoint laid out as ``auffusion/auffusion-full`` is released: diffusers UNet,
    VAE and PNDM scheduler, a CLIP and a T5 text encoder with their tokenizers, a condition
    adapter for each and a HiFi-GAN, the last two as ``torch.save`` pickles."""
    from diffusers import PNDMScheduler

    path.mkdir(parents=True)
    torch.manual_seed(0)
    sd_unet(cross_attention_dim=24).save_pretrained(path / "unet")
    kl_vae(3).save_pretrained(path / "vae")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True
    ).save_pretrained(path / "scheduler")
    # Two conditions (condition_config.json may list several): CLIP, whose 77 learned positions
    # bound what it reads, and T5, whose relative positions read any length.
    clip = clip_tokenizer(max_length=77)
    t5 = t5_tokenizer(max_length=12)
    items = []
    for i, (tokenizer, encoder) in enumerate(
        ((clip, clip_text_encoder(clip)), (t5, t5_encoder(len(t5))))
    ):
        encoder.save_pretrained(path / f"text_encoder_{i}")
        tokenizer.save_pretrained(path / f"text_encoder_{i}")
        torch.manual_seed(1 + i)
        adapter = torch.nn.Module()
        adapter.proj, adapter.norm = torch.nn.Linear(32, 24), torch.nn.LayerNorm(24)
        torch.nn.init.normal_(adapter.norm.weight, 1.0, 0.2)
        (path / f"condition_adapter_{i}").mkdir()
        torch.save(adapter.state_dict(), path / f"condition_adapter_{i}" / "condition_adapter.pt")
        (path / f"condition_adapter_{i}" / "config.json").write_text(
            json.dumps({"condition_dim": 32, "cross_attention_dim": 24, "model_name": f"c{i}"})
        )
        items.append(
            {
                "text_encoder_name": f"text_encoder_{i}",
                "condition_adapter_name": f"condition_adapter_{i}",
                "condition_max_length": 77,
                "condition_dim": 32,
                "cross_attention_dim": 24,
            }
        )
    (path / "condition_config.json").write_text(json.dumps(items))
    torch.manual_seed(2)
    (path / "vocoder").mkdir()
    (path / "vocoder" / "config.json").write_text(json.dumps(RELEASED_VOCODER))
    generator = ReleasedHifiGan(RELEASED_VOCODER)
    torch.save({"generator": generator.state_dict()}, path / "vocoder" / "vocoder.pt")
    return path


def save_auffusion(path: Path) -> Path:
    """The tiny release converted by ``convert_auffusion`` (what the adapter loads), with a
    spectrogram matching the tiny vocoder."""
    from dataclasses import replace

    from mmdisco.base_models.auffusion import SpectrogramImageConfig, convert_auffusion

    release = save_auffusion_release(path.with_name(path.name + "-release"))
    convert_auffusion(release, path)
    spec = SpectrogramImageConfig.load(path / "spectrogram.json")
    replace(spec, duration=AUFFUSION_SECONDS).save(path / "spectrogram.json")
    return path


VIDEO = dict(num_frames=4, height=16, width=16)
LTX_VIDEO = dict(num_frames=9, height=32, width=32, max_sequence_length=16)


def audioldm_animatediff_experiment(tmp_path: Path, seconds: float = 0.5, **sections) -> dict:
    """An experiment config (as YAML would give it) on tiny AudioLDM + AnimateDiff pipelines
    saved under ``tmp_path``; ``sections`` update its sections key by key."""
    data = {
        "name": "tiny",
        "output_dir": str(tmp_path / "run"),
        "audio": {
            "adapter": "audioldm",
            "path": str(save_audioldm(tmp_path / "audioldm")),
            "cfg_scale": 2.5,
            "options": {"n_fft": 16, "audio_length_in_s": seconds},
        },
        "video": {
            "adapter": "animatediff",
            "path": str(save_animatediff(tmp_path / "animatediff")),
            "cfg_scale": 7.5,
            "options": {**VIDEO, "fps": 8.0},
        },
        "data": {
            "source": str(tmp_path / "none.csv"),
            "cache_dir": str(tmp_path / "cache"),
            "duration": seconds,
            "size": 16,
        },
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return data


class SilentFlowAudio(BaseModel):
    """A flow model that predicts zero velocity: an audio partner with nothing to say, for
    checking a video adapter alone through ``joint_sample``."""

    modality = "audio"

    def __init__(self) -> None:
        self.scheduler_config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0}

    def latent_shape(self) -> tuple[int, ...]:
        return (2, 4)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return torch.zeros_like(x_t)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
