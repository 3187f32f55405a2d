"""CLIP text conditioning shared by the Stable-Diffusion-family adapters."""

from __future__ import annotations

from typing import Any

import torch

from mmdisco.base_models.base import PromptEmbeds


def tokenize(tokenizer: Any, prompts: list[str], device: Any = None) -> Any:
    """Token ids and attention mask, padded to the tokenizer's length as diffusers' text
    pipelines pad them (on ``device`` when given)."""
    inputs = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return inputs if device is None else inputs.to(device)


@torch.no_grad()
def clip_prompt_embeds(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> PromptEmbeds:
    """Last hidden states (what ``StableDiffusionPipeline.encode_prompt`` returns with
    ``clip_skip=None``) and CLIP's pooled output, for the discriminator."""
    inputs = tokenize(tokenizer, prompts)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = inputs.attention_mask.to(text_encoder.device)
    out = text_encoder(inputs.input_ids.to(text_encoder.device), attention_mask=mask)
    return PromptEmbeds(hidden_states=out[0], pooled=out[1].float())
