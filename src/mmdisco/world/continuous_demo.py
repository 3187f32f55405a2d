"""The main job (`mmdisco demo`): MMDisCo on the continuous world, with a network
discriminator, against the world's exact density ratio.

The continuous world (:mod:`mmdisco.world.continuous`) has a continuum of clips: no
discriminator can be exact by looking its training clips up, so what guidance reaches here is
what the network learnt. The base models are the world's exact marginal scores (ideal base
models, :mod:`mmdisco.world.continuous_sampling`), so the only error left in guided sampling
is the discriminator's. For one seed the demo

1. draws 2048 real training pairs, and 2048 unpaired clips per modality for the fakes
   (ideal base models generate independent clips of the world),
2. trains one :class:`~mmdisco.discriminator.shared_latent.SharedLatentDiscriminator` with
   :data:`DEMO_RECIPE` (:func:`~mmdisco.world.continuous_eval.train_network`): the
   contrastive loss, then a short hard-negative refinement, the two phases `mmdisco train`
   runs,
3. samples the same seeds independently, guided by the network (one scale on both
   modalities) and guided by the exact ratio (scale 1: the method's ceiling), and scores
   each set with the world's detectors (:func:`~mmdisco.world.continuous_eval.score`),
4. calibrates the network against the exact ratio (input-gradient cosines),

and writes ``report.json``, ``report.md`` and ``report.png``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmdisco.errors import InputError, check_choice, check_float, check_int
from mmdisco.io import write_json_atomic, write_text_atomic
from mmdisco.world.continuous import ContinuousWorldConfig
from mmdisco.world.continuous_eval import (
    NETWORKS,
    SCALE,
    SCALE_RANGE,
    aggregate,
    calibrate_network,
    figure,
    run_settings,
    score,
    tables,
    train_network,
    training_detections,
)
from mmdisco.world.continuous_ratio import ContinuousLogRatio, ContinuousWorldTerms
from mmdisco.world.continuous_sampling import sample_continuous
from mmdisco.world.continuous_training import ContinuousTrainConfig, training_data

ROWS = ("independent", "network", "exact_ratio")
# The demo's network and recipe: the MLP network with ContinuousTrainConfig's defaults (the
# MLP's best recipe; InfoNCE with generated negatives, as on real models, on the noise levels
# where guidance decides this world) cut from 5000 to 1100 steps, then 150 steps of
# hard-negative refinement (about 8 s; 1200 steps without it guided seed 0 to 0.648 / 0.406 at
# scale 2, these to 0.773 / 0.477), so that the demo fits in 6 minutes on 2 cores; the conv
# network of the benchmark guides better but trains 3.4 times slower per step (measured at
# width 32; the benchmark's is now 64 wide).
DEMO_NETWORK = "mlp"
DEMO_RECIPE = ContinuousTrainConfig(steps=1100, refine_steps=150)


@dataclass(frozen=True)
class ContinuousDemoSettings:
    """Every knob of the continuous demo (stored in report.json)."""

    seed: int = 0  # data, fakes, network and sampling seed (10-12 are evaluation seeds)
    # Sampled per row from the same seeds; also the held-out real and the fake pairs that
    # calibrate the network
    pairs: int = 128
    sampling_steps: int = 25  # ancestral DDPM
    guidance_scale: float = SCALE  # the network's, on both modalities; the exact ratio's is 1
    network: str = DEMO_NETWORK
    recipe: ContinuousTrainConfig = DEMO_RECIPE  # its seed is replaced by ``seed``

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0)
        for name in ("pairs", "sampling_steps"):
            check_int(name, getattr(self, name), 1)
        scale = check_float("guidance_scale", self.guidance_scale, *SCALE_RANGE)
        object.__setattr__(self, "guidance_scale", scale)
        check_choice("network", self.network, tuple(NETWORKS))
        if not isinstance(self.recipe, ContinuousTrainConfig):
            raise InputError(f"must be a ContinuousTrainConfig, got {self.recipe!r}", "recipe")

    @classmethod
    def quick(cls) -> ContinuousDemoSettings:
        """A run of seconds for tests: tiny sets, few steps; the pipeline, not the results."""
        recipe = dataclasses.replace(
            DEMO_RECIPE,
            steps=4,
            batch_size=32,
            num_real=64,
            num_fake=64,
            refine_steps=2,
            refine_anchors=8,
            refine_pool=16,
        )
        return cls(pairs=8, sampling_steps=4, recipe=recipe)

    def train_config(self) -> ContinuousTrainConfig:
        return dataclasses.replace(self.recipe, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        extra = {
            "seed": self.seed,
            "calibration_pairs": {"real": self.pairs, "fake": self.pairs},
            "exact_ratio_guidance_scale": 1.0,
            "recipe": "DEMO_RECIPE" if self.recipe == DEMO_RECIPE else "custom",
        }
        train = self.train_config()
        return run_settings(
            self.pairs, self.sampling_steps, train, self.network, self.guidance_scale, **extra
        )


class _Stages:
    """Times each stage of the demo; with ``verbose``, one line per stage on stderr."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str, description: str) -> Iterator[None]:
        if self.verbose:
            print(f"{description} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - start, 2)
        if self.verbose:
            print(f" {self.timings[key]:.0f} s", file=sys.stderr, flush=True)


def run_continuous_demo(
    out: str | Path, settings: ContinuousDemoSettings | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Run the continuous demo into ``out``; returns the report (also written as report.json,
    report.md and report.png)."""
    settings = settings or ContinuousDemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages = _Stages(verbose=progress)
    config = ContinuousWorldConfig()
    terms, exact = ContinuousWorldTerms(config), ContinuousLogRatio(config)
    cfg = settings.train_config()
    with stages("data", f"{cfg.num_real} real pairs, {cfg.num_fake} clips for the fakes"):
        real, fake = training_data(config, cfg)
        training = training_detections(real, terms)
    name = f"{settings.network} network, {_steps(cfg.to_dict())}"
    with stages("train_network", f"training the discriminator ({name})"):
        model, train_seconds = train_network(terms, real, fake, cfg, settings.network)
    guides = (
        ("independent", None, 1.0),
        ("network", model, settings.guidance_scale),
        ("exact_ratio", exact, 1.0),
    )
    rows = {}
    for row, disc, scale in guides:
        with stages(f"sample_{row}", f"sampling {settings.pairs} pairs: {row} (scale {scale:g})"):
            audio, video = sample_continuous(
                terms, settings.pairs, settings.seed, disc, scale, settings.sampling_steps
            )
            rows[row] = score(audio, video, terms, training)
    with stages("calibration", "calibrating the network against the exact ratio"):
        calibration = calibrate_network(model, exact, config, settings.pairs, settings.seed)
    report = {
        "seed": settings.seed,
        "rows": rows,
        "calibration": calibration,
        "train_seconds": train_seconds,
        "settings": settings.to_dict(),
        "timings": stages.timings,
        "torch_threads": torch.get_num_threads(),
    }
    summary = aggregate([report], ROWS)
    figure(summary, out / "report.png")
    report["seconds"] = round(time.perf_counter() - start, 2)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """The demo's tables: one row per sampler, then the network's calibration."""
    s = report["settings"]
    recipe = s["training"]
    lines = [
        f"# MMDisCo on the continuous world: a network discriminator vs the exact ratio "
        f"(seed {report['seed']})",
        "",
        f"{s['pairs']} pairs per row from the same seeds, "
        f"{s['sampling_steps']} DDPM steps, ideal base models (the world's exact marginal "
        f"scores). The network ({s['discriminator']}, {s['network']['name']}, "
        f"{recipe['objective']} with {recipe['negatives']} negatives, "
        f"{_steps(recipe)}) "
        f"guides both modalities at scale {s['guidance_scale_audio']:g}, the exact ratio at "
        f"scale 1. Chance: semantic {s['chance']['semantic']:.3f}, "
        f"temporal {s['chance']['temporal']:.3f}.",
        "",
        *tables(aggregate([report], ROWS)),
        "",
        "Calibration: the network's input-gradient against the exact ratio's on "
        f"{s['calibration_pairs']['real']} held-out real and {s['calibration_pairs']['fake']} "
        "independent pairs (cosine 1: the direction the exact ratio guides in).",
        "",
        f"Training {report['train_seconds']:.0f} s; total {report['seconds']:.0f} s "
        f"(torch threads: {report['torch_threads']}).",
    ]
    return "\n".join(lines) + "\n"


def _steps(recipe: dict[str, Any]) -> str:
    """How long a recipe (``ContinuousTrainConfig.to_dict()``) trains, in words."""
    words = f"{recipe['steps']} steps of batch {recipe['batch_size']}"
    if recipe.get("refine_steps"):
        words += f", then {recipe['refine_steps']} of hard-negative refinement"
    return words
