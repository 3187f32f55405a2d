"""The continuous world: a network discriminator (and a codebook one) against the exact ratio,
with ideal base models (the world's exact marginal scores).

Per seed (data, fakes, discriminator and sampling seeds all change with it): train
:class:`~mmdisco.discriminator.shared_latent.SharedLatentDiscriminator` with
:func:`~mmdisco.world.continuous_training.train_continuous_discriminator`, then sample 256
pairs independently, guided by the network (one scale on both modalities, ``--scale``, 2 by
default), by a codebook discriminator built from the same data, and by the exact ratio (both
at scale 1), 25 DDPM steps (``--pairs``), score them
with the continuous detectors and the copy rate, and calibrate the network against the exact
ratio on held-out real and fake pairs. ``--network`` picks the network (``NETWORKS``).

    python benchmarks/continuous_world.py --seed 10     # -> results/continuous/seed_10.json
    python benchmarks/continuous_world.py --aggregate   # report.json / report.md / report.png
    python benchmarks/continuous_world.py --seed 0 --quick   # smoke run

``--base trained`` samples the same four rows with the shipped trained base models
(:mod:`mmdisco.world.continuous_models`) instead of the ideal ones, into
``results/continuous/trained_base/``: the same network (same seed and recipe, trained against
the world's own clips as fakes) and codebook, and the world's exact ratio
``p(a, v) / (p(a) p(v))``.

Each seed's trained network is kept in ``results/continuous/networks/seed_S/`` (with the
settings that trained it) and reused by the other base-model row when they match, so a change
of base models re-samples without retraining (``--quick`` runs neither read nor write it).

Evaluation seeds are 10, 11, 12; the recipe was tuned on seeds 0 and 1 only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmdisco.discriminator.codebook import CodebookConfig, CodebookDiscriminator
from mmdisco.io import write_json_atomic
from mmdisco.world import continuous_eval
from mmdisco.world.continuous import ContinuousWorldConfig
from mmdisco.world.continuous_eval import (
    IDEAL_BASE_MODELS,
    METRICS,
    NETWORKS,
    NOISE_LEVELS,
    RECIPES,
    SCALE,
    calibrate_network,
    figure,
    run_settings,
    score,
    tables,
    train_network,
    training_detections,
    write_report,
)
from mmdisco.world.continuous_ratio import ContinuousLogRatio, ContinuousWorldTerms
from mmdisco.world.continuous_sampling import sample_continuous
from mmdisco.world.continuous_training import ContinuousTrainConfig, training_data

RESULTS = Path(__file__).parent / "results" / "continuous"
ROWS = ("independent", "network", "codebook", "exact_ratio")
DEFAULT_NETWORK = "conv"
# The codebook row: k-means anchors of real and fake clips (1024 per modality: 0.47-0.53 /
# 0.55-0.58 on the tuning seeds against 0.48-0.50 / 0.25-0.27 with 320), coupling counted from
# the real pairs, no further training; guided at scale 1, as the exact ratio
CODEBOOK_CODES = 1024
# Re-exported for tests/test_continuous_benchmark.py
__all__ = ["METRICS", "NETWORKS", "NOISE_LEVELS", "ROWS", "SCALE", "figure"]


BASE_MODELS = {
    "ideal": IDEAL_BASE_MODELS,
    "trained": "the shipped trained base models (mmdisco.world.continuous_models)",
}


def run_seed(
    seed: int,
    pairs: int,
    steps: int,
    train_steps: int,
    network: str = DEFAULT_NETWORK,
    scale: float = SCALE,
    codes: int = CODEBOOK_CODES,
    cache: Path | None = None,
    base: str = "ideal",
    refine_steps: int | None = None,
) -> dict:
    """One seed's rows, calibration and settings; ``base`` picks the base models the four
    rows sample with (the network, its training data and its calibration do not depend on
    them: a network in ``cache`` trained with the same settings is reused)."""
    torch.set_num_threads(1)
    config = ContinuousWorldConfig()
    terms, exact = ContinuousWorldTerms(config), ContinuousLogRatio(config)
    recipe = RECIPES[network].to_dict()
    if refine_steps is not None:
        recipe["refine_steps"] = refine_steps
    cfg = ContinuousTrainConfig(**{**recipe, "seed": seed, "steps": train_steps})
    real, fake = training_data(config, cfg)
    model, train_seconds = train_network(terms, real, fake, cfg, network, cache)
    training = training_detections(real, terms)
    codebook = codebook_discriminator(config, real, fake, codes, seed)
    scores = None
    if base == "trained":
        from mmdisco.world.continuous_models import load_continuous_base_models

        audio_model, video_model = load_continuous_base_models()
        scores = (audio_model.score, video_model.score)
    rows = {}
    guides = (
        ("independent", None, 1.0),
        ("network", model, scale),
        ("codebook", codebook, 1.0),
        ("exact_ratio", exact, 1.0),
    )
    for name, disc, disc_scale in guides:
        audio, video = sample_continuous(terms, pairs, seed, disc, disc_scale, steps, base=scores)
        rows[name] = score(audio, video, terms, training)
    codebook_settings = {"codes": codes, "guidance_scale": 1.0, "trained": False}
    settings = run_settings(
        pairs, steps, cfg, network, scale, BASE_MODELS[base], codebook=codebook_settings
    )
    return {
        "seed": seed,
        "rows": rows,
        "calibration": calibrate_network(model, exact, config, pairs, seed),
        "train_seconds": train_seconds,
        "settings": settings,
    }


def codebook_discriminator(
    config: ContinuousWorldConfig,
    real: tuple[torch.Tensor, torch.Tensor],
    fake: tuple[torch.Tensor, torch.Tensor],
    codes: int,
    seed: int,
) -> CodebookDiscriminator:
    """Anchors by k-means of the real and fake clips, coupling counted from the real pairs."""
    cb = CodebookConfig(config.audio_shape, config.video_shape, codes, codes)
    both = (torch.cat([real[0], fake[0]]), torch.cat([real[1], fake[1]]))
    disc = CodebookDiscriminator.from_samples(cb, *both, seed=seed).couple(*real)
    return disc.eval().requires_grad_(False)


def aggregate(runs: list[dict]) -> dict:
    return continuous_eval.aggregate(runs, ROWS)


def markdown(report: dict) -> str:
    seeds = ", ".join(map(str, report["seeds"]))
    lines = [
        f"# Continuous world: network discriminator vs exact ratio (seeds {seeds})",
        "",
        f"{report['settings']['pairs']} pairs per seed, network guidance scale "
        f"{report['settings']['guidance_scale_audio']:g} on both modalities (exact ratio: 1), "
        f"{report['settings']['sampling_steps']} DDPM steps, base models: "
        f"{report['settings']['base_models']}. "
        f"Chance: semantic {report['settings']['chance']['semantic']:.3f}, "
        f"temporal {report['settings']['chance']['temporal']:.3f}.",
        "",
        *tables(report),
    ]
    return "\n".join(lines) + "\n"


def network_cache(out: Path, seed: int) -> Path:
    """Where a seed's trained network is kept (both base models' runs use the same one)."""
    return out / "networks" / f"seed_{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--aggregate", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--network", choices=sorted(NETWORKS), default=DEFAULT_NETWORK)
    parser.add_argument("--scale", type=float, default=SCALE, help="network guidance scale")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--base", choices=sorted(BASE_MODELS), default="ideal")
    args = parser.parse_args()
    out = args.out / "trained_base" if args.base == "trained" else args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.seed is not None:
        recipe = RECIPES[args.network]
        quick = (16, 5, 20, 16, min(recipe.refine_steps, 2))
        full = (args.pairs, 25, recipe.steps, CODEBOOK_CODES, recipe.refine_steps)
        pairs, steps, train, codes, refine = quick if args.quick else full
        if not 0.5 <= args.scale <= 2.0:
            parser.error(f"--scale must lie in [0.5, 2], got {args.scale}")
        cache = None if args.quick else network_cache(args.out, args.seed)
        result = run_seed(
            args.seed,
            *(pairs, steps, train, args.network, args.scale, codes, cache, args.base, refine),
        )
        write_json_atomic(out / f"seed_{args.seed}.json", result)
    if args.aggregate:
        runs = [json.loads(p.read_text()) for p in sorted(out.glob("seed_*.json"))]
        report = aggregate(runs)
        write_report(out, report, markdown(report))
        print(markdown(report))


if __name__ == "__main__":
    main()
