"""Where guidance decides agreement: the continuous world's exact ratio, guiding only the steps
whose noise level t/T lies in a window.

With ideal base models and the exact log ratio at scale 1, guided sampling samples the joint;
restricting the guidance to a window of noise levels shows which steps do the aligning, and
guiding one modality only shows which one moves. A learnt discriminator only has to be right
there, so its training can spend its noise levels there
(``ContinuousTrainConfig.log_snr_range``).

    python benchmarks/guidance_window.py            # -> results/guidance_window/
    python benchmarks/guidance_window.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mmdisco.io import write_json_atomic, write_text_atomic
from mmdisco.world.continuous import ContinuousWorldConfig
from mmdisco.world.continuous_eval import score, training_detections
from mmdisco.world.continuous_ratio import ContinuousLogRatio, ContinuousWorldTerms
from mmdisco.world.continuous_sampling import sample_continuous
from mmdisco.world.continuous_training import ContinuousTrainConfig, training_data

RESULTS = Path(__file__).parent / "results" / "guidance_window"
WINDOWS = (
    (0.0, 1.0),
    (0.5, 1.0),
    (0.7, 1.0),
    (0.0, 0.5),
    (0.0, 0.2),
    (0.0, 0.1),
    (0.1, 0.5),
    (0.2, 0.5),
    (0.3, 0.8),
)
# (audio scale, video scale) of the rows that guide one modality only, every step
ONE_MODALITY = {"audio": (1.0, 0.0), "video": (0.0, 1.0)}
SEED = 0


def run(
    pairs: int,
    steps: int,
    windows: tuple[tuple[float, float], ...],
    modalities: tuple[str, ...] = tuple(ONE_MODALITY),
) -> dict:
    torch.set_num_threads(1)
    config = ContinuousWorldConfig()
    terms, exact = ContinuousWorldTerms(config), ContinuousLogRatio(config)
    (real_audio, real_video), _ = training_data(config, ContinuousTrainConfig(seed=SEED))
    training = training_detections((real_audio, real_video), terms)
    rows = []
    cases = (
        [(None, "both")] + [(w, "both") for w in windows] + [((0.0, 1.0), m) for m in modalities]
    )
    for window, guided in cases:  # window None: independent sampling
        start = time.perf_counter()
        disc = None if window is None else exact
        scale = ONE_MODALITY.get(guided, 1.0)
        audio, video = sample_continuous(
            terms, pairs, SEED, disc, scale, steps, window=window or (0.0, 1.0)
        )
        rows.append(
            {
                "window": None if window is None else list(window),
                "guided": guided,
                **score(audio, video, terms, training),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return {"seed": SEED, "pairs": pairs, "sampling_steps": steps, "rows": rows}


def markdown(report: dict) -> str:
    lines = [
        "# Where guidance decides agreement (exact ratio, scale 1, guided only inside a window)",
        "",
        f"Continuous world, ideal base models, {report['pairs']} pairs (seed {report['seed']}), "
        f"{report['sampling_steps']} DDPM steps; the window is the noise level t/T of the steps "
        "that are guided; the last rows guide one modality only (its scale 1, the other's 0).",
        "",
        "| guided t/T | guided modality | semantic | temporal | validity audio / video |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        window = row["window"]
        name = "none (independent)" if window is None else f"[{window[0]:g}, {window[1]:g}]"
        guided = "" if window is None else row.get("guided", "both")
        lines.append(
            f"| {name} | {guided} | {row['semantic']:.3f} | {row['temporal']:.3f} | "
            f"{row['validity_audio']:.2f} / {row['validity_video']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = run(4, 5, WINDOWS[:2], ("audio",)) if args.quick else run(args.pairs, 25, WINDOWS)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "report.json", report)
    write_text_atomic(args.out / "report.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
