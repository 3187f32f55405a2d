"""The end-to-end MMDisCo demo on the finite synthetic audio-visual world
(`mmdisco demo --world finite`; the continuous world's is :mod:`mmdisco.world.continuous_demo`).

Two frozen base models, each trained on one modality of the world, generate valid audio and
valid video that do not agree: the class (colour vs pitch) and the impact times are
independent. The demo

1. encodes real world clips into the base models' spaces (real pairs),
2. samples independent pairs from the base models (the fakes cache),
3. trains one discriminator with L_D + L_DLSM (:func:`train_codebook`; network
   discriminators too, if ``DemoSettings.heads`` names fusion heads),
4. calibrates it against the world's exact density ratio
   (:mod:`mmdisco.world.calibration`),
5. samples the same seeds unguided, guided by it and guided by the exact ratio (the
   method's ceiling), at scale 1 on both modalities,
6. scores every set with the world's exact detectors (:func:`mmdisco.world.evaluate`),

and writes ``report.json``, ``report.md``, figures and a few ``.mp4`` files to watch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.discriminator.composite import SummedDiscriminators
from mmdisco.errors import InputError, check_float, check_fraction_range, check_int
from mmdisco.io import save_figure, write_json_atomic
from mmdisco.sampling import SamplingConfig, sample_batches
from mmdisco.training.data import PairData, encode_pairs, fake_pairs
from mmdisco.training.fakes import generate_fakes
from mmdisco.training.trainer import TrainConfig, train_discriminator
from mmdisco.world.recipes import (
    EVAL_SEED_OFFSET,
    GUIDANCE_SCALES,
    GUIDANCE_WINDOW,
    HELD_OUT_SEED_OFFSET,
    REAL_SEED_OFFSET,
    CodebookRecipe,
    build_discriminator,
    codebook_train_config,
    quick_codebook_train_config,
    train_codebook,
    training_summary,
    world_real_pairs,
)

HEADS = ("mlp", "time_aligned", "separable")
COMBINED = "combined"  # the mlp and time_aligned discriminators' logits summed
METRICS = ("semantic", "temporal", "validity_audio", "validity_video")
__all__ = [  # the world's recipes, re-exported where callers have always found them
    "EVAL_SEED_OFFSET",
    "HELD_OUT_SEED_OFFSET",
    "REAL_SEED_OFFSET",
    "DemoSettings",
    "build_discriminator",
    "run_demo",
    "train_codebook",
    "world_real_pairs",
]


@dataclass
class DemoSettings:
    """Every knob of the demo (stored in report.json)."""

    n_real: int = 2048
    n_real_eval: int = 256
    n_fakes: int = 1024  # re-paired every step (fake_pairing="shuffle"): 1024^2 fake pairs
    n_fakes_eval: int = 256  # more fakes, held out for the calibration report
    # Fakes come from the sampler the comparison uses, so the discriminator learns the
    # ratio to the very distribution it corrects.
    fake_steps: int = 25
    fake_scheduler: str = "ddpm"
    n_eval: int = 256
    # Ancestral DDPM: guidance needs stochastic steps to move samples between modes.
    sample_steps: int = 25
    sample_scheduler: str = "ddpm"
    # The video model commits to a class and a bounce early (t / T ~ 0.9), the audio model
    # later (~0.8), and a discriminator trained for a minute is weakest up where the video
    # decides: guiding the video there only adds noise, while guiding the audio lets it follow
    # the video. Far above the theoretical 1: the discriminator is under-confident at high
    # noise. (Time-aligned head, 96 pairs: audio 300 / video 0 gave temporal 0.92, audio 30
    # / video 30 gave 0.62.)
    # The scales of the theory (docs/method.md): with a discriminator that is the density
    # ratio, scale 1 on both modalities samples the joint. (The network heads below needed
    # audio 300 / video 0; docs/training_the_discriminator.md.)
    guidance_scale_audio: float = GUIDANCE_SCALES[0]
    guidance_scale_video: float = GUIDANCE_SCALES[1]
    # Guide only while t / T lies in this range (Discriminator Guidance's window), the range
    # the discriminator is trained on (train.noise_range): class and event times are decided
    # at high noise, and the last steps, which set the detail the detectors check, run
    # unguided.
    guidance_window: tuple[float, float] = GUIDANCE_WINDOW
    # The demo's discriminator: one CodebookDiscriminator (mmdisco.discriminator.codebook),
    # anchors by k-means of real and fake clips, coupling counted from the real pairs, then
    # trained with L_D + L_DLSM (codebook_train), L_DLSM read from a bank of
    # ``bank_noisings`` noisings per real pair.
    codebook_codes: int = 320
    codebook_video_pool: int = 1
    bank_noisings: int = 2
    codebook_train: TrainConfig = field(default_factory=codebook_train_config)
    exact_row: bool = True  # also sample with the world's exact ratio: the method's ceiling
    calibration: bool = True  # calibrate every discriminator against the exact ratio
    # Network discriminators (mmdisco.discriminator.Discriminator) with these fusion heads,
    # trained with ``train`` / ``head_train`` below: none by default (the earlier demo's
    # recipe, kept for comparison and for the systems benchmark).
    heads: tuple[str, ...] = ()
    # Also sample with the sum of the mlp and time_aligned logits (a product of the two
    # ratio estimates): see run_demo.
    combine_heads: bool = True
    # The world's discriminator: small, on 4x4-pooled video (see PooledDiscriminator), with
    # product features for the mlp head, which left its starting saddle after ~620 of 1000
    # steps here (escape is fragile: with 8x8 pooling it stayed for all 1000).
    disc_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "video_pool": 4,
            "channels": 16,
            "channel_mult": (1, 2),
            "norm_groups": 8,
            "time_embed_dim": 32,
            "fusion_product": True,
        }
    )
    train: TrainConfig = field(
        # L_D only: L_DLSM evaluates both base models and a double backward on every real
        # batch (3.5x the step time here) and, at weight 1, did not change what the heads
        # learnt in our runs.
        default_factory=lambda: TrainConfig(
            steps=1000,
            batch_size=64,
            lr=2e-3,
            lr_schedule="cosine",
            use_dlsm=False,
            fake_pairing="shuffle",
            noise_range=(0.5, 1.0),
            checkpoint_every=250,
            log_every=20,
        )
    )
    # Per-head changes to ``train``. The pooled mlp head learns the category, and it learns
    # it from the whole noise range: clean pairs give the clearest signal, and what it learns
    # there carries to high noise (class accuracy at t/T = 0.8: 0.95 trained on [0, 1] for
    # 2000 steps, 0.80 on [0.5, 1]; semantic agreement 0.93 vs 0.47, 96 pairs). The
    # time-aligned head learns event times better on [0.5, 1] (temporal 0.93 vs 0.81).
    head_train: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"mlp": {"steps": 2000, "noise_range": (0.0, 1.0)}}
    )
    n_videos: int = 3
    upscale: int = 8
    seed: int = 0
    models_dir: str | None = None  # world base models; None: the shipped ones

    def __post_init__(self) -> None:
        counts = (
            *("n_real", "n_real_eval", "n_fakes", "n_fakes_eval", "fake_steps", "n_eval"),
            *("sample_steps", "upscale", "codebook_codes", "codebook_video_pool"),
            "bank_noisings",
        )
        for name in counts:
            check_int(name, getattr(self, name), 1)
        check_int("n_videos", self.n_videos, 0)
        check_int("seed", self.seed, 0)
        for name in ("guidance_scale_audio", "guidance_scale_video"):
            setattr(self, name, check_float(name, getattr(self, name)))
        self.guidance_window = check_fraction_range("guidance_window", self.guidance_window)
        for head in self.head_train:
            try:
                self.train_config(head)
            except (TypeError, ValueError) as err:
                raise InputError(f"head_train[{head!r}]: {err}") from None

    @classmethod
    def quick(cls) -> DemoSettings:
        """A minute-scale run for tests: tiny sets, few steps; the pipeline, not the results."""
        return cls(
            n_real=32,
            n_real_eval=16,
            n_fakes=16,
            n_fakes_eval=8,
            fake_steps=3,
            n_eval=8,
            sample_steps=3,
            train=TrainConfig(
                steps=6,
                batch_size=8,
                use_dlsm=False,
                fake_pairing="shuffle",
                checkpoint_every=3,
                log_every=3,
            ),
            head_train={"mlp": {"noise_range": (0.0, 1.0)}},
            codebook_codes=8,
            bank_noisings=1,
            codebook_train=quick_codebook_train_config(),
            n_videos=1,
            upscale=2,
        )

    def sample_settings(self) -> SamplingConfig:
        """How the comparison samples: sampler, steps, guidance scales and window."""
        return SamplingConfig(
            self.sample_steps,
            self.sample_scheduler,
            self.guidance_scale_audio,
            self.guidance_scale_video,
            window=tuple(self.guidance_window),
        )

    def codebook_recipe(self) -> CodebookRecipe:
        """How the demo's codebook discriminator is built and trained."""
        return CodebookRecipe(
            codes=self.codebook_codes,
            video_pool=self.codebook_video_pool,
            bank_noisings=self.bank_noisings,
            train=self.codebook_train,
            seed=self.seed,
        )

    def train_config(self, head: str) -> TrainConfig:
        """``train`` with ``head_train[head]`` applied."""
        return dataclasses.replace(self.train, **self.head_train.get(head, {}))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        d["codebook_train"] = self.codebook_train.to_dict()
        return d


def write_videos(
    out: Path, prefix: str, audio: Tensor, video: Tensor, indices: Iterable[int], upscale: int
) -> list[Path]:
    """``out/{prefix}_{i:02d}.mp4`` for each index: the pair's frames with its sound."""
    from mmdisco.media import write_mp4
    from mmdisco.world import WorldConfig

    cfg = WorldConfig()
    paths = []
    for i in indices:
        path = Path(out) / f"{prefix}_{i:02d}.mp4"
        write_mp4(
            path,
            video[i],
            fps=cfg.fps,
            audio=audio[i],
            sample_rate=cfg.sample_rate,
            upscale=upscale,
        )
        paths.append(path)
    return paths


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (round(float(v), 4) if isinstance(v, float | int) else v) for k, v in metrics.items()
    }


class _Laps:
    """Wall-clock seconds of each step of the demo, in order."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.since = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.since, 2)
        self.since = time.perf_counter()


@dataclass
class _DemoData:
    """The base models and the demo's data: real pairs to train on, held-out real pairs,
    fakes to train on and fakes held out for calibration."""

    audio_model: Any
    video_model: Any
    real: PairData
    real_eval: PairData
    fake: PairData
    fake_eval: tuple[Tensor, Tensor]


def _prepare_data(out: Path, settings: DemoSettings, laps: _Laps, *, progress: bool) -> _DemoData:
    """Steps 1 and 2: real pairs (training and held out), then the fakes cache."""
    from mmdisco.world import generate_clips
    from mmdisco.world.models import load_world_models

    audio_model, video_model = load_world_models(directory=settings.models_dir)
    real = world_real_pairs(
        audio_model, video_model, settings.n_real, REAL_SEED_OFFSET + settings.seed
    )
    held_out = generate_clips(settings.n_real_eval, seed=HELD_OUT_SEED_OFFSET + settings.seed)
    real_eval = encode_pairs(audio_model, video_model, held_out.audio, held_out.video)
    laps.lap("real_data")
    generate_fakes(
        audio_model,
        video_model,
        settings.n_fakes + settings.n_fakes_eval,
        out / "fakes",
        seed=settings.seed,
        shard_size=256,
        num_inference_steps=settings.fake_steps,
        scheduler=settings.fake_scheduler,
        progress=progress,
    )
    all_fakes = fake_pairs(out / "fakes")
    n = settings.n_fakes
    fake = PairData(all_fakes.audio[:n], all_fakes.video[:n])
    fake_eval = (all_fakes.audio[n:], all_fakes.video[n:])
    laps.lap("fakes")
    return _DemoData(audio_model, video_model, real, real_eval, fake, fake_eval)


def _train_discriminators(
    out: Path, data: _DemoData, settings: DemoSettings, laps: _Laps, *, progress: bool
) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Step 3: the codebook discriminator, then one network discriminator per head (and
    their sum); returns them by name with their training summaries."""
    models = (data.audio_model, data.video_model)
    discs: dict[str, nn.Module] = {}
    training: dict[str, Any] = {}
    discs["codebook"], training["codebook"] = train_codebook(
        out, *models, data.real, data.fake, settings.codebook_recipe(), progress=progress
    )
    laps.lap("train_codebook")
    for head in settings.heads:
        disc = build_discriminator(
            head,
            data.audio_model.latent_shape(),
            data.video_model.latent_shape(),
            seed=settings.seed,
            **settings.disc_kwargs,
        )
        run_dir = out / f"disc_{head}"
        config = settings.train_config(head)
        result = train_discriminator(
            disc, *models, data.real, data.fake, config, run_dir, progress=progress
        )
        disc.eval()
        disc.save_pretrained(run_dir / "discriminator")
        discs[head] = disc
        training[head] = training_summary(disc, result)
        laps.lap(f"train_{head}")
    if settings.combine_heads and {"mlp", "time_aligned"} <= discs.keys():
        discs[COMBINED] = SummedDiscriminators(discs["mlp"], discs["time_aligned"])
        discs[COMBINED].save_pretrained(out / f"disc_{COMBINED}" / "discriminator")
    return discs, training


def _calibrate(
    out: Path, discs: dict[str, nn.Module], exact: nn.Module, data: _DemoData, laps: _Laps
) -> dict[str, Any]:
    """Step 4: every discriminator (and the exact ratio) against the exact ratio."""
    from mmdisco.world.calibration import calibrate, plot_calibration

    real_cal = (data.real_eval.audio, data.real_eval.video)
    schedules = (data.audio_model.schedule, data.video_model.schedule)
    calibration = {
        name: calibrate(disc, exact, real_cal, data.fake_eval, *schedules)
        for name, disc in [*discs.items(), ("exact", exact)]
    }
    plot_calibration(out / "calibration.png", calibration, "against the world's exact ratio")
    laps.lap("calibration")
    return calibration


def _sample_and_score(
    rows: list[tuple[str, nn.Module | None]],
    data: _DemoData,
    settings: DemoSettings,
    laps: _Laps,
) -> tuple[dict[str, Any], dict[str, tuple[Tensor, Tensor]]]:
    """Steps 5 and 6: the same seeds sampled for every row and scored by the world's
    detectors, then the ceiling: held-out real clips through the base models' spaces and
    back. Returns the scores and the decoded media by row."""
    from mmdisco.world import evaluate

    audio_model, video_model = data.audio_model, data.video_model
    sample = settings.sample_settings()
    eval_seed = EVAL_SEED_OFFSET + settings.seed
    media: dict[str, tuple[Tensor, Tensor]] = {}
    report: dict[str, Any] = {}
    for name, disc in rows:
        a, v = sample_batches(
            audio_model,
            video_model,
            settings.n_eval,
            sample,
            seed=eval_seed,
            discriminator=disc,
            batch_size=128,
            progress=False,
        )
        audio, video = audio_model.decode(a), video_model.decode(v)
        media[name] = (audio, video)
        report[name] = _scores(evaluate(video, audio))
        laps.lap(f"sample_{name}")
    real_video = video_model.decode(data.real_eval.video)
    report["real"] = _scores(evaluate(real_video, audio_model.decode(data.real_eval.audio)))
    laps.lap("evaluate_real")
    return report, media


def run_demo(out: str | Path, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Run the whole demo into ``out``; returns the report (also written as report.json)."""
    from mmdisco.world import chance_levels
    from mmdisco.world.ratio import ExactLogRatio

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    laps = _Laps()
    data = _prepare_data(out, settings, laps, progress=progress)
    discs, training = _train_discriminators(out, data, settings, laps, progress=progress)
    exact = ExactLogRatio.from_world(data.audio_model, data.video_model)
    calibration = _calibrate(out, discs, exact, data, laps) if settings.calibration else {}
    rows: list[tuple[str, nn.Module | None]] = [("independent", None)]
    if settings.exact_row:
        rows.append(("exact_ratio", exact))
    rows += [(f"mmdisco_{h}", d) for h, d in discs.items()]
    report, media = _sample_and_score(rows, data, settings, laps)
    best = max(
        (k for k in report if k.startswith("mmdisco_")),
        key=lambda k: report[k]["semantic"] + report[k]["temporal"],
        default=None,
    )
    artifacts = _write_artifacts(out, media, best, settings)
    laps.lap("artifacts")
    report.update(
        {
            "best": best,
            "chance": chance_levels(),
            "training": training,
            "calibration": calibration,
            "timings": laps.timings,
            "torch_threads": torch.get_num_threads(),
            "settings": settings.to_dict(),
            "artifacts": artifacts,
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """The paper-style table: one row per method, the detectors' scores as columns."""
    rows = ["independent", *(k for k in report if k.startswith("mmdisco_"))]
    rows += ["exact_ratio"] if "exact_ratio" in report else []
    rows += ["real"]
    lines = [
        "# MMDisCo on the synthetic audio-visual world",
        "",
        "| method | semantic | temporal | validity (audio) | validity (video) |",
        "|---|---|---|---|---|",
    ]
    for name in rows:
        m = report[name]
        label = name.replace("mmdisco_", "MMDisCo, ") + (" (ceiling)" if name == "real" else "")
        if name == f"mmdisco_{COMBINED}":
            label = "MMDisCo, mlp + time_aligned (logits summed)"
        if name == "mmdisco_codebook":
            label = "MMDisCo, one codebook discriminator (L_D + L_DLSM)"
        if name == "exact_ratio":
            label = "exact ratio (the method's ceiling)"
        lines.append(f"| {label} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
    chance = report.get("chance", {})
    if chance:
        lines += [
            "",
            f"Chance level (perfect but independent base models): semantic "
            f"{chance['semantic']:.3f}, temporal {chance['temporal']:.3f}.",
        ]
    lines += ["", "Discriminator training:", ""]
    for head, info in report["training"].items():
        lines.append(
            f"- {head}: {info['seconds']:.0f} s, {info['parameters']:,} parameters, "
            f"final accuracy {info['final_accuracy']:.3f}"
        )
    s_a, s_v = (report["settings"][f"guidance_scale_{m}"] for m in ("audio", "video"))
    lines += ["", f"Guidance scales: audio {s_a:g}, video {s_v:g}.", ""]
    if report.get("calibration"):
        lines += [
            "Calibration against the exact ratio (input-gradient cosine audio / video, "
            "accuracy vs Bayes):",
            "",
        ]
        for name, table in report["calibration"].items():
            if name == "exact":
                continue
            cells = [
                f"t/T={r['noise_level']:.1f}: {_fmt(r['cos_audio'])} / {_fmt(r['cos_video'])}, "
                f"acc {r['accuracy']:.3f} vs {r['bayes_accuracy']:.3f}"
                for r in table
            ]
            lines.append(f"- {name}: " + "; ".join(cells))
        lines.append("")
    lines += [f"Total wall time: {report['seconds']:.0f} s.", ""]
    lines += ["Settings:", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _write_artifacts(
    out: Path, media: dict[str, tuple[Tensor, Tensor]], best: str | None, settings: DemoSettings
) -> list[str]:
    names = ["independent"] + ([best] if best else [])
    paths: list[Path] = []
    for name in names:
        audio, video = media[name]
        paths += write_videos(out, name, audio, video, range(settings.n_videos), settings.upscale)
    if best:
        paths.append(_figure(out / "samples.png", media["independent"], media[best], best))
    return [p.name for p in paths]


def _figure(
    path: Path,
    base: tuple[Tensor, Tensor],
    guided: tuple[Tensor, Tensor],
    label: str,
    rows: int = 3,
) -> Path:
    """Frames and spectrograms of base vs guided samples drawn from the same seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, base[0].shape[0])
    fig, axes = plt.subplots(
        rows, 4, figsize=(16, 2.2 * rows), squeeze=False, width_ratios=(1.2, 1, 1.2, 1)
    )
    for r in range(rows):
        for c, (name, (audio, video)) in enumerate((("independent", base), (label, guided))):
            _, f, h, w = video[r].shape
            cols = (f + 1) // 2  # frames in two rows, left to right then the second row
            grid = F.pad(video[r], (0, 0, 0, 0, 0, 2 * cols - f), value=1.0)
            grid = grid.reshape(3, 2, cols, h, w).permute(1, 3, 2, 4, 0).reshape(2 * h, cols * w, 3)
            axes[r, 2 * c].imshow(((grid.clamp(-1, 1) + 1) / 2).numpy(), interpolation="nearest")
            axes[r, 2 * c].set_title(f"seed {r}: {name}, frames", fontsize=8)
            spec = torch.stft(
                audio[r], 512, 128, window=torch.hann_window(512), return_complex=True
            )
            db = 20 * (spec.abs() + 1e-8).log10()
            db = db.clamp(min=float(db.max()) - 60)[:96]  # 60 dB range, up to 3 kHz
            axes[r, 2 * c + 1].imshow(db.numpy(), origin="lower", aspect="auto")
            axes[r, 2 * c + 1].set_title(f"seed {r}: {name}, spectrogram", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
