"""Tiny random Stable Audio 3 and LTX-2 pipelines, built offline and saved with
``save_pretrained`` so that adapters load them as they would a downloaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderSAME,
    FlowMatchEulerDiscreteScheduler,
    StableAudio3DiTModel,
    StableAudio3Pipeline,
)
from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
    StableAudio3DurationEmbedder,
)
from transformers import GemmaTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel

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
