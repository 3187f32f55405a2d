"""The discriminator's optimiser: Adam (the paper's) or AdamW with decay on layer weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("adam", "adamw")


def weight_decay_groups(
    model: nn.Module, weight_decay: float, decay_all: bool = False
) -> list[dict[str, Any]]:
    """AdamW's parameter groups: weight decay on the weights of linear and convolution layers,
    none on biases, norms, priors and learnt scales (``decay_all``: on every parameter).
    Decayed, the code scales ``exp(a + b * lambda)`` of the shared-latent encoders fell from
    ``a = 1.5`` to 0.03 in 4000 steps of the continuous world's conv recipe: the decay, not
    the loss, had set them."""
    params = list(model.parameters())
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if decay_all:
        decayed = {id(p) for p in params}
    else:
        decayed = {id(m.weight) for m in model.modules() if isinstance(m, layers)}
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    kind: str,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> torch.optim.Optimizer:
    """``"adam"``: Adam with ``weight_decay`` as an L2 term on every parameter (one parameter
    group, the layout of every checkpoint written before ``"adamw"`` existed); ``"adamw"``:
    decoupled decay on linear and convolution weights only (:func:`weight_decay_groups`)."""
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=lr, betas=betas)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
