"""Does the continuous world's network copy its training clips? The copy rate of guided samples
against the training clips, next to the same rate against as many held-out clips of the world.

Guidance that moves samples to where the world is dense raises the copy rate without copying
anything; memorisation raises it against the training clips only. So the difference
(training minus held-out) is the measure: about zero for samplers that never saw the training
set (independent sampling, the exact ratio). The saved evaluation networks
(``results/continuous/networks/seed_S/``) guide at the report's scale with the trained base
models and the report's sampling seeds. The default of ``PAIRS`` pairs per seed holds the
report's 256 as its first ones (with ``--pairs 256`` the ``training`` column is the
trained-base report's copy rate): at 256 a seed's copy rate has a standard error of about
0.02, as large as the difference it is meant to show. Nothing is trained here: run
``continuous_world.py --seed S`` first.

    python benchmarks/memorisation.py             # -> results/continuous/memorisation/
    python benchmarks/memorisation.py --quick     # smoke run: 8 pairs, 5 steps, one seed
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmdisco.world.continuous import generate_continuous_clips
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
from mmdisco.world.continuous_ratio import ContinuousLogRatio
from mmdisco.world.continuous_sampling import sample_continuous

RESULTS = Path(__file__).parent / "results" / "continuous"
SEEDS = EVALUATION_SEEDS
HELD_OUT_SEED_OFFSET = 700_000  # clips no training or calibration set of a seed contains
PAIRS = 1024


def run_seed(networks: Path, seed: int, pairs: int, steps: int) -> dict:
    """Each row's copy rate against the seed's training clips and against held-out ones."""
    from mmdisco.world.continuous_models import load_continuous_base_models

    torch.set_num_threads(1)
    model, terms, real = saved_network(networks, seed)
    held = generate_continuous_clips(len(real[0]), HELD_OUT_SEED_OFFSET + seed, terms.config)
    against = {
        "training": training_detections(real, terms),
        "held_out": training_detections((held.audio, held.video), terms),
    }
    audio_model, video_model = load_continuous_base_models()
    base = (audio_model.score, video_model.score)
    guides = {
        "independent": (None, 1.0),
        "network": (model, SCALE),
        "exact_ratio": (ContinuousLogRatio(terms.config), 1.0),
    }
    rows = {}
    for name, (disc, scale) in guides.items():
        audio, video = sample_continuous(terms, pairs, seed, disc, scale, steps, base=base)
        rates = {key: score(audio, video, terms, det)["copy_rate"] for key, det in against.items()}
        rows[name] = {**rates, "difference": rates["training"] - rates["held_out"]}
    return {"seed": seed, "pairs": pairs, "sampling_steps": steps, "rows": rows}


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std over the seeds of every row's three numbers, and the runs."""
    rows = {
        name: {key: mean_std([r["rows"][name][key] for r in runs]) for key in runs[0]["rows"][name]}
        for name in runs[0]["rows"]
    }
    return {
        "seeds": [r["seed"] for r in runs],
        "pairs": runs[0]["pairs"],
        "sampling_steps": runs[0]["sampling_steps"],
        "rows": rows,
        "runs": runs,
    }


def markdown(report: dict) -> str:
    seeds = ", ".join(map(str, report["seeds"]))
    lines = [
        f"# Copy rate against the training clips and held-out clips (seeds {seeds})",
        "",
        f"{report['pairs']} pairs per seed, {report['sampling_steps']} DDPM steps, the shipped "
        f"trained base models; the network at scale {SCALE:g}, the exact ratio at 1. "
        "A clip copies when all its variables lie within the detectors' tolerance of one clip "
        "of the set; the held-out set is as large as the training set. Mean ± sample std.",
        "",
        "| row | against training clips | against held-out clips | difference |",
        "|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        cells = [mean_pm_std(row[k]) for k in ("training", "held_out")]
        diff = row["difference"]
        lines.append(f"| {name} | {' | '.join(cells)} | {diff['mean']:+.3f} ± {diff['std']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--networks", type=Path, default=RESULTS / "networks")
    parser.add_argument("--out", type=Path, default=RESULTS / "memorisation")
    args = parser.parse_args()
    seeds, pairs, steps = (SEEDS[:1], 8, 5) if args.quick else (SEEDS, args.pairs, 25)
    report = aggregate([run_seed(args.networks, seed, pairs, steps) for seed in seeds])
    write_report(args.out, report, markdown(report), draw=None)
    print(markdown(report))


if __name__ == "__main__":
    main()
