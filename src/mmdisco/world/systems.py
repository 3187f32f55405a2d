"""Every system a user weighs against MMDisCo, side by side on the world, from the same seeds.

Joint generation (``n_eval`` pairs, one evaluation seed for every row):

* independent base models; MMDisCo (the trained discriminator's guidance); MMDisCo with the
  world's exact log ratio at scale 1 (the method's ceiling);
* best-of-N: N independent pairs, the one with the highest discriminator logit at t = 0 kept;
* MMDisCo + resampling: N guided pairs, re-ranked the same way;
* the cascade T2V -> V2A: the video base model, then the video-to-audio model given its video;
* a joint model trained from scratch, and the joint model guided by a discriminator trained
  on its own samples as fakes (the paper's in-domain setting, its Table 2).

Conditional generation, given held-out real clips: video-to-audio and audio-to-video by
MMDisCo's discriminator (the given clip entering it clean, or re-noised at every step), by the
exact ratio, and by the cascade's conditional model, against the unguided base model (chance).

Costs: trainable parameters; training CPU-seconds (MMDisCo: generating the fakes plus training
the discriminator; the paired models: their recorded training); sampling CPU-seconds per kept
pair. Rows with a trained discriminator give the mean and standard deviation over
``disc_seeds``. A curve of best-of-N and re-ranking against N (the base-model evaluations per
kept pair, in units of one sampling run) compares them with guidance at equal compute.

:func:`train_world_discriminator` is the one place that says how the world's MMDisCo
discriminator is trained and how strongly it guides.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmdisco.base_models.loading import SCHEDULERS
from mmdisco.errors import check_bool, check_choice, check_float, check_int, check_ints
from mmdisco.io import save_figure, write_json_atomic, write_text_atomic
from mmdisco.resampling import score_pairs, select, t0_log_snr
from mmdisco.sampling import SamplingConfig, sample_batches
from mmdisco.seeding import derive_seed
from mmdisco.training.data import PairData, fake_pairs
from mmdisco.training.fakes import generate_fakes
from mmdisco.world.detectors import Detection, chance_levels, detect_audio, detect_video, summarize
from mmdisco.world.generator import generate_clips
from mmdisco.world.models import load_world_models
from mmdisco.world.paired import WorldJointModel, load_paired_models
from mmdisco.world.ratio import ExactLogRatio
from mmdisco.world.recipes import (
    EVAL_SEED_OFFSET,
    GUIDANCE_SCALES,
    GUIDANCE_WINDOW,
    HELD_OUT_SEED_OFFSET,
    REAL_SEED_OFFSET,
    CodebookRecipe,
    train_codebook,
)
from mmdisco.world.recipes import world_real_pairs as real_pairs

METRICS = ("semantic", "temporal", "validity_audio", "validity_video", "diversity")
TASKS = ("joint", "video-to-audio", "audio-to-video")
EXACT_SCALES = {"joint": (1.0, 1.0), "video-to-audio": (1.0, 0.0), "audio-to-video": (0.0, 1.0)}
TRAINED = "trained.json"


@dataclass
class SystemsSettings:
    """Every knob of the comparison (stored in report.json)."""

    n_eval: int = 256
    n_real: int = 2048
    n_fakes: int = 512
    fake_steps: int = 25
    sample_steps: int = 25
    scheduler: str = "ddpm"
    # Pools of ``candidates`` pairs per kept pair serve every N of best-of-N and re-ranking
    # (the first N of the pool); the table's rows use ``table_candidates``.
    candidates: int = 8
    table_candidates: int = 4
    disc_seeds: tuple[int, ...] = (0, 1, 2)
    # One discriminator for joint and conditional generation: a quarter of its training
    # pairs hold one modality clean (TrainConfig.clean_prob).
    clean_prob: float = 0.25
    quick: bool = False  # tiny discriminators and few steps: the pipeline, not the results
    batch_size: int = 128
    models_dir: str | None = None  # world base models; None: the shipped ones
    paired_dir: str | None = None  # cascade and joint models; None: the shipped ones
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_eval", "n_real", "n_fakes", "fake_steps", "sample_steps", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_choice("scheduler", self.scheduler, tuple(SCHEDULERS))
        check_int("candidates", self.candidates, 1)
        check_int("table_candidates", self.table_candidates, 1, self.candidates)
        self.disc_seeds = check_ints("disc_seeds", self.disc_seeds, 0)
        self.clean_prob = check_float("clean_prob", self.clean_prob, 0.0, 1.0)
        check_bool("quick", self.quick)
        check_int("seed", self.seed, 0)

    @classmethod
    def quick_settings(cls) -> SystemsSettings:
        return cls(
            n_eval=8,
            n_real=32,
            n_fakes=16,
            fake_steps=3,
            sample_steps=3,
            candidates=2,
            table_candidates=2,
            disc_seeds=(0,),
            quick=True,
        )

    def sampling(
        self, scales: tuple[float, float] = (1.0, 1.0), window: tuple[float, float] = (0.0, 1.0)
    ) -> SamplingConfig:
        return SamplingConfig(self.sample_steps, self.scheduler, *scales, window=tuple(window))


# --------------------------------------------------------------------------------------------
# The world's MMDisCo discriminator: the one place that says how it is trained
# --------------------------------------------------------------------------------------------


@dataclass
class Guide:
    """A discriminator and how to guide with it: ``scales[task] = (audio, video)`` for each
    of :data:`TASKS`, a guidance window (t / T), and what it cost."""

    discriminator: nn.Module
    scales: dict[str, tuple[float, float]]
    window: tuple[float, float] = (0.0, 1.0)
    parameters: int = 0
    train_cpu_s: float = 0.0  # discriminator training (and fakes, once the caller adds them)


def train_world_discriminator(
    audio_model: Any,
    video_model: Any,
    real: PairData,
    fake: PairData,
    out_dir: Path,
    *,
    seed: int,
    clean_prob: float,
    fake_pairing: str = "shuffle",
    use_dlsm: bool = True,
    quick: bool = False,
    progress: bool = False,
) -> Guide:
    """Train the world's MMDisCo discriminator into ``out_dir`` (resumed from checkpoints,
    loaded when complete; the CPU-seconds recorded are those of the run that finished it).

    The world's recipe (:func:`mmdisco.world.recipes.train_codebook`): one codebook discriminator,
    anchors from real and fake clips, coupling counted from the real pairs, L_D + L_DLSM,
    scale 1. A given clean modality needs no special training: at the clip's log-SNR the
    anchors' posterior is exact, so ``clean_prob`` is not used (kept for the callers' record).
    ``fake_pairing="fixed"`` for fakes whose pairs are dependent (a joint model's samples);
    ``use_dlsm=False`` where the base models cannot be called one modality at a time (the
    joint model's views), so no L_DLSM bank can be built: L_D only.
    """
    from mmdisco.discriminator import load_discriminator as load

    del clean_prob
    record = out_dir / TRAINED
    disc_dir = out_dir / "disc_codebook" / "discriminator"
    if record.exists():
        cpu_seconds = json.loads(record.read_text())["cpu_seconds"]
        disc = load(disc_dir)
    else:
        start = time.process_time()
        recipe = CodebookRecipe.quick(seed) if quick else CodebookRecipe(seed=seed)
        train = dataclasses.replace(
            recipe.train, seed=seed, fake_pairing=fake_pairing, use_dlsm=use_dlsm
        )
        disc, _ = train_codebook(
            out_dir,
            audio_model,
            video_model,
            real,
            fake,
            dataclasses.replace(recipe, train=train),
            progress=progress,
        )
        cpu_seconds = round(time.process_time() - start, 1)
        write_json_atomic(record, {"cpu_seconds": cpu_seconds})
    disc = disc.eval()
    a, v = GUIDANCE_SCALES
    return Guide(
        disc,
        scales={"joint": (a, v), "video-to-audio": (a, 0.0), "audio-to-video": (0.0, v)},
        window=GUIDANCE_WINDOW,
        parameters=sum(p.numel() for p in disc.parameters()),
        train_cpu_s=cpu_seconds,
    )


def exact_guide(audio_model: Any, video_model: Any) -> Guide:
    """The world's exact log density ratio in the base models' spaces, at scale 1 on both
    modalities over the whole noise range: the method's ceiling (an oracle, nothing trained)."""
    return Guide(ExactLogRatio.from_world(audio_model, video_model), dict(EXACT_SCALES))


# --------------------------------------------------------------------------------------------
# Pools of candidates
# --------------------------------------------------------------------------------------------


@dataclass
class Pool:
    """``K`` candidates for each of ``B`` outputs: latents ``(K, B, ...)``, the detectors'
    reading of every candidate, and the sampling CPU-seconds per candidate."""

    audio: Tensor
    video: Tensor
    det_audio: list[list[Detection]]
    det_video: list[list[Detection]]
    cpu_per_pair: float

    def metrics(self, choice: Tensor | None = None) -> dict[str, float]:
        """The detectors' metrics of candidate ``choice[b]`` of every output ``b`` (default:
        the first candidate, the plain sample of the evaluation seed)."""
        pick = [0] * self.audio.shape[1] if choice is None else choice.tolist()
        da = [self.det_audio[k][b] for b, k in enumerate(pick)]
        dv = [self.det_video[k][b] for b, k in enumerate(pick)]
        return {k: round(v, 4) for k, v in summarize(dv, da).items() if k in METRICS}


def sample_pool(
    audio_model: Any,
    video_model: Any,
    k: int,
    seed: int,
    settings: SystemsSettings,
    sampling: SamplingConfig,
    progress: bool = False,
    **kwargs: Any,
) -> Pool:
    """``k`` candidates for each of ``settings.n_eval`` outputs (``kwargs``: those of
    :func:`~mmdisco.sampling.sample_batches`). Candidate 0 is drawn from ``seed`` itself,
    so it is the plain sample every row without resampling takes."""
    audio, video = [], []
    start = time.process_time()
    for j in tqdm(range(k), desc=f"{k} x {settings.n_eval} pairs", disable=not progress):
        a, v = sample_batches(
            audio_model,
            video_model,
            settings.n_eval,
            sampling,
            seed=seed if j == 0 else derive_seed(seed, j),
            batch_size=settings.batch_size,
            **kwargs,
        )
        audio.append(a)
        video.append(v)
    cpu = (time.process_time() - start) / (k * settings.n_eval)
    a, v = torch.stack(audio), torch.stack(video)
    with torch.no_grad():
        det_a = [detect_audio(audio_model.decode(x)) for x in a]
        det_v = [detect_video(video_model.decode(x)) for x in v]
    return Pool(a, v, det_a, det_v, cpu)


def rank(guide: Guide, pool: Pool, audio_model: Any, video_model: Any) -> tuple[Tensor, float]:
    """``(B, K)`` logits at t = 0 of every candidate, and the CPU-seconds per candidate."""
    k, b = pool.audio.shape[:2]
    start = time.process_time()
    logits = score_pairs(
        guide.discriminator,
        pool.audio.flatten(0, 1),
        pool.video.flatten(0, 1),
        t0_log_snr(audio_model),
        t0_log_snr(video_model),
    )
    return logits.view(k, b).T, (time.process_time() - start) / (k * b)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


COSTS = ("parameters", "train_cpu_s", "sample_cpu_s_per_pair")


@dataclass
class Row:
    """One method: its metrics and costs per discriminator seed (one run when nothing is
    trained)."""

    name: str
    task: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "task": self.task, "seeds": len(self.runs)}
        out.update(_mean_std(self.runs))
        for cost in COSTS:
            values = [r[cost] for r in self.runs if r.get(cost) is not None]
            mean = sum(values) / len(values) if values else None
            out[cost] = round(mean) if cost == "parameters" and mean is not None else mean
        return out


def _mean_std(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for metric in METRICS:
        values = torch.tensor([r[metric] for r in runs], dtype=torch.float64)
        out[metric] = round(float(values.mean()), 4)
        out[f"{metric}_std"] = round(float(values.std(correction=0)), 4)
    return out


class Comparison:
    """What the rows of one run share: the models, real pairs, held-out clips, seeds, fakes,
    and the rows and curves filled so far."""

    def __init__(self, out: Path, settings: SystemsSettings, progress: bool) -> None:
        self.out, self.settings, self.progress = out, settings, progress
        self.audio, self.video = load_world_models(directory=settings.models_dir)
        self.paired = load_paired_models(settings.paired_dir)
        self.joint: WorldJointModel = self.paired["joint"]
        self.real = real_pairs(
            self.audio, self.video, settings.n_real, REAL_SEED_OFFSET + settings.seed
        )
        held_out = generate_clips(settings.n_eval, seed=HELD_OUT_SEED_OFFSET + settings.seed)
        with torch.no_grad():
            self.given = {
                "audio": self.audio.encode(held_out.audio).cpu(),
                "video": self.video.encode(held_out.video).cpu(),
            }
        self.eval_seed = EVAL_SEED_OFFSET + settings.seed
        self.rows: dict[str, Row] = {}
        self.curves: dict[str, dict[int, list[dict[str, float]]]] = {}
        self.fakes: dict[str, PairData] = {}
        self.fake_cpu_s: dict[str, float] = {}

    def add(self, name: str, task: str, metrics: dict[str, float], **costs: Any) -> None:
        """One run of a row: its metrics and its costs (:data:`COSTS`)."""
        self.rows.setdefault(name, Row(name, task)).runs.append({**metrics, **costs})

    def pool(
        self,
        audio_model: Any,
        video_model: Any,
        k: int = 1,
        guide: Guide | None = None,
        task: str = "joint",
        **kwargs: Any,
    ) -> Pool:
        sampling = self.settings.sampling()
        if guide is not None:
            sampling = self.settings.sampling(guide.scales[task], guide.window)
            kwargs["discriminator"] = guide.discriminator
        return sample_pool(
            audio_model,
            video_model,
            k,
            self.eval_seed,
            self.settings,
            sampling,
            self.progress,
            **kwargs,
        )

    def make_fakes(self, name: str, audio_model: Any, video_model: Any) -> None:
        """Independent-sampling fakes, cached in ``out`` (a resumed run keeps its first cost)."""
        s, directory = self.settings, self.out / f"fakes_{name}"
        record = directory / "cpu_seconds.json"
        start = time.process_time()
        generate_fakes(
            audio_model,
            video_model,
            s.n_fakes,
            directory,
            seed=s.seed,
            num_inference_steps=s.fake_steps,
            scheduler=s.scheduler,
            progress=self.progress,
        )
        if not record.exists():
            write_json_atomic(record, {"cpu_seconds": round(time.process_time() - start, 1)})
        self.fake_cpu_s[name] = json.loads(record.read_text())["cpu_seconds"]
        self.fakes[name] = fake_pairs(directory)

    def given_pool(
        self, task: str, guide: Guide | None = None, mode: str = "clean", model: Any = None
    ) -> Pool:
        """Generate the free modality of ``task`` for every held-out clip of the other;
        ``model`` replaces the free modality's base model (a cascade's conditional model)."""
        given_modality = "video" if task == "video-to-audio" else "audio"
        free = "audio" if given_modality == "video" else "video"
        models = {"audio": self.audio, "video": self.video}
        kwargs: dict[str, Any] = {
            "given": (given_modality, self.given[given_modality]),
            "given_mode": mode,
        }
        if model is not None:
            models[free] = model
            kwargs["model_cond"] = (free, self.given[given_modality])
        return self.pool(models["audio"], models["video"], guide=guide, task=task, **kwargs)


def run_systems(
    out: str | Path, settings: SystemsSettings | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the whole comparison into ``out`` (fakes and discriminators are cached there and
    resumed); returns the report, also written as report.json, report.md and systems.png."""
    settings = settings or SystemsSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    c = Comparison(out, settings, progress)
    c.make_fakes("independent", c.audio, c.video)
    c.make_fakes("joint", c.joint.audio, c.joint.video)

    independent = c.pool(c.audio, c.video, settings.candidates)
    c.add(
        "independent base models",
        "joint",
        independent.metrics(),
        parameters=0,
        train_cpu_s=0.0,
        sample_cpu_s_per_pair=independent.cpu_per_pair,
    )
    _conditional_baselines(c)
    _cascade_and_joint(c, independent)
    guides = [("exact ratio", exact_guide(c.audio, c.video))]
    for seed in settings.disc_seeds:
        guide = train_world_discriminator(
            c.audio,
            c.video,
            c.real,
            c.fakes["independent"],
            out / f"disc_{seed}",
            seed=seed,
            clean_prob=settings.clean_prob,
            quick=settings.quick,
            progress=progress,
        )
        guide.train_cpu_s = round(guide.train_cpu_s + c.fake_cpu_s["independent"], 1)
        guides.append(("MMDisCo", guide))
        _joint_plus_mmdisco(c, seed)
    for label, guide in guides:
        _guided_rows(c, label, guide, independent)

    report = {
        "rows": [r.summary() for r in c.rows.values()],
        "curves": {
            name: {str(n): _mean_std(runs) for n, runs in sorted(by_n.items())}
            for name, by_n in c.curves.items()
        },
        "chance": chance_levels(),
        "settings": asdict(settings),
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - wall, 1),
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    figure(report, out / "systems.png")
    return report


def _conditional_baselines(c: Comparison) -> None:
    """Per task: the unguided base model (chance) and the cascade's conditional model."""
    for task in TASKS[1:]:
        pool = c.given_pool(task)
        c.add(
            f"{task}: unguided base model (chance)",
            task,
            pool.metrics(),
            parameters=0,
            train_cpu_s=0.0,
            sample_cpu_s_per_pair=pool.cpu_per_pair,
        )
        model = c.paired[task]
        pool = c.given_pool(task, model=model)
        c.add(
            f"{task}: cascade model",
            task,
            pool.metrics(),
            parameters=model.num_parameters(),
            train_cpu_s=model.config["training"].get("cpu_seconds"),
            sample_cpu_s_per_pair=pool.cpu_per_pair,
        )


def _cascade_and_joint(c: Comparison, independent: Pool) -> None:
    """T2V -> V2A from the independent pool's videos, and the joint model from scratch."""
    v2a = c.paired["video-to-audio"]
    video = independent.video[0]
    pool = c.pool(v2a, c.video, given=("video", video), model_cond=("audio", video))
    # Its cost: sampling the video (the unguided audio-to-video row samples video only) and then
    # the audio given it.
    chance_row = c.rows["audio-to-video: unguided base model (chance)"]
    video_only = chance_row.runs[0]["sample_cpu_s_per_pair"]
    c.add(
        "cascade T2V -> V2A",
        "joint",
        pool.metrics(),
        parameters=v2a.num_parameters(),
        train_cpu_s=v2a.config["training"].get("cpu_seconds"),
        sample_cpu_s_per_pair=pool.cpu_per_pair + video_only,
    )
    pool = c.pool(c.joint.audio, c.joint.video)
    c.add(
        "joint model from scratch",
        "joint",
        pool.metrics(),
        parameters=c.joint.num_parameters(),
        train_cpu_s=c.joint.config["training"].get("cpu_seconds"),
        sample_cpu_s_per_pair=pool.cpu_per_pair,
    )


def _joint_plus_mmdisco(c: Comparison, seed: int) -> None:
    """The in-domain setting: a discriminator trained on the joint model's samples as fakes."""
    s, joint = c.settings, c.joint
    guide = train_world_discriminator(
        joint.audio,
        joint.video,
        c.real,
        c.fakes["joint"],
        c.out / f"disc_joint_{seed}",
        seed=seed,
        clean_prob=0.0,
        fake_pairing="fixed",
        use_dlsm=False,  # the joint model's views denoise only together: no bank of them
        quick=s.quick,
        progress=c.progress,
    )
    pool = c.pool(joint.audio, joint.video, guide=guide)
    joint_cpu = joint.config["training"].get("cpu_seconds") or 0.0
    c.add(
        "joint model + MMDisCo",
        "joint",
        pool.metrics(),
        parameters=joint.num_parameters() + guide.parameters,
        train_cpu_s=round(joint_cpu + c.fake_cpu_s["joint"] + guide.train_cpu_s, 1),
        sample_cpu_s_per_pair=pool.cpu_per_pair,
    )


def _guided_rows(c: Comparison, label: str, guide: Guide, independent: Pool) -> None:
    """MMDisCo, its re-ranking, best-of-N and conditional generation for one guide."""
    s = c.settings
    suffix = ", exact ratio" if label == "exact ratio" else ""
    costs = {"parameters": guide.parameters, "train_cpu_s": guide.train_cpu_s}
    guided = c.pool(c.audio, c.video, s.candidates, guide=guide)
    c.add(
        f"MMDisCo{suffix}",
        "joint",
        guided.metrics(),
        sample_cpu_s_per_pair=guided.cpu_per_pair,
        **costs,
    )
    n = s.table_candidates
    for pool, name in ((guided, "MMDisCo + re-ranking"), (independent, "best-of-N")):
        logits, score_cpu = rank(guide, pool, c.audio, c.video)
        c.add(
            f"{name} (N={n}){suffix}",
            "joint",
            pool.metrics(select(logits, n)),
            sample_cpu_s_per_pair=n * (pool.cpu_per_pair + score_cpu),
            **costs,
        )
        for mode in ("argmax", "sir"):
            curve = c.curves.setdefault(f"{name}{suffix} ({mode})", {})
            for k in range(1, s.candidates + 1):
                gen = torch.Generator().manual_seed(derive_seed(s.seed, k))
                curve.setdefault(k, []).append(pool.metrics(select(logits, k, mode, gen)))
    for task in TASKS[1:]:
        for mode in ("clean", "renoise"):
            pool = c.given_pool(task, guide, mode)
            given = "clean" if mode == "clean" else "re-noised"
            c.add(
                f"{task}: MMDisCo{suffix}, given {given}",
                task,
                pool.metrics(),
                sample_cpu_s_per_pair=pool.cpu_per_pair,
                **costs,
            )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

TASK_TITLES = {
    "joint": "Joint generation",
    "video-to-audio": "Video-to-audio (given held-out real videos)",
    "audio-to-video": "Audio-to-video (given held-out real audio)",
}


def _cell(row: dict[str, Any], metric: str) -> str:
    if row["seeds"] > 1:
        return f"{row[metric]:.3f} ± {row[f'{metric}_std']:.3f}"
    return f"{row[metric]:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    seeds = len(s["disc_seeds"])
    lines = [
        "# Every system on the synthetic world, side by side",
        "",
        f"{s['n_eval']} pairs per row, the same evaluation seed for every row; ancestral "
        f"{s['scheduler'].upper()}, {s['sample_steps']} steps. Rows with a trained "
        f"discriminator: mean ± std over {seeds} discriminator seed(s). Chance: semantic "
        f"{report['chance']['semantic']:.3f}, temporal {report['chance']['temporal']:.3f}.",
        "",
    ]
    for task, title in TASK_TITLES.items():
        lines += [
            f"## {title}",
            "",
            "| method | semantic | temporal | validity (audio) | validity (video) | diversity "
            "| trainable parameters | training CPU-s | sampling CPU-s / pair |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in report["rows"] if r["task"] == task):
            name = row["name"].removeprefix(f"{task}: ")
            cells = [_cell(row, m) for m in METRICS]
            params = "-" if row["parameters"] is None else f"{row['parameters']:,}"
            train = "-" if row["train_cpu_s"] is None else f"{row['train_cpu_s']:.0f}"
            sample = row["sample_cpu_s_per_pair"]
            sample_cell = "-" if sample is None else f"{sample:.4f}"
            lines.append(f"| {name} | " + " | ".join([*cells, params, train, sample_cell]) + " |")
        lines.append("")
    lines += [
        "Training CPU-seconds count what each system trains on top of the frozen base models: "
        "MMDisCo, generating its fakes and training its discriminator; the cascade, its "
        "conditional model; the joint model, all of it. The exact ratio is an oracle (no "
        "training). Sampling CPU-seconds for best-of-N and re-ranking are N x (one sample + "
        "one discriminator score).",
        "",
        f"Total wall time: {report['seconds']:.0f} s on {report['torch_threads']} thread(s).",
        "",
        "Settings:",
        "",
        "```json",
        json.dumps(s, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def figure(report: dict[str, Any], path: Path) -> Path:
    """Semantic and temporal agreement of best-of-N and re-ranking against N (argmax solid,
    SIR dashed), with the cascade, the joint model and chance marked; and each joint-generation
    system's alignment against its training cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["name"]: r for r in report["rows"]}
    methods = sorted({name.rsplit(" (", 1)[0] for name in report["curves"]})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    for ax, metric in zip(axes[:2], ("semantic", "temporal"), strict=True):
        for name, curve in report["curves"].items():
            method, mode = name.rsplit(" (", 1)
            n = [int(k) for k in curve]
            ax.plot(
                n,
                [curve[k][metric] for k in curve],
                "--" if mode == "sir)" else "-",
                marker="o",
                ms=3,
                color=colours[method],
                label=method if mode == "argmax)" else None,
            )
        for name, colour in (("cascade T2V -> V2A", "k"), ("joint model from scratch", "grey")):
            if name in rows:
                ax.axhline(rows[name][metric], color=colour, ls=":", label=name)
        ax.axhline(report["chance"][metric], color="r", ls=":", lw=0.8, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N: base-model evaluations per kept pair, in sampling runs")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    ax = axes[2]
    for row in report["rows"]:  # the exact ratio is an oracle: no training cost to place
        if row["task"] == "joint" and "exact" not in row["name"]:
            score = (row["semantic"] + row["temporal"]) / 2
            ax.scatter(row["train_cpu_s"], score, s=18, label=row["name"])
    ax.legend(fontsize=7, loc="center right")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(-1, 1e4)
    ax.set_xlabel("training CPU-seconds on top of the frozen base models")
    ax.set_ylabel("(semantic + temporal) / 2, joint generation")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, path, dpi=90)
