"""What the continuous world's benchmark (``benchmarks/continuous_world.py``) and its demo
(:mod:`mmdisco.world.continuous_demo`) share: the networks and their recipes, training one,
scoring guided samples, calibrating against the exact ratio, and the report's tables and
figure.

A run (one seed) is a dict ``{"seed", "rows", "calibration", "train_seconds", "settings"}``:
``rows`` maps a sampler (``independent``, ``network``, ``exact_ratio``, ...) to its
:data:`METRICS`, ``calibration`` is :func:`mmdisco.world.calibration.calibrate`'s list at
:data:`NOISE_LEVELS`. :func:`aggregate` turns runs into a report (means and stds over seeds)
that :func:`tables` and :func:`figure` draw.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmdisco.diffusion import schedule_from_scheduler_config
from mmdisco.discriminator.shared_latent import (
    CONV_NETWORK,
    SharedLatentConfig,
    SharedLatentDiscriminator,
)
from mmdisco.io import read_json, save_figure, write_json_atomic, write_text_atomic
from mmdisco.shards import jsonable
from mmdisco.world.calibration import calibrate
from mmdisco.world.continuous import ContinuousWorldConfig, generate_continuous_clips
from mmdisco.world.continuous_detectors import (
    ContinuousDetection,
    agreement,
    continuous_chance_levels,
    copy_flags,
    detect_continuous,
)
from mmdisco.world.continuous_ratio import ContinuousWorldTerms
from mmdisco.world.continuous_training import (
    ContinuousTrainConfig,
    cosine_time,
    dlsm_bank,
    refine_with_hard_negatives,
    train_continuous_discriminator,
    training_data,
)
from mmdisco.world.models import SCHEDULER_CONFIG

METRICS = ("semantic", "temporal", "validity_audio", "validity_video", "copy_rate")
# The calibration's noise levels t/T: the four, and 0.1 and 0.2, where guidance
# decides agreement (benchmarks/results/guidance_window/)
NOISE_LEVELS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
CALIBRATION_KEYS = (
    *("cos_audio", "cos_video", "frac_video", "gain_audio", "gain_video"),
    *("logit_corr", "accuracy", "bayes_accuracy"),
)
# The networks to choose from: SharedLatentConfig fields beyond the shapes
NETWORKS: dict[str, dict[str, Any]] = {
    "mlp": {"num_codes": 64, "num_factors": 2, "width": 256, "depth": 2, "head": "bilinear"},
    "conv": dict(CONV_NETWORK),
}
# Each network's best recipe on the tuning seeds (docs/training_the_discriminator.md): the
# conv network with symmetric InfoNCE in 8 groups of 32, noise levels uniform in time over
# t/T of about 0.07-0.56 (the default LOG_SNR_RANGE), weight decay 1 on the layers' weights
# (not on the learnt code scales), 16000 steps (+0.02-0.07 over 8000 at every scale on the
# tuning seeds), then the hard-negative refinement; the MLP with the training defaults
RECIPES = {
    "conv": ContinuousTrainConfig(
        steps=16000,
        lr=2e-3,
        batch_size=256,
        objective="infonce",
        # the other real pairs: the same ratio as generated negatives with ideal base models,
        # at half the cost of a step
        negatives="real",
        noise_sampling="time",
        weight_decay=1.0,
        # then 1500 steps with hard negatives (refine_with_hard_negatives, its defaults): on
        # the tuning seeds it doubled the gradient at t/T = 0.1 and lifted scale 1 from
        # 0.83 / 0.72 and 0.77 / 0.76 to 0.96 / 0.95 and 0.95 / 0.95
        refine_steps=1500,
    ),
    "mlp": ContinuousTrainConfig(),
}
SCALE = 2.0  # the network's guidance scale on both modalities (best of 0.5 / 1 / 2 on seeds 0, 1)
SCALE_RANGE = (0.5, 2.0)  # one scale near the theory's 1: what a learnt ratio must reach
# Seeds of the held-out clips that calibrate a network: real pairs, fake audio, fake video
CALIBRATION_SEED_OFFSETS = (400_000, 500_000, 600_000)
TRAINING_RECORD = "training.json"  # next to a cached network: the settings that trained it
REFINED = "refined"  # subfolder of a cached network: the network after its refinement
IDEAL_BASE_MODELS = "exact marginal scores of the world (ideal base models)"
# The benchmarks' evaluation seeds (data, fakes, network and sampling); tuning used 0 and 1
EVALUATION_SEEDS = (10, 11, 12)


def score(
    audio: Tensor,
    video: Tensor,
    terms: ContinuousWorldTerms,
    training: dict[str, ContinuousDetection],
) -> dict[str, float]:
    """Agreement, validity and copy rate (mean over the audio and the video clips)."""
    da, dv = detect_continuous(audio, "audio", terms), detect_continuous(video, "video", terms)
    agree = agreement(da, dv, terms.config)
    copies = [
        copy_flags(d, training[m], m, terms.config) for m, d in (("audio", da), ("video", dv))
    ]
    return {
        "semantic": float(agree["semantic"].double().mean()),
        "temporal": float(agree["temporal"].double().mean()),
        "validity_audio": float(da.valid.double().mean()),
        "validity_video": float(dv.valid.double().mean()),
        "copy_rate": float(torch.cat(copies).double().mean()),
    }


def training_detections(
    real: tuple[Tensor, Tensor], terms: ContinuousWorldTerms
) -> dict[str, ContinuousDetection]:
    """The training clips' detections, which :func:`score`'s copy rate compares against."""
    return {
        "audio": detect_continuous(real[0], "audio", terms),
        "video": detect_continuous(real[1], "video", terms),
    }


def new_network(
    network: str, audio_shape: tuple[int, ...], video_shape: tuple[int, ...], seed: int
) -> SharedLatentDiscriminator:
    """The untrained network ``NETWORKS[network]`` for these latent shapes, initialised from
    ``seed`` (the global random state is left untouched)."""
    shared = SharedLatentConfig(audio_shape, video_shape, **NETWORKS[network])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SharedLatentDiscriminator(shared)


def train_network(
    terms: ContinuousWorldTerms,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    cfg: ContinuousTrainConfig,
    network: str,
    cache: Path | None = None,
) -> tuple[SharedLatentDiscriminator, float]:
    """The network ``NETWORKS[network]``, initialised from ``cfg.seed`` and trained with
    :func:`train_continuous_discriminator` (with an exact L_DLSM bank when
    ``cfg.dlsm_weight > 0``); returns it frozen, and the seconds its training took.

    With ``cache`` (a folder), a network saved there by the same settings (world, network,
    recipe: the training data derive from them) is loaded instead of trained again, and a
    newly trained one is saved there (``config.json``, ``model.safetensors`` and
    ``training.json``, each written atomically). With ``cfg.refine_steps``, the network
    before its hard-negative refinement is the one in ``cache`` (trained or loaded as
    above) and the refined one is cached in its subfolder ``refined/``."""
    if cfg.refine_steps:
        before, seconds = train_network(terms, real, fake, cfg.before_refinement(), network, cache)
        folder = cache / REFINED if cache is not None else None

        def refine() -> SharedLatentDiscriminator:
            model = copy.deepcopy(before).requires_grad_(True)
            refine_with_hard_negatives(model, real, fake, cfg)
            return model

        model, refine_seconds = _cached(terms, cfg, network, folder, refine)
        return model, seconds + refine_seconds

    def train() -> SharedLatentDiscriminator:
        bank = dlsm_bank(terms, *real, cfg) if cfg.dlsm_weight > 0 else None
        model = new_network(network, terms.config.audio_shape, terms.config.video_shape, cfg.seed)
        train_continuous_discriminator(model, real, fake, bank, cfg)
        return model

    return _cached(terms, cfg, network, cache, train)


def _cached(
    terms: ContinuousWorldTerms,
    cfg: ContinuousTrainConfig,
    network: str,
    cache: Path | None,
    train: Callable[[], SharedLatentDiscriminator],
) -> tuple[SharedLatentDiscriminator, float]:
    """The network saved in ``cache`` by these settings, or ``train()``'s (saved there)."""
    key = {"world_config": terms.config.to_dict(), "network": network, "training": cfg.to_dict()}
    record = cache / TRAINING_RECORD if cache is not None else None
    if record is not None and record.is_file():
        saved = read_json(record)
        # a record written before a training field existed ran with that field's default
        saved["training"] = {**asdict(ContinuousTrainConfig()), **saved.get("training", {})}
        if {name: saved.get(name) for name in key} == jsonable(key):
            model = SharedLatentDiscriminator.from_pretrained(cache)
            return model.eval().requires_grad_(False), float(saved["train_seconds"])
    start = time.perf_counter()
    model = train().eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    if cache is not None:
        model.save_pretrained(cache)
        write_json_atomic(cache / TRAINING_RECORD, {**key, "train_seconds": seconds})
    return model, seconds


def saved_network(
    networks: Path, seed: int
) -> tuple[SharedLatentDiscriminator, ContinuousWorldTerms, tuple[Tensor, Tensor]]:
    """A seed's network saved by ``benchmarks/continuous_world.py`` (in ``networks/seed_S/``,
    or its ``refined/`` subfolder when the recipe refined it), its world's terms and the real
    pairs it trained on (what the copy rate compares against), or an error saying how to get
    them."""
    folder = networks / f"seed_{seed}"
    if (folder / REFINED / TRAINING_RECORD).is_file():
        folder = folder / REFINED
    if not (folder / TRAINING_RECORD).is_file():
        raise SystemExit(
            f"no saved network in {folder}: run "
            f"`python benchmarks/continuous_world.py --seed {seed}` first"
        )
    record = read_json(folder / TRAINING_RECORD)
    model = SharedLatentDiscriminator.from_pretrained(folder).eval().requires_grad_(False)
    config = ContinuousWorldConfig.from_dict(record["world_config"])
    trained = record["training"]
    data = ContinuousTrainConfig(num_real=trained["num_real"], seed=trained["seed"])
    real, _ = training_data(config, data)
    return model, ContinuousWorldTerms(config), real


def calibrate_network(
    model: SharedLatentDiscriminator,
    exact: torch.nn.Module,
    config: ContinuousWorldConfig,
    pairs: int,
    seed: int,
) -> list[dict[str, Any]]:
    """:func:`calibrate` at :data:`NOISE_LEVELS` on ``pairs`` held-out real pairs and as many
    independent (fake) pairs, clips no training set of ``seed`` contains."""
    real_seed, audio_seed, video_seed = (offset + seed for offset in CALIBRATION_SEED_OFFSETS)
    held = generate_continuous_clips(pairs, real_seed, config)
    fake_a = generate_continuous_clips(pairs, audio_seed, config).audio
    fake_v = generate_continuous_clips(pairs, video_seed, config).video
    schedule = schedule_from_scheduler_config(SCHEDULER_CONFIG)
    return calibrate(
        model,
        exact,
        (held.audio, held.video),
        (fake_a, fake_v),
        schedule,
        schedule,
        noise_levels=NOISE_LEVELS,
        seed=seed,
    )


def run_settings(
    pairs: int,
    steps: int,
    cfg: ContinuousTrainConfig,
    network: str,
    scale: float,
    base_models: str = IDEAL_BASE_MODELS,
    **extra: Any,
) -> dict[str, Any]:
    """A run's ``settings``: the world, the base models, the sampler, the network and its
    recipe; ``extra`` (what only one caller has) goes after the discriminator's name."""
    return {
        "world": "continuous",
        "world_config": ContinuousWorldConfig().to_dict(),
        "base_models": base_models,
        "pairs": pairs,
        "sampling_steps": steps,
        "guidance_scale_audio": scale,
        "guidance_scale_video": scale,
        "use_dlsm": cfg.dlsm_weight > 0,
        "discriminator": SharedLatentDiscriminator.__name__,
        **extra,
        "network": {"name": network, **NETWORKS[network]},
        "training": cfg.to_dict(),
        "chance": continuous_chance_levels(),
    }


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample std and count of the values that are not None (None where none is)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": statistics.fmean(present), "std": std, "n": len(present)}


def aggregate(
    runs: list[dict[str, Any]], rows: Sequence[str], metrics: Sequence[str] = METRICS
) -> dict[str, Any]:
    """Means and stds over the runs (seeds) of each of ``rows``' ``metrics`` (the report's
    rows, in this order) and of every calibration measure, at the first run's noise levels."""
    stats = {row: {m: mean_std([r["rows"][row][m] for r in runs]) for m in metrics} for row in rows}
    by_level = [{c["noise_level"]: c for c in r["calibration"]} for r in runs]
    calibration = {
        str(level): {key: mean_std([c[level][key] for c in by_level]) for key in CALIBRATION_KEYS}
        for level in by_level[0]
    }
    return {
        "seeds": [r["seed"] for r in runs],
        "settings": runs[0]["settings"],
        "rows": {k: {m: v["mean"] for m, v in row.items()} for k, row in stats.items()},
        "rows_std": {k: {m: v["std"] for m, v in row.items()} for k, row in stats.items()},
        "calibration": calibration,
        "train_seconds": mean_std([r["train_seconds"] for r in runs]),
    }


def mean_pm_std(stat: dict[str, Any]) -> str:
    """A :func:`mean_std` as ``mean ± std`` (three decimals), as the reports' tables print it."""
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return mean_pm_std(stat) if stat["n"] > 1 else f"{stat['mean']:.3f}"


def tables(report: dict[str, Any]) -> list[str]:
    """Markdown lines of an aggregated report: one row per sampler (mean ± std over seeds;
    the mean alone for one seed), then the calibration against the exact ratio (``gain``:
    the median of ``|grad h| / |grad log r|``, how far scale 1 moves against the exact ratio)."""
    names = list(next(iter(report["rows"].values())))
    lines = ["| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    n = len(report["seeds"])
    for row, metrics in report["rows"].items():
        stats = [{"mean": metrics[m], "std": report["rows_std"][row][m], "n": n} for m in names]
        lines.append(f"| {row} | " + " | ".join(_fmt(s) for s in stats) + " |")
    lines += [
        "",
        "| t/T | cos audio | gain audio | cos video | frac video | accuracy | Bayes accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for level, cal in report["calibration"].items():
        keys = ("cos_audio", "gain_audio", "cos_video", "frac_video", "accuracy", "bayes_accuracy")
        lines.append(f"| {level} | " + " | ".join(_fmt(cal[k]) for k in keys) + " |")
    return lines


def figure(report: dict[str, Any], path: Path) -> None:
    """Agreement of every row (bars, std over seeds as error bars) and the network's
    input-gradient cosine to the exact ratio against the noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["rows"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.25
    for k, metric in enumerate(("semantic", "temporal")):
        means = [report["rows"][r][metric] for r in rows]
        stds = [report["rows_std"][r][metric] for r in rows]
        left.bar([i + k * width for i in range(len(rows))], means, width, yerr=stds, label=metric)
    left.set_xticks([i + width / 2 for i in range(len(rows))], rows)
    left.set_ylim(0, 1.05)
    left.legend()
    left.set_title(f"agreement (network at scale {report['settings']['guidance_scale_audio']:g})")
    levels = [float(x) for x in report["calibration"]]
    trained = report["settings"].get("training", {}).get("log_snr_range")
    if trained is not None:  # as t/T: the time sample_log_snr draws in
        ends = sorted(cosine_time(lam) for lam in trained)
        right.axvspan(*ends, color="grey", alpha=0.15, label="trained noise levels")
    for key in ("cos_audio", "cos_video"):
        ys = [report["calibration"][str(x)][key]["mean"] for x in levels]
        right.plot(levels, [float("nan") if y is None else y for y in ys], "o-", label=key)
    right.axhline(0.7, color="grey", lw=0.8, ls="--")
    right.set_xlabel("t/T")
    right.set_ylim(-0.1, 1.05)
    right.legend()
    right.set_title("input-gradient cosine to the exact ratio")
    fig.tight_layout()
    save_figure(fig, path)


def write_report(
    out: Path,
    report: dict[str, Any],
    markdown: str,
    draw: Callable[[dict[str, Any], Path], None] | None = figure,
) -> None:
    """An aggregated report's ``report.json``, ``report.md`` and, drawn by ``draw`` (this
    module's :func:`figure` unless a benchmark has its own; None: no figure), ``report.png``
    in ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown)
    if draw is not None:
        draw(report, out / "report.png")
