"""The end-to-end MMDisCo demo on the synthetic audio-visual world (`mmdisco demo`).

Two frozen base models, each trained on one modality of the world, generate valid audio and
valid video that do not agree: the class (colour vs pitch) and the impact times are
independent. The demo

1. encodes real world clips into the base models' spaces (real pairs),
2. samples independent pairs from the base models (the fakes cache),
3. trains one discriminator per fusion head (``mlp``, ``time_aligned``, ``separable``),
4. samples the same seeds without and with each discriminator's guidance,
5. scores every set with the world's exact detectors (:func:`mmdisco.world.evaluate`),

and writes ``report.json``, ``report.md``, a figure and a few ``.mp4`` files to watch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.io import write_json_atomic
from mmdisco.training.data import PairData, encode_pairs, fake_pairs
from mmdisco.training.fakes import SampleSettings, generate_fakes, sample_pairs
from mmdisco.training.trainer import TrainConfig, train_discriminator

HEADS = ("mlp", "time_aligned", "separable")
METRICS = ("semantic", "temporal", "validity_audio", "validity_video")
REAL_SEED_OFFSET = 50_000  # world clips for the demo stay clear of the base models' data
HELD_OUT_SEED_OFFSET = 60_000
EVAL_SEED_OFFSET = 70_000
POOL_CONFIG = "pooling.json"


@dataclass
class DemoSettings:
    """Every knob of the demo (stored in report.json)."""

    n_real: int = 2048
    n_real_eval: int = 256
    n_fakes: int = 512  # re-paired every step (fake_pairing="shuffle"): 512^2 fake pairs
    fake_steps: int = 10
    fake_scheduler: str = "dpm"
    n_eval: int = 256
    # Ancestral DDPM: guidance needs stochastic steps to move samples between the modes that
    # a 10-step deterministic solver commits to early.
    sample_steps: int = 25
    sample_scheduler: str = "ddpm"
    # Far above the theoretical 1: a discriminator trained for minutes appears under-confident
    # (on the stand-in, guided agreement kept rising from scale 4 to 12, 30 and 60).
    guidance_scale_audio: float = 30.0
    guidance_scale_video: float = 30.0
    # Guide only while t / T lies in this range (Discriminator Guidance's window): class and
    # event times are decided at high noise; the last steps, which set the fine detail the
    # detectors check for validity, run unguided.
    guidance_window: tuple[float, float] = (0.2, 1.0)
    heads: tuple[str, ...] = HEADS
    # The world's discriminator: small, on 4x4-pooled video (see PooledDiscriminator).
    disc_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "video_pool": 4,
            "channels": 16,
            "channel_mult": (1, 2),
            "norm_groups": 8,
            "time_embed_dim": 32,
        }
    )
    train: TrainConfig = field(
        # L_D only: L_DLSM evaluates both base models on every real batch, which would
        # double the demo's cost on a CPU; the world's base models fit their marginals (the
        # paper's IND case, where L_D alone already works).
        # Training length matters most: on an exact-denoiser stand-in for the base models the
        # mlp head's guided semantic agreement (scale 60, 64 pairs) was 0.56 after 400 steps
        # at lr 1e-3 and 0.89 after 700 cosine steps from lr 2e-3.
        default_factory=lambda: TrainConfig(
            steps=700,
            batch_size=64,
            lr=2e-3,
            lr_schedule="cosine",
            use_dlsm=False,
            fake_pairing="shuffle",
            checkpoint_every=200,
            log_every=20,
        )
    )
    n_videos: int = 3
    upscale: int = 8
    seed: int = 0
    models_dir: str | None = None  # world base models; None: the shipped ones

    @classmethod
    def quick(cls) -> DemoSettings:
        """A minute-scale run for tests: tiny sets, few steps; the pipeline, not the results."""
        return cls(
            n_real=32,
            n_real_eval=16,
            n_fakes=16,
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
            n_videos=1,
            upscale=2,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d


class PooledDiscriminator(nn.Module):
    """A :class:`mmdisco.discriminator.Discriminator` that sees the video average-pooled by
    ``video_pool`` in H and W.

    Pooling is linear, so ``grad_v h`` is the discriminator's gradient spread evenly back
    over each pooled cell, and guidance works in the full pixel space. It cuts the
    discriminator's cost on a CPU by ``video_pool ** 2`` (its video stream runs at full
    resolution), while one-pixel shifts of the world's object still change the pooled values.
    """

    def __init__(self, disc: nn.Module, video_pool: int = 1) -> None:
        super().__init__()
        self.disc, self.video_pool = disc, int(video_pool)

    def forward(self, audio: Tensor, video: Tensor, t_audio: Tensor, t_video: Tensor, **kw: Any):
        if self.video_pool > 1:
            video = F.avg_pool3d(video, (1, self.video_pool, self.video_pool))
        return self.disc(audio, video, t_audio, t_video, **kw)

    def save_pretrained(self, directory: str | Path) -> None:
        self.disc.save_pretrained(directory)
        write_json_atomic(Path(directory) / POOL_CONFIG, {"video_pool": self.video_pool})


def load_discriminator(directory: str | Path, device: str = "cpu") -> nn.Module:
    """A discriminator saved by ``Discriminator`` or :class:`PooledDiscriminator`."""
    from mmdisco.discriminator import Discriminator

    disc = Discriminator.from_pretrained(directory, device)
    pool_file = Path(directory) / POOL_CONFIG
    if pool_file.exists():
        return PooledDiscriminator(disc, json.loads(pool_file.read_text())["video_pool"])
    return disc


def build_discriminator(
    head: str,
    audio_shape: tuple[int, ...],
    video_shape: tuple[int, ...],
    seed: int = 0,
    video_pool: int = 1,
    **kw: Any,
) -> nn.Module:
    """A small :class:`mmdisco.discriminator.Discriminator` for latents of the given shapes,
    with fusion head ``head``; ``kw`` overrides :meth:`DiscriminatorConfig.for_shapes`."""
    from mmdisco.discriminator import Discriminator, DiscriminatorConfig

    c, f, h, w = video_shape
    pooled = (c, f, h // video_pool, w // video_pool)
    config = DiscriminatorConfig.for_shapes(audio_shape, pooled, fusion=head, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        disc = Discriminator(config)
    return PooledDiscriminator(disc, video_pool) if video_pool > 1 else disc


def world_real_pairs(audio_model: Any, video_model: Any, n: int, seed: int) -> PairData:
    """``n`` real world clips encoded into the base models' spaces."""
    from mmdisco.world import generate_clips

    clips = generate_clips(n, seed=seed)
    return encode_pairs(audio_model, video_model, clips.audio, clips.video)


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


def run_demo(out: str | Path, settings: DemoSettings | None = None, progress: bool = True) -> dict:
    """Run the whole demo into ``out``; returns the report (also written as report.json)."""
    from mmdisco.world import chance_levels, evaluate, generate_clips
    from mmdisco.world.models import load_world_models

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    t = time.perf_counter()
    audio_model, video_model = load_world_models(directory=settings.models_dir)
    real = world_real_pairs(
        audio_model, video_model, settings.n_real, REAL_SEED_OFFSET + settings.seed
    )
    held_out = generate_clips(settings.n_real_eval, seed=HELD_OUT_SEED_OFFSET + settings.seed)
    t = lap("real_data", t)
    generate_fakes(
        audio_model,
        video_model,
        settings.n_fakes,
        out / "fakes",
        seed=settings.seed,
        shard_size=256,
        num_inference_steps=settings.fake_steps,
        scheduler=settings.fake_scheduler,
        progress=progress,
    )
    fake = fake_pairs(out / "fakes")
    t = lap("fakes", t)

    discs: dict[str, nn.Module] = {}
    training: dict[str, Any] = {}
    for head in settings.heads:
        disc = build_discriminator(
            head,
            audio_model.latent_shape(),
            video_model.latent_shape(),
            seed=settings.seed,
            **settings.disc_kwargs,
        )
        run_dir = out / f"disc_{head}"
        result = train_discriminator(
            disc, audio_model, video_model, real, fake, settings.train, run_dir, progress=progress
        )
        disc.eval()
        disc.save_pretrained(run_dir / "discriminator")
        discs[head] = disc
        last = result.history[-1] if result.history else {}
        training[head] = {
            "seconds": round(result.seconds, 2),
            "resumed_from_step": result.start_step,
            "parameters": sum(p.numel() for p in disc.parameters()),
            "final_accuracy": round(last.get("accuracy", float("nan")), 4),
            "final_loss_d": round(last.get("loss_d", float("nan")), 4),
            "final_loss_dlsm": round(last.get("loss_dlsm", float("nan")), 4),
        }
        t = lap(f"train_{head}", t)

    sample = SampleSettings(
        settings.sample_steps,
        settings.sample_scheduler,
        settings.guidance_scale_audio,
        settings.guidance_scale_video,
        window=tuple(settings.guidance_window),
    )
    eval_seed = EVAL_SEED_OFFSET + settings.seed
    media: dict[str, tuple[Tensor, Tensor]] = {}
    report: dict[str, Any] = {}
    for name, disc in [("independent", None), *((f"mmdisco_{h}", d) for h, d in discs.items())]:
        a, v = sample_pairs(
            audio_model,
            video_model,
            settings.n_eval,
            eval_seed,
            settings=sample,
            discriminator=disc,
            batch_size=128,
            progress=False,
        )
        audio, video = audio_model.decode(a), video_model.decode(v)
        media[name] = (audio, video)
        report[name] = _scores(evaluate(video, audio))
        t = lap(f"sample_{name}", t)
    # The ceiling: held-out real clips through the base models' spaces and back.
    real_eval = encode_pairs(audio_model, video_model, held_out.audio, held_out.video)
    report["real"] = _scores(
        evaluate(
            video_model.decode(real_eval.video),
            audio_model.decode(real_eval.audio),
        )
    )
    t = lap("evaluate_real", t)

    best = max(
        (k for k in report if k.startswith("mmdisco_")),
        key=lambda k: report[k]["semantic"] + report[k]["temporal"],
        default=None,
    )
    artifacts = _write_artifacts(out, media, best, settings)
    lap("artifacts", t)
    report.update(
        {
            "best": best,
            "chance": chance_levels(),
            "training": training,
            "timings": timings,
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
    rows = ["independent", *(k for k in report if k.startswith("mmdisco_")), "real"]
    lines = [
        "# MMDisCo on the synthetic audio-visual world",
        "",
        "| method | semantic | temporal | validity (audio) | validity (video) |",
        "|---|---|---|---|---|",
    ]
    for name in rows:
        m = report[name]
        label = name.replace("mmdisco_", "MMDisCo, ") + (" (ceiling)" if name == "real" else "")
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
    lines += ["", f"Total wall time: {report['seconds']:.0f} s.", ""]
    lines += ["Settings:", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    return "\n".join(lines)


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
    fig, axes = plt.subplots(rows, 4, figsize=(16, 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c, (name, (audio, video)) in enumerate((("independent", base), (label, guided))):
            _, f, h, w = video[r].shape
            strip = video[r].permute(2, 1, 3, 0).reshape(h, f * w, 3)  # frames side by side
            axes[r, 2 * c].imshow(((strip.clamp(-1, 1) + 1) / 2).numpy(), interpolation="nearest")
            axes[r, 2 * c].set_title(f"seed {r}: {name}, frames", fontsize=8)
            spec = torch.stft(
                audio[r], 512, 128, window=torch.hann_window(512), return_complex=True
            )
            axes[r, 2 * c + 1].imshow(
                (spec.abs() + 1e-6).log10()[:96].numpy(), origin="lower", aspect="auto"
            )
            axes[r, 2 * c + 1].set_title(f"seed {r}: {name}, spectrogram", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path
