"""How agreement depends on the network's guidance scale: the continuous world's saved
networks (``results/continuous/networks/seed_S/``, what ``continuous_world.py`` trained) guide
both modalities at each scale of ``SCALES``, with the ideal and with the trained base models.

The exact ratio aligns at scale 1, the theory's; a network that learnt a smoother ratio, with
a shorter input-gradient (the calibration's ``gain``), needs more. The sampling seeds are the
report's, so each seed's scale-2 row is its report's ``network`` row. Nothing is trained here:
run ``continuous_world.py --seed S`` first.

    python benchmarks/guidance_scale.py             # -> results/continuous/guidance_scale/
    python benchmarks/guidance_scale.py --quick     # smoke run: 8 pairs, 5 steps, one seed
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmdisco.io import read_json, save_figure
from mmdisco.world.continuous_eval import (
    EVALUATION_SEEDS,
    METRICS,
    mean_pm_std,
    mean_std,
    saved_network,
    score,
    training_detections,
    write_report,
)
from mmdisco.world.continuous_sampling import sample_continuous

RESULTS = Path(__file__).parent / "results" / "continuous"
SCALES = (0.5, 1.0, 1.5, 2.0)
SEEDS = EVALUATION_SEEDS
BASES = ("ideal", "trained")
# Where continuous_world.py's reports are, whose exact-ratio rows the figure marks
REPORTS = {"ideal": RESULTS / "report.json", "trained": RESULTS / "trained_base" / "report.json"}


def run_seed(networks: Path, seed: int, pairs: int, steps: int, scales: tuple[float, ...]) -> dict:
    """Agreement, validity and copy rate at every scale with both base models."""
    from mmdisco.world.continuous_models import load_continuous_base_models

    torch.set_num_threads(1)
    model, terms, real = saved_network(networks, seed)
    training = training_detections(real, terms)
    audio_model, video_model = load_continuous_base_models()
    bases = {"ideal": None, "trained": (audio_model.score, video_model.score)}
    rows = {base: {} for base in BASES}
    for base in BASES:
        for scale in scales:
            audio, video = sample_continuous(
                terms, pairs, seed, model, scale, steps, base=bases[base]
            )
            rows[base][f"{scale:g}"] = score(audio, video, terms, training)
    return {"seed": seed, "pairs": pairs, "sampling_steps": steps, "rows": rows}


def aggregate(runs: list[dict], reports: dict[str, Path] | None = None) -> dict:
    """Mean and sample std over the seeds of every (base models, scale, metric), and the
    exact ratio's agreement from ``reports`` (``continuous_world.py``'s, where they exist)."""
    first = runs[0]["rows"]
    stats = {
        base: {
            scale: {
                metric: mean_std([r["rows"][base][scale][metric] for r in runs])
                for metric in first[base][scale]
            }
            for scale in first[base]
        }
        for base in first
    }
    return {
        "seeds": [r["seed"] for r in runs],
        "pairs": runs[0]["pairs"],
        "sampling_steps": runs[0]["sampling_steps"],
        "rows": stats,
        "exact_ratio": {
            base: {m: read_json(path)["rows"]["exact_ratio"][m] for m in METRICS}
            for base, path in (reports or {}).items()
            if path.is_file()
        },
    }


def markdown(report: dict) -> str:
    seeds = ", ".join(map(str, report["seeds"]))
    lines = [
        f"# The network's guidance scale (continuous world, seeds {seeds})",
        "",
        f"The continuous world's saved networks guiding both modalities at one scale, "
        f"{report['pairs']} pairs per seed, {report['sampling_steps']} DDPM steps; mean ± "
        "sample std over the seeds. The exact ratio guides at scale 1 (its rows: the means of "
        "`continuous_world.py`'s reports, same seeds).",
        "",
        "| base models | scale | semantic | temporal | validity audio / video | copy rate |",
        "|---|---|---|---|---|---|",
    ]
    for base, by_scale in report["rows"].items():
        for scale, m in by_scale.items():
            cells = [mean_pm_std(m[k]) for k in ("semantic", "temporal", "copy_rate")]
            valid = f"{m['validity_audio']['mean']:.3f} / {m['validity_video']['mean']:.3f}"
            lines.append(f"| {base} | {scale} | {cells[0]} | {cells[1]} | {valid} | {cells[2]} |")
        exact = report.get("exact_ratio", {}).get(base)
        if exact is not None:
            valid = f"{exact['validity_audio']:.3f} / {exact['validity_video']:.3f}"
            lines.append(
                f"| {base} | exact ratio, 1 | {exact['semantic']:.3f} | {exact['temporal']:.3f} "
                f"| {valid} | {exact['copy_rate']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> None:
    """Agreement against the scale, one panel per base models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["rows"]), figsize=(9, 3.6), sharey=True)
    for ax, (base, by_scale) in zip(axes, report["rows"].items(), strict=True):
        scales = [float(s) for s in by_scale]
        for metric in ("semantic", "temporal"):
            means = [m[metric]["mean"] for m in by_scale.values()]
            stds = [m[metric]["std"] for m in by_scale.values()]
            line = ax.errorbar(scales, means, yerr=stds, marker="o", capsize=3, label=metric)
            exact = report.get("exact_ratio", {}).get(base)
            if exact is not None:
                ax.plot(1.0, exact[metric], "*", ms=12, color=line.lines[0].get_color())
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("guidance scale (both modalities)")
        ax.set_title(f"{base} base models (stars: the exact ratio at 1)")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("agreement")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--networks", type=Path, default=RESULTS / "networks")
    parser.add_argument("--out", type=Path, default=RESULTS / "guidance_scale")
    args = parser.parse_args()
    seeds, pairs, steps = (SEEDS[:1], 8, 5) if args.quick else (SEEDS, args.pairs, 25)
    runs = [run_seed(args.networks, seed, pairs, steps, SCALES) for seed in seeds]
    report = aggregate(runs, REPORTS)
    write_report(args.out, report, markdown(report), figure)
    print(markdown(report))


if __name__ == "__main__":
    main()
