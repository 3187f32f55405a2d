"""The network discriminator on the finite world, where the base models are trained and so
imperfect: the ratio MMDisCo needs, ``p(a, v) / (p_theta(a) p_theta(v))``, is not the data's
``p(a, v) / (p(a) p(v))``, and InfoNCE must take its negatives from the generated clips.

Per seed (data, fakes, discriminator and sampling seeds all change with it): the demo's data
(real world pairs encoded into the shipped base models' spaces, fakes sampled from them with
25 DDPM steps); one :class:`~mmdisco.discriminator.shared_latent.SharedLatentDiscriminator`
(the continuous world's ``mlp`` network) trained with
:func:`~mmdisco.world.continuous_training.train_continuous_discriminator`; then the same
sampling seeds unguided, guided by the network (``--scale`` on both modalities) and by the
world's exact ratio (scale 1), scored with the world's detectors, and the network calibrated
against the exact ratio.

    python benchmarks/finite_network.py --seed 10      # -> results/finite_network/seed_10.json
    python benchmarks/finite_network.py --aggregate    # report.json / report.md
    python benchmarks/finite_network.py --seed 0 --negatives real   # the data's ratio instead

Evaluation seeds are 10, 11, 12; seeds 0 and 1 are for tuning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from mmdisco.io import write_json_atomic
from mmdisco.sampling import SamplingConfig, sample_batches
from mmdisco.training.data import encode_pairs, fake_pairs
from mmdisco.training.fakes import generate_fakes
from mmdisco.world import chance_levels, evaluate, generate_clips
from mmdisco.world.calibration import calibrate
from mmdisco.world.continuous_eval import (
    NOISE_LEVELS,
    RECIPES,
    aggregate,
    new_network,
    run_settings,
    tables,
    write_report,
)
from mmdisco.world.continuous_training import (
    FULL_LOG_SNR_RANGE,
    ContinuousTrainConfig,
    train_continuous_discriminator,
)
from mmdisco.world.models import load_world_models
from mmdisco.world.ratio import ExactLogRatio
from mmdisco.world.recipes import (
    EVAL_SEED_OFFSET,
    HELD_OUT_SEED_OFFSET,
    REAL_SEED_OFFSET,
    world_real_pairs,
)

RESULTS = Path(__file__).parent / "results" / "finite_network"
ROWS = ("independent", "network", "exact_ratio")
METRICS = ("semantic", "temporal", "validity_audio", "validity_video")
SCALE = 2.0
NETWORK = "mlp"
# The continuous world's MLP recipe with its negatives generated (the default), at batch 128 and
# 3000 steps: the finite world's video latent is 8 times larger (12288 values), and batch 512
# for 5000 steps would take an hour per seed on one thread. Noise levels over the whole range
# and weight decay on every parameter, as measured (the continuous world's narrower noise
# levels and its decay on layer weights only were found later and not run here)
RECIPE = dataclasses.replace(
    RECIPES[NETWORK],
    batch_size=128,
    steps=3000,
    num_fake=1024,
    log_snr_range=FULL_LOG_SNR_RANGE,
    decay_all_parameters=True,
)


def _scores(audio: torch.Tensor, video: torch.Tensor) -> dict[str, float]:
    metrics = evaluate(video, audio)
    return {m: float(metrics[m]) for m in METRICS}


def run_seed(
    seed: int, work: Path, pairs: int, steps: int, train: ContinuousTrainConfig, scale: float
) -> dict:
    torch.set_num_threads(1)
    audio_model, video_model = load_world_models()
    real = world_real_pairs(audio_model, video_model, train.num_real, REAL_SEED_OFFSET + seed)
    held = generate_clips(pairs, seed=HELD_OUT_SEED_OFFSET + seed)
    held_pairs = encode_pairs(audio_model, video_model, held.audio, held.video)
    n_fake = train.num_fake
    generate_fakes(
        audio_model,
        video_model,
        n_fake + pairs,
        work / f"fakes_{seed}",
        seed=seed,
        num_inference_steps=25,
        scheduler="ddpm",
        progress=False,
    )
    fakes = fake_pairs(work / f"fakes_{seed}")
    start = time.perf_counter()
    shapes = (audio_model.latent_shape(), video_model.latent_shape())
    model = new_network(NETWORK, *shapes, train.seed)
    fake = (fakes.audio[:n_fake], fakes.video[:n_fake])
    train_continuous_discriminator(model, (real.audio, real.video), fake, None, train)
    model.eval().requires_grad_(False)
    train_seconds = time.perf_counter() - start
    exact = ExactLogRatio.from_world(audio_model, video_model)
    rows = {}
    for name, disc, disc_scale in (
        ("independent", None, 1.0),
        ("network", model, scale),
        ("exact_ratio", exact, 1.0),
    ):
        sampling = SamplingConfig(steps, "ddpm", disc_scale, disc_scale)
        a, v = sample_batches(
            audio_model,
            video_model,
            pairs,
            sampling,
            seed=EVAL_SEED_OFFSET + seed,
            discriminator=disc,
            batch_size=128,
            progress=False,
        )
        rows[name] = _scores(audio_model.decode(a), video_model.decode(v))
    calibration = calibrate(
        model,
        exact,
        (held_pairs.audio, held_pairs.video),
        (fakes.audio[n_fake:], fakes.video[n_fake:]),
        audio_model.schedule,
        video_model.schedule,
        noise_levels=NOISE_LEVELS,
        seed=seed,
    )
    return {
        "seed": seed,
        "rows": rows,
        "calibration": calibration,
        "train_seconds": train_seconds,
        "settings": finite_settings(pairs, steps, train, scale),
    }


def finite_settings(pairs: int, steps: int, train: ContinuousTrainConfig, scale: float) -> dict:
    """The continuous benchmark's settings, with the finite world's base models and chance."""
    base_models = "the shipped world base models (trained, imperfect)"
    settings = run_settings(pairs, steps, train, NETWORK, scale, base_models)
    del settings["world_config"]
    return {**settings, "world": "finite", "chance": chance_levels()}


def markdown(report: dict) -> str:
    settings, training = report["settings"], report["settings"]["training"]
    head = [
        f"# Finite world: network discriminator vs exact ratio (seeds "
        f"{', '.join(map(str, report['seeds']))})",
        "",
        f"{settings['pairs']} pairs per seed, {settings['sampling_steps']} DDPM steps, the "
        f"shipped (trained) base models; the network ({settings['network']['name']}, "
        f"InfoNCE with {training['negatives']} negatives, batch {training['batch_size']}, "
        f"{training['steps']} steps) at scale {settings['guidance_scale_audio']:g} on both "
        f"modalities, the exact ratio at 1. Chance: semantic "
        f"{settings['chance']['semantic']:.3f}, temporal {settings['chance']['temporal']:.3f}.",
        "",
    ]
    return "\n".join(head + tables(report)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--aggregate", action="store_true")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=RECIPE.steps)
    parser.add_argument("--negatives", choices=("fake", "real"), default="fake")
    parser.add_argument("--scale", type=float, default=SCALE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("outputs/finite_network"))
    args = parser.parse_args()
    if not 0.5 <= args.scale <= 2.0:
        parser.error(f"--scale must lie in [0.5, 2], got {args.scale}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.seed is not None:
        train = dataclasses.replace(
            RECIPE, seed=args.seed, steps=args.train_steps, negatives=args.negatives
        )
        result = run_seed(args.seed, args.work, args.pairs, 25, train, args.scale)
        write_json_atomic(args.out / f"seed_{args.seed}.json", result)
        print(json.dumps(result["rows"], indent=1))
    if args.aggregate:
        runs = [json.loads(p.read_text()) for p in sorted(args.out.glob("seed_*.json"))]
        report = aggregate(runs, ROWS, METRICS)
        write_report(args.out, report, markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
