"""Toy pairs from two copies of the base model through :func:`mmdisco.sampling.joint_sample`."""

from __future__ import annotations

import torch
from torch import Tensor

from mmdisco.guidance import DiscriminatorFn
from mmdisco.sampling import Stream, joint_sample
from mmdisco.toy.models import BaseMLP, ToyBaseModel


def base_pair(net: BaseMLP) -> tuple[ToyBaseModel, ToyBaseModel]:
    """The paper duplicates one trained net for x and y; both wrappers share its weights."""
    return ToyBaseModel(net, "audio"), ToyBaseModel(net, "video")


def sample_pairs(
    net: BaseMLP,
    n: int,
    seed: int,
    discriminator: DiscriminatorFn | None = None,
    num_inference_steps: int = 500,
    guidance_scale: float = 1.0,
) -> Tensor:
    """``n`` pairs (n, 2) by ancestral DDPM, x and y with independent noise; guided by
    ``discriminator`` when given (None: the base models independently, "no joint")."""
    model_x, model_y = base_pair(net)
    streams = [
        Stream(
            model,
            model.make_scheduler(),
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed * 2 + i),
        )
        for i, model in enumerate((model_x, model_y))
    ]
    x, y = joint_sample(
        *streams,
        discriminator,
        batch_size=n,
        num_inference_steps=num_inference_steps,
        progress=False,
    )
    return torch.cat([x, y], dim=1)
