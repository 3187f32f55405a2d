"""How close a discriminator is to the world's exact log density ratio.

MMDisCo guides with the discriminator's input-gradient, so a discriminator is only as good
as that gradient's agreement with ``grad log r_t``. :func:`calibrate` noises real and fake
pairs at a few noise levels (one level shared by both modalities, as in training) and
compares a discriminator with :class:`mmdisco.world.ratio.ExactLogRatio` on the same inputs:

* ``logit_corr``: Pearson correlation of the logits with ``log r_t`` over real and fake pairs;
* ``cos_audio`` / ``cos_video``: mean cosine between the input-gradients, per modality, over
  the pairs whose exact gradient matters (``sigma * |grad log r| >= GRAD_FLOOR`` in epsilon
  units; ``None`` when fewer than ``MIN_PAIRS`` pairs qualify, e.g. video at low noise,
  where the video's clip is already certain and ``grad_v log r`` vanishes for 99.6 % of
  pairs: a mean of one or two cosines says nothing); ``frac_*`` is the share of pairs counted;
* ``gain_audio`` / ``gain_video``: median over those pairs of ``|grad h| / |grad log r|``,
  the scale at which guiding with ``h`` moves as far as the exact ratio at scale 1;
* ``accuracy`` and ``bce`` of the discriminator, next to the exact ratio's
  (``bayes_accuracy``: no classifier does better on these pairs; ``bayes_bce``).

:func:`plot_calibration` draws one figure of these against the noise level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.diffusion import NoiseSchedule
from mmdisco.guidance import DiscriminatorOutput, discriminator_gradients

NOISE_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
GRAD_FLOOR = 1e-2  # sigma * |grad log r| below this moves epsilon by < 1e-2: nothing to match
MIN_PAIRS = 8  # fewer pairs with a gradient to match: no cosine reported


def _noised(x0: Tensor, schedule: NoiseSchedule, t: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return schedule.add_noise(x0, noise, t).float()


def _cosine(g: Tensor, ref: Tensor, sigma: Tensor) -> tuple[float | None, float, float | None]:
    """(mean cosine, fraction counted, median gain) over the samples whose reference matters."""
    g, ref = g.flatten(1).double(), ref.flatten(1).double()
    ref_norm, g_norm = ref.norm(dim=1), g.norm(dim=1)
    keep = sigma.double() * ref_norm >= GRAD_FLOOR
    if keep.sum() < MIN_PAIRS:
        return None, float(keep.double().mean()), None
    cos = F.cosine_similarity(g[keep], ref[keep], dim=1, eps=1e-30)
    gain = (g_norm[keep] / ref_norm[keep]).median()
    return float(cos.mean()), float(keep.double().mean()), float(gain)


def _bce(real: Tensor, fake: Tensor) -> float:
    return float(F.softplus(-real.double()).mean() + F.softplus(fake.double()).mean())


def _accuracy(real: Tensor, fake: Tensor) -> float:
    correct = (real > 0).double().sum() + (fake <= 0).double().sum()
    return float(correct / (len(real) + len(fake)))


def calibrate(
    discriminator: Callable[..., Tensor],
    exact: Callable[..., Tensor],
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    schedule_audio: NoiseSchedule,
    schedule_video: NoiseSchedule,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    seed: int = 0,
    batch_size: int = 128,
) -> list[dict[str, Any]]:
    """One row of measures per noise level (fraction of the schedule, 1 = pure noise).

    ``real`` and ``fake`` are ``(audio, video)`` latents in the base models' spaces (clean);
    each is noised once per level with noise seeded by ``(seed, level index)``.
    """
    rows = []
    for k, u in enumerate(noise_levels):
        if not 0.0 <= u < 1.0:
            raise ValueError(f"noise levels must lie in [0, 1), got {u}")
        generator = torch.Generator().manual_seed(seed * 1000 + k)
        parts: dict[str, dict[str, list[Tensor]]] = {}
        for name, (audio, video) in (("real", real), ("fake", fake)):
            t_a = schedule_audio.timesteps_from_fraction(torch.full((len(audio),), u))
            t_v = schedule_video.timesteps_from_fraction(torch.full((len(video),), u))
            a_t = _noised(audio, schedule_audio, t_a, generator)
            v_t = _noised(video, schedule_video, t_v, generator)
            snr_a, snr_v = schedule_audio.log_snr(t_a).float(), schedule_video.log_snr(t_v).float()
            sig_a, sig_v = schedule_audio.alpha_sigma(t_a)[1], schedule_video.alpha_sigma(t_v)[1]
            out: dict[str, list[Tensor]] = {"sig_a": [sig_a], "sig_v": [sig_v]}
            for who, fn in (("disc", discriminator), ("exact", exact)):
                for start in range(0, len(a_t), batch_size):
                    sl = slice(start, start + batch_size)
                    o: DiscriminatorOutput = discriminator_gradients(
                        fn, a_t[sl], v_t[sl], snr_a[sl], snr_v[sl]
                    )
                    for field, value in (
                        ("h", o.logits),
                        ("ga", o.grad_audio),
                        ("gv", o.grad_video),
                    ):
                        out.setdefault(f"{who}_{field}", []).append(value)
            parts[name] = out
        cat = {name: {key: torch.cat(v) for key, v in out.items()} for name, out in parts.items()}
        both = {key: torch.cat([cat["real"][key], cat["fake"][key]]) for key in cat["real"]}
        h, r = both["disc_h"].double(), both["exact_h"].double()
        row: dict[str, Any] = {
            "noise_level": u,
            "logit_corr": float(torch.corrcoef(torch.stack([h, r]))[0, 1]),
        }
        for modality, grad, sig in (("audio", "ga", "sig_a"), ("video", "gv", "sig_v")):
            cos, frac, gain = _cosine(both[f"disc_{grad}"], both[f"exact_{grad}"], both[sig])
            row[f"cos_{modality}"], row[f"frac_{modality}"] = cos, frac
            row[f"gain_{modality}"] = gain
        real_h, fake_h = cat["real"]["disc_h"], cat["fake"]["disc_h"]
        real_r, fake_r = cat["real"]["exact_h"], cat["fake"]["exact_h"]
        row.update(
            accuracy=_accuracy(real_h, fake_h),
            bayes_accuracy=_accuracy(real_r, fake_r),
            bce=_bce(real_h, fake_h),
            bayes_bce=_bce(real_r, fake_r),
        )
        rows.append(row)
    return rows


def plot_calibration(
    path: str | Path, reports: dict[str, list[dict[str, Any]]], title: str = ""
) -> Path:
    """One figure: logit correlation, gradient cosines and accuracy (next to the Bayes rate)
    against the noise level, one line per discriminator in ``reports``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmdisco.io import save_figure

    panels = (
        ("logit_corr", "logit correlation with log r"),
        ("cos_audio", "input-gradient cosine, audio"),
        ("cos_video", "input-gradient cosine, video"),
        ("accuracy", "accuracy (dashed: Bayes rate)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for i, (name, rows) in enumerate(reports.items()):
            xs = [row["noise_level"] for row in rows if row[key] is not None]
            ys = [row[key] for row in rows if row[key] is not None]
            (line,) = ax.plot(xs, ys, "o-", label=name, color=f"C{i}")
            if key == "accuracy":
                ax.plot(
                    [row["noise_level"] for row in rows],
                    [row["bayes_accuracy"] for row in rows],
                    "--",
                    color=line.get_color(),
                    alpha=0.6,
                )
        missing = sorted(
            {row["noise_level"] for rows in reports.values() for row in rows if row[key] is None}
        )
        if missing:
            levels = ", ".join(f"{u:g}" for u in missing)
            ax.text(
                0.03,
                0.05,
                f"no cosine at t/T = {levels}:\nfewer than {MIN_PAIRS} pairs "
                "with an exact gradient",
                transform=ax.transAxes,
                fontsize=7,
            )
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("noise level t / T")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(-0.1 if key != "accuracy" else 0.4, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
