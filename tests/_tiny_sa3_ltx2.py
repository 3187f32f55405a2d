"""Tiny random Stable Audio 3 and LTX-2 pipelines, built offline and saved with
``save_pretrained`` so that adapters load them as they would a downloaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    AutoencoderSAME,
    FlowMatchEulerDiscreteScheduler,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
    StableAudio3DiTModel,
    StableAudio3Pipeline,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
    StableAudio3DurationEmbedder,
)
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    GemmaTokenizerFast,
    T5GemmaConfig,
    T5GemmaEncoderModel,
)

from _tiny import WORDS, _chars

SA3_SECONDS = 2.0  # 16 Hz audio, 4x downsampling: 8 latent frames


def gemma_tokenizer(max_length: int) -> GemmaTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for piece in [*("▁" + w for w in WORDS), *_chars(), "▁"]:
        vocab.setdefault(piece, len(vocab))
    return GemmaTokenizerFast(vocab=vocab, merges=[], model_max_length=max_length)


def t5gemma_encoder(vocab_size: int, width: int = 16) -> T5GemmaEncoderModel:
    torch.manual_seed(0)
    module = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=8,
        layer_types=["full_attention"],
    )
    config = T5GemmaConfig(
        encoder=module, decoder=module, vocab_size=vocab_size, is_encoder_decoder=False
    )
    return T5GemmaEncoderModel(config)


def save_stable_audio3(path: Path, *, stochastic: bool = False) -> Path:
    """``stochastic``: the distilled "medium" checkpoint's ping-pong sampler; else "base"."""
    tokenizer = gemma_tokenizer(max_length=16)
    text_encoder = t5gemma_encoder(len(tokenizer))
    torch.manual_seed(0)
    transformer = StableAudio3DiTModel(
        io_channels=4,
        embed_dim=16,
        depth=1,
        num_heads=2,
        cond_token_dim=16,
        global_cond_dim=16,
        local_add_cond_dim=5,
        timestep_features_dim=8,
        num_memory_tokens=2,
    )
    torch.manual_seed(0)
    vae = AutoencoderSAME(
        audio_channels=2,
        patch_size=2,
        encoder_channels=8,
        encoder_c_mults=[2],
        encoder_strides=[2],
        encoder_transformer_depths=[1],
        latent_dim=4,
        dim_heads=8,
        sampling_rate=16,
    )
    torch.manual_seed(0)
    duration_embedder = StableAudio3DurationEmbedder(output_dim=16, fourier_dim=8)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1, shift=1.0, stochastic_sampling=stochastic
    )
    pipe = StableAudio3Pipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        duration_embedder=duration_embedder,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(path)
    return path


def gemma3_encoder(vocab_size: int) -> Gemma3ForConditionalGeneration:
    torch.manual_seed(0)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=8,
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    return Gemma3ForConditionalGeneration(config)


# A 2-block transformer: STG skips self-attention in block 1 (the real model's default is 28).
LTX2_VIDEO = dict(num_frames=5, height=32, width=32, frame_rate=25.0, max_sequence_length=16)


def save_ltx2(path: Path) -> Path:
    """Tiny LTX-2 after diffusers' own fast tests (tests/pipelines/ltx2/testing_utils.py),
    with a Gemma 3 built here and a dynamically shifted scheduler, as the real checkpoint."""
    tokenizer = gemma_tokenizer(max_length=16)
    text_encoder = gemma3_encoder(len(tokenizer))
    width = text_encoder.config.text_config.hidden_size
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=2,
        caption_channels=width,
        rope_double_precision=False,
        rope_type="split",
        perturbed_attn=True,  # LTX-2.3's attention, which STG perturbs
    )
    torch.manual_seed(0)
    connector = dict(num_attention_heads=2, attention_head_dim=8, num_layers=1)
    connectors = LTX2TextConnectors(
        caption_channels=width,
        text_proj_in_factor=text_encoder.config.text_config.num_hidden_layers + 1,
        **{f"video_connector_{k}": v for k, v in connector.items()},
        **{f"audio_connector_{k}": v for k, v in connector.items()},
        video_connector_num_learnable_registers=None,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_double_precision=False,
        rope_type="split",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        latent_channels=4,
        block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        layers_per_block=(1,),
        decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False),
        downsample_type=("spatiotemporal",),
        upsample_residual=(False,),
        upsample_factor=(1,),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1, 2, 4),  # two 2x downsamplings: the 4x of mel_compression_ratio
        num_res_blocks=1,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        mel_bins=8,
    )
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=2 * 8,
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        output_sampling_rate=16000,
    )
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    pipe.save_pretrained(path)
    return path
