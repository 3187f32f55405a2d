"""The sliding discriminator window on clips three windows long: does a clip guided through
overlapping windows align as well as its parts guided alone?

A long clip of the continuous world is ``CLIPS`` world clips concatenated in time
(``sample_continuous(..., clips=CLIPS)``): the base models denoise each part as a world clip
on its own, and the saved evaluation networks (``results/continuous/networks/seed_S/``,
trained on one clip) guide the whole of it at the benchmark's scale. Rows:

- ``independent``: no guidance;
- ``alone``: each part guided by the network on that part alone (what a discriminator
  trained on one clip can do at best here);
- ``overlap X``: :class:`~mmdisco.discriminator.sliding.SlidingWindow` with overlap ``X``,
  gradients averaged where windows overlap (overlap 0 puts the windows on the parts and
  equals ``alone``; tests/test_continuous_benchmark.py checks that).

Every part is scored as a world clip. The parts are unrelated clips, so a window that
straddles two of them sees the end of one spliced to the start of another, which no world
clip looks like: this is a harder test than a continuous long clip, whose every window is a
clip like any other.

    python benchmarks/sliding_window.py          # -> results/continuous/sliding_window/
    python benchmarks/sliding_window.py --quick  # smoke run: 4 clips, 5 steps, one seed
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from mmdisco.discriminator.sliding import SlidingWindow
from mmdisco.io import save_figure
from mmdisco.world.continuous_eval import (
    EVALUATION_SEEDS,
    SCALE,
    mean_pm_std,
    mean_std,
    saved_network,
    score,
    training_detections,
    write_report,
)
from mmdisco.world.continuous_sampling import sample_continuous, split_clips

RESULTS = Path(__file__).parent / "results" / "continuous"
SEEDS = EVALUATION_SEEDS
CLIPS = 3
OVERLAPS = (0.25, 0.5, 0.75)
BASES = ("trained", "ideal")


def alone(model: torch.nn.Module, clips: int):
    """The discriminator on each part of a long clip on its own, the parts' logits summed."""

    def disc(audio: Tensor, video: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        parts = model(
            split_clips(audio, clips), split_clips(video, clips), snr_a.repeat(clips),
            snr_v.repeat(clips),
        )  # fmt: skip
        return parts.view(clips, -1).sum(0)

    return disc


def guides(model: torch.nn.Module, window: tuple[int, int], overlaps: tuple[float, ...]):
    """The report's rows: name -> discriminator (None: unguided)."""
    rows = {"independent": None, "alone": alone(model, CLIPS)}
    for overlap in overlaps:
        rows[f"overlap {overlap:g}"] = SlidingWindow(model, window, overlap=overlap)
    return rows


def run_seed(
    networks: Path,
    seed: int,
    clips: int,
    steps: int,
    overlaps: tuple[float, ...] = OVERLAPS,
    bases: tuple[str, ...] = BASES,
) -> dict:
    """Every row's agreement, validity and copy rate over the parts of ``clips`` long clips."""
    from mmdisco.world.continuous_models import load_continuous_base_models

    torch.set_num_threads(1)
    model, terms, real = saved_network(networks, seed)
    training = training_detections(real, terms)
    config = terms.config
    window = (config.audio_shape[-1], config.num_frames)
    audio_model, video_model = load_continuous_base_models()
    base_scores = {"ideal": None, "trained": (audio_model.score, video_model.score)}
    rows: dict[str, dict] = {}
    for base in bases:
        rows[base] = {}
        for name, disc in guides(model, window, overlaps).items():
            audio, video = sample_continuous(
                terms, clips, seed, disc, SCALE, steps, base=base_scores[base], clips=CLIPS
            )
            parts = split_clips(audio, CLIPS), split_clips(video, CLIPS)
            rows[base][name] = score(*parts, terms, training)
    return {"seed": seed, "clips": clips, "sampling_steps": steps, "rows": rows}


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std over the seeds of every (base models, row, metric)."""
    first = runs[0]["rows"]
    return {
        "seeds": [r["seed"] for r in runs],
        "clips": runs[0]["clips"],
        "parts_per_clip": CLIPS,
        "guidance_scale": SCALE,
        "sampling_steps": runs[0]["sampling_steps"],
        "rows": {
            base: {
                row: {m: mean_std([r["rows"][base][row][m] for r in runs]) for m in metrics}
                for row, metrics in by_row.items()
            }
            for base, by_row in first.items()
        },
        "per_seed": {r["seed"]: r["rows"] for r in runs},
    }


def ordered(report: dict) -> list[tuple[str, list[str]]]:
    """The report's base models and rows in table order (its JSON keys come back sorted):
    ``BASES`` order, then independent, alone and the overlaps from small to large."""

    def rank(row: str) -> tuple[int, float]:
        fixed = {"independent": (0, 0.0), "alone": (1, 0.0)}
        return fixed.get(row) or (2, float(row.removeprefix("overlap ")))

    bases = sorted(report["rows"], key=lambda b: BASES.index(b) if b in BASES else len(BASES))
    return [(base, sorted(report["rows"][base], key=rank)) for base in bases]


def markdown(report: dict) -> str:
    seeds = ", ".join(map(str, report["seeds"]))
    lines = [
        f"# The sliding discriminator window (continuous world, seeds {seeds})",
        "",
        f"{report['clips']} clips per seed, each {report['parts_per_clip']} world clips long "
        f"({report['parts_per_clip'] * report['clips']} parts scored), the saved network at "
        f"scale {report['guidance_scale']:g} on both modalities, {report['sampling_steps']} "
        "DDPM steps; mean ± sample std over the seeds. `alone`: each part guided by the "
        "network on that part; `overlap X`: the sliding window over the whole clip. "
        "Difference: the row's minus `alone`'s (semantic / temporal).",
        "",
        "| base models | row | semantic | temporal | difference | validity audio / video |",
        "|---|---|---|---|---|---|",
    ]
    for base, rows in ordered(report):
        by_row = report["rows"][base]
        ref = by_row["alone"]
        for row in rows:
            m = by_row[row]
            diff = "" if row in ("alone", "independent") else " / ".join(
                f"{m[k]['mean'] - ref[k]['mean']:+.3f}" for k in ("semantic", "temporal")
            )  # fmt: skip
            valid = f"{m['validity_audio']['mean']:.3f} / {m['validity_video']['mean']:.3f}"
            lines.append(
                f"| {base} | {row} | {mean_pm_std(m['semantic'])} "
                f"| {mean_pm_std(m['temporal'])} | {diff} | {valid} |"
            )
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> None:
    """Agreement of each row, one panel per base models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = ordered(report)
    fig, axes = plt.subplots(1, len(layout), figsize=(4.5 * len(layout), 3.6), squeeze=False)
    for ax, (base, rows) in zip(axes[0], layout, strict=True):
        for k, metric in enumerate(("semantic", "temporal")):
            stats = [report["rows"][base][r][metric] for r in rows]
            ax.bar(
                [i + 0.4 * k for i in range(len(rows))],
                [s["mean"] for s in stats],
                0.4,
                yerr=[s["std"] for s in stats],
                label=metric,
            )
        ax.set_xticks([i + 0.2 for i in range(len(rows))], rows, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{base} base models")
    axes[0][0].set_ylabel("agreement of the parts")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--networks", type=Path, default=RESULTS / "networks")
    parser.add_argument("--out", type=Path, default=RESULTS / "sliding_window")
    args = parser.parse_args()
    seeds, clips, steps = (SEEDS[:1], 4, 5) if args.quick else (SEEDS, args.clips, 25)
    runs = [run_seed(args.networks, seed, clips, steps) for seed in seeds]
    report = aggregate(runs)
    write_report(args.out, report, markdown(report), figure)
    print(markdown(report))


if __name__ == "__main__":
    main()
