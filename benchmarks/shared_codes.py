"""How finely must a shared-latent head resolve the shared variables for its input-gradient
to point where the exact ratio's does? The exact posteriors, pooled into fewer codes, answer
it without training anything.

The continuous world's exact ratio has the shared-latent head's own form,

    log r_t(a, v) = log sum_s p(s | a_t) p(s | v_t) / pi_s,

over its 6080 shared states ``s`` (32 shades x 190 event pairs). A learnt head has ``K``
codes instead. Here each code is a cluster of states (shades binned, event times binned on
the 1/6-frame lattice), ``q_m(k)`` is the exact posterior mass of its states, and ``h = sum_g
log sum_k q_a(k) q_v(k) / pi_k`` over one group of codes, or over two (the shade and the
event pair, each with its own posterior: the form of ``SharedLatentConfig(num_factors=2)``).
A learnt head of that form can do no better than its row here, whatever its encoders learn.
Cosines and logit correlations come from the same calibration as every network's
(``calibrate_network``: held-out real and independent pairs of the seed, its noise levels).

    python benchmarks/shared_codes.py          # -> results/continuous/shared_codes/
    python benchmarks/shared_codes.py --quick  # two heads on 8 pairs, print only
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mmdisco.io import save_figure, write_json_atomic, write_text_atomic
from mmdisco.world.continuous import ContinuousWorldConfig
from mmdisco.world.continuous_eval import NOISE_LEVELS, calibrate_network
from mmdisco.world.continuous_ratio import (
    ContinuousLogRatio,
    ContinuousWorldTerms,
    state_log_likelihoods,
)

OUT = Path(__file__).parent / "results" / "continuous" / "shared_codes"
SEED = 10  # an evaluation seed's calibration pairs: nothing is trained or chosen here
PAIRS = 256  # the benchmark's calibration pairs, real and independent
ALL = 0  # a bin that pools every value of its variable into one code
# name -> groups, each (shade bin, event-time bin); shades are numbered class-major (8 per
# class), event times on the world's lattice of 1/6 frame
HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "every state": ((1, 1),),
    "event times to 1/3 frame": ((1, 2),),
    "event times to 1/2 frame": ((1, 3),),
    "event times to 1 frame": ((1, 6),),
    "shades in pairs": ((2, 1),),
    "shades in fours": ((4, 1),),
    "class only, event times exact": ((8, 1),),
    "shade only": ((1, ALL),),
    "event times only": ((ALL, 1),),
    "two groups: shade, event times": ((1, ALL), (ALL, 1)),
}
QUICK_HEADS = ("every state", "two groups: shade, event times")


def code_index(config: ContinuousWorldConfig, shade_bin: int, time_bin: int) -> Tensor:
    """For every shared state, in the order of ``log_likelihoods(...).flatten(1)`` (shade
    major), the index of its code: the states whose shades share ``shade // shade_bin`` and
    whose two event times share ``time // time_bin`` form one code (``ALL``: one bin)."""
    pairs = torch.tensor(config.event_pairs)
    shades = torch.arange(config.num_shades)
    shade_key = shades // shade_bin if shade_bin != ALL else torch.zeros_like(shades)
    if time_bin == ALL:
        pair_key = torch.zeros(len(pairs), dtype=torch.long)
    else:
        binned = pairs // time_bin
        pair_key = binned[:, 0] * (int(binned.max()) + 1) + binned[:, 1]
    key = shade_key[:, None] * (int(pair_key.max()) + 1) + pair_key[None, :]
    return torch.unique(key.flatten(), return_inverse=True)[1]


def pooled_log_probs(log_likelihood: Tensor, index: Tensor, codes: int) -> Tensor:
    """``(N, states)`` log-likelihoods -> ``(N, codes)`` log posterior masses of the codes
    (uniform prior over states), exact where a code's mass underflows a float64."""
    log_post = log_likelihood - torch.logsumexp(log_likelihood, 1, keepdim=True)
    expanded = index.expand_as(log_post)
    peak = torch.full((len(log_post), codes), -math.inf, dtype=log_post.dtype)
    peak = peak.scatter_reduce(1, expanded, log_post.detach(), "amax")
    mass = torch.zeros_like(peak).scatter_add(
        1, expanded, (log_post - peak.gather(1, expanded)).exp()
    )
    return mass.log() + peak


class PooledLogRatio(nn.Module):
    """``h = sum_g log sum_k q_a(k) q_v(k) / pi_k``, each group's codes clusters of the world's
    shared states (:func:`code_index`) and ``q`` the exact posterior mass of each cluster.
    Called like any discriminator; with the single group ``(1, 1)`` it is the exact ratio."""

    def __init__(self, config: ContinuousWorldConfig, groups: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.terms = ContinuousWorldTerms(config)
        self.indices = [code_index(config, *group) for group in groups]
        self.codes = [int(index.max()) + 1 for index in self.indices]
        self.log_priors = [
            torch.log(torch.bincount(index, minlength=k).double() / len(index))
            for index, k in zip(self.indices, self.codes, strict=True)
        ]

    def forward(self, audio: Tensor, video: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        l_a = state_log_likelihoods(self.terms, audio, snr_a, "audio")
        l_v = state_log_likelihoods(self.terms, video, snr_v, "video")
        h = torch.zeros(len(audio), dtype=torch.float64)
        for index, k, log_prior in zip(self.indices, self.codes, self.log_priors, strict=True):
            q_a, q_v = pooled_log_probs(l_a, index, k), pooled_log_probs(l_v, index, k)
            h = h + torch.logsumexp(q_a + q_v - log_prior, 1)
        return h.to(audio.dtype)


def run(heads: tuple[str, ...], pairs: int, seed: int) -> dict:
    torch.set_num_threads(1)
    config = ContinuousWorldConfig()
    exact = ContinuousLogRatio(config)
    report = {"seed": seed, "calibration_pairs": pairs, "rows": {}}
    for name in tqdm(heads, desc="heads"):
        head = PooledLogRatio(config, HEADS[name])
        start = time.perf_counter()
        rows = calibrate_network(head, exact, config, pairs, seed)
        report["rows"][name] = {
            "groups": [list(group) for group in HEADS[name]],
            "codes": head.codes,
            "seconds": round(time.perf_counter() - start, 1),
            "calibration": {
                str(row["noise_level"]): {
                    key: row[key] for key in ("logit_corr", "cos_audio", "cos_video")
                }
                for row in rows
            },
        }
    return report


def _codes(row: dict) -> str:
    return " + ".join(str(k) for k in row["codes"])


def markdown(report: dict) -> str:
    levels = [str(level) for level in NOISE_LEVELS]

    def cell(row: dict, key: str) -> str:
        values = [row["calibration"][level][key] for level in levels]
        return " / ".join("-" if v is None else f"{v:.2f}" for v in values)

    lines = [
        "# How many shared codes the ratio's form needs, with exact posteriors",
        "",
        f"Continuous world, seed {report['seed']}'s calibration pairs "
        f"({report['calibration_pairs']} held-out real and as many independent). Each head "
        "pools the world's 6080 shared states into codes and uses their exact posterior "
        "masses; no training. `-`: fewer than 8 pairs with an exact gradient to match.",
        "",
        f"| head | codes | logit correlation, t/T {' / '.join(levels)} | audio cosine, same "
        "| video cosine, same |",
        "|---|---:|---|---|---|",
    ]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {_codes(row)} | {cell(row, 'logit_corr')} | {cell(row, 'cos_audio')} "
            f"| {cell(row, 'cos_video')} |"
        )
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> Path:
    """Input-gradient cosine against the number of codes, per modality and noise level (t/T
    0.3 and above: where the calibration bar is set): the one-group heads as two series, the
    two-group head as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [level for level in NOISE_LEVELS if level >= 0.3]
    series = {
        "coarser event times": [
            "every state",
            "event times to 1/3 frame",
            "event times to 1/2 frame",
            "event times to 1 frame",
            "shade only",
        ],
        "coarser shades": [
            "every state",
            "shades in pairs",
            "shades in fours",
            "class only, event times exact",
            "event times only",
        ],
    }
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4), squeeze=False)
    two = report["rows"].get("two groups: shade, event times")
    for ax, modality in zip(axes[0], ("audio", "video"), strict=True):
        for i, level in enumerate(levels):
            for style, (label, names) in zip(("o-", "s--"), series.items(), strict=True):
                rows = [report["rows"][n] for n in names if n in report["rows"]]
                xs = [row["codes"][0] for row in rows]
                ys = [row["calibration"][str(level)][f"cos_{modality}"] for row in rows]
                ys = [math.nan if y is None else y for y in ys]
                ax.plot(xs, ys, style, color=f"C{i}", label=f"t/T {level}, {label}")
            if two is not None:
                y = two["calibration"][str(level)][f"cos_{modality}"]
                ax.plot(
                    [sum(two["codes"])],
                    [math.nan if y is None else y],
                    "*",
                    ms=12,
                    color=f"C{i}",
                    markeredgecolor="black",
                    label=f"t/T {level}, two groups (shade, event times)",
                )
        ax.axhline(0.7, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("codes (two groups: their sum)")
        ax.set_ylabel(f"{modality} input-gradient cosine")
        ax.set_ylim(0, 1.02)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle("Exact posteriors pooled into fewer codes (dotted: the calibration bar, 0.7)")
    fig.tight_layout(rect=(0, 0, 0.79, 1))
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, help=f"default: {OUT} (--quick: print only)")
    args = parser.parse_args()
    heads, pairs = (QUICK_HEADS, 8) if args.quick else (tuple(HEADS), PAIRS)
    report = run(heads, pairs, args.seed)
    out = args.out or (None if args.quick else OUT)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "report.json", report)
        write_text_atomic(out / "report.md", markdown(report))
        figure(report, out / "report.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
