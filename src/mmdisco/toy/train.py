"""Training loops of the toy experiment: the 1-D base model and the joint discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.toy.models import BaseMLP, MLPDiscriminator, toy_schedule
from mmdisco.training.losses import LossConfig, mmdisco_loss

LR = 1e-3  # Adam's initial rate (Table 5), cosine-decayed to 0 over training: sharper modes
BATCH_SIZE = 512
ROWS = {"d": (True, False), "dlsm": (False, True), "both": (True, True)}
"""Table 1's ablation rows: which of (L_D, L_DLSM) each one trains with."""


def _init(cls: type, seed: int, **kwargs) -> torch.nn.Module:
    """Build a module with seeded initialisation, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs)


def _batch(data: Tensor, size: int, generator: torch.Generator) -> Tensor:
    return data[torch.randint(len(data), (size,), generator=generator)]


def train_base(
    data: Tensor,
    steps: int,
    seed: int,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    timestep_groups: int = 8,
    ema_decay: float = 0.0,
) -> BaseMLP:
    """Epsilon-prediction DDPM training (uniform timesteps, MSE) on 1-D data (N, 1).

    Each batch draws ``timestep_groups`` uniform timesteps, each shared by an equal share of
    the batch: the marginal over t stays uniform, and the 2M-parameter time MLP runs on 8
    rows instead of 512 (it dominates the cost on CPU). With ``ema_decay`` > 0 the returned
    weights are an exponential moving average of the iterates, which averages out the noise
    of the last steps (sharper modes, fewer samples trailing between them).
    """
    if data.ndim != 2 or data.shape[1] != 1:
        raise ValueError(f"base-model data must have shape (N, 1), got {tuple(data.shape)}")
    generator = torch.Generator().manual_seed(seed)
    net = _init(BaseMLP, seed)
    schedule = toy_schedule()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    params = list(net.parameters())
    ema = [p.detach().clone() for p in params] if ema_decay > 0 else None
    for _ in tqdm(range(steps), desc="base model", leave=False):
        x0 = _batch(data, batch_size, generator)
        t = torch.randint(schedule.num_train_timesteps, (timestep_groups,), generator=generator)
        t = t.repeat_interleave(-(-batch_size // timestep_groups))[:batch_size]
        noise = torch.randn(x0.shape, generator=generator)
        loss = F.mse_loss(net(schedule.add_noise(x0, noise, t), t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
    return net.freeze()


def train_discriminator(
    row: str,
    real: Tensor,
    fake: Tensor,
    base: BaseMLP,
    steps: int,
    seed: int,
    dlsm_weight: float = 1.0,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
) -> MLPDiscriminator:
    """Train h on real pairs (N, 2) vs independently generated fake pairs (N, 2); ``base`` is
    the frozen base model, which serves as both eps_x and eps_y in L_DLSM.

    ``row`` picks the loss: "d" (L_D), "dlsm" (L_DLSM) or "both" (L_D + dlsm_weight L_DLSM).
    """
    if row not in ROWS:
        raise ValueError(f"row must be one of {sorted(ROWS)}, got {row!r}")
    for name, pairs in (("real", real), ("fake", fake)):
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"{name} pairs must have shape (N, 2), got {tuple(pairs.shape)}")
    use_d, use_dlsm = ROWS[row]
    generator = torch.Generator().manual_seed(seed)
    disc = _init(MLPDiscriminator, seed)
    schedule = toy_schedule()
    opt = torch.optim.Adam(disc.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(range(steps), desc=f"discriminator ({row})", leave=False)
    for _ in bar:
        r, f = _batch(real, batch_size, generator), _batch(fake, batch_size, generator)
        out = mmdisco_loss(
            disc,
            r[:, :1],
            r[:, 1:],
            f[:, :1],
            f[:, 1:],
            schedule,
            schedule,
            LossConfig(dlsm_weight=dlsm_weight, use_d=use_d, use_dlsm=use_dlsm),
            eps_audio=base,
            eps_video=base,
            generator=generator,
        )
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        decay.step()
    return disc.eval().requires_grad_(requires_grad=False)
