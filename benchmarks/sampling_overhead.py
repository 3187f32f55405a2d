"""How much does MMDisCo guidance cost at sampling time? (paper Tables 11-12: 10-22 %).

Two randomly initialised diffusers UNets stand in for the base models (their weights do not
change the cost): a frame-wise ``UNet2DModel`` on video latents ``(C, F, H, W)`` and a
``UNet2DModel`` on a ``(1, T, F)`` spectrogram. The discriminator is ``mmdisco.Discriminator``
sized to about a tenth of the two base models' parameters. Guided and unguided
``joint_sample`` runs use the same seeds, are interleaved (so drifts in machine load hit both
alike) and repeated; the overhead is the ratio of the medians.

    python benchmarks/sampling_overhead.py            # full run (a few minutes on a CPU)
    python benchmarks/sampling_overhead.py --quick    # smoke run (well under a minute)

Writes ``benchmarks/results/sampling_overhead.{json,md}`` (atomic writes).

``--real-shapes`` measures instead the text-to-AV preset as configured: AudioLDM-M's and
AnimateDiff's real-size UNets (random weights, half precision: bfloat16 on a CPU, the preset's
float16 on a GPU; benchmarks/real_shapes.py) at the preset's latent shapes with CFG 2.5 / 7.5,
DDPM, the preset's discriminator (``text_to_av``, 133M, float32) and the reference release's
(128 channels), both with CFG on their term. A CPU runs one denoising step of each variant in
one process (interleaved); the step ratio then gives the 50-step ratio for any guidance window
(the base models' cost per step is constant, and so is the guidance's on a guided step).
Writes ``sampling_overhead_real.{json,md}``.

``--real-shapes --presets`` adds a row per 2025-26 preset (configs/wan_stableaudio3.yaml,
wan22_stableaudio3, hunyuan15_stableaudio3, ltx2_mmdisco; benchmarks/real_shapes_presets.py):
their 1.3B-19B denoisers at real shapes do not run on a CPU, so there one step of each is
counted in FLOPs on the meta device (every base-model pass with CFG, and the discriminator's
forward and input-gradient twice, CFG on its term); on a GPU it is timed in bfloat16. Writes
``sampling_overhead_presets.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmdisco import Discriminator
from mmdisco.base_models.base import BaseModel
from mmdisco.sampling import Stream, joint_sample

RESULTS = Path(__file__).parent / "results"


class SpectrogramUNet(BaseModel):
    """An image UNet on a ``(1, T, F)`` spectrogram: the audio base model."""

    modality = "audio"

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any]) -> None:
        self.unet, self.scheduler_config = unet, scheduler_config

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.unet(x_t, t).sample

    def latent_shape(self) -> tuple[int, ...]:
        return (self.unet.config.in_channels, *self.unet.config.sample_size)


class FrameUNet(BaseModel):
    """An image UNet applied to every frame of ``(C, F, H, W)`` latents: the video base model."""

    modality = "video"

    def __init__(self, unet: UNet2DModel, frames: int, scheduler_config: dict[str, Any]) -> None:
        self.unet, self.frames, self.scheduler_config = unet, frames, scheduler_config

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        b, c, f, h, w = x_t.shape
        frames = x_t.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(b).repeat_interleave(f)
        out = self.unet(frames, t).sample
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

    def latent_shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, self.frames, size, size)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unet(sample_size: Any, channels: int, seed: int) -> UNet2DModel:
    """A DDPM-style UNet: three levels (64, 128, 256 wide), two blocks per level, self-attention
    on the two coarser levels (as latent-diffusion UNets have)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
    )


AUDIO_SHAPE = (8, 32, 16)  # (C, T, F): an AudioLDM-like spectrogram latent
VIDEO_SHAPE = (4, 8, 16, 16)  # (C, F, H, W): video latents
DISC_SETTINGS = {
    # Narrow at full resolution, wide where the maps are small, wide fusion on pooled tokens:
    # parameters are put where they cost little compute (cost follows FLOPs, not parameters).
    "channels": 8,
    "channel_mult": (1, 4, 8, 16, 32),
    "fusion_width": 512,
    "norm_groups": 8,
}


def build(device: torch.device) -> tuple[BaseModel, BaseModel, nn.Module]:
    """Base models in the shape of a small latent text-to-AV setup, and the discriminator."""
    config = dict(DDPMScheduler(num_train_timesteps=1000).config, _class_name="DDPMScheduler")
    audio = SpectrogramUNet(_unet(AUDIO_SHAPE[1:], AUDIO_SHAPE[0], seed=0), config)
    video_unet = _unet(VIDEO_SHAPE[2], VIDEO_SHAPE[0], seed=1)
    video = FrameUNet(video_unet, frames=VIDEO_SHAPE[1], scheduler_config=config)
    for model in (audio, video):
        model.unet.to(device).eval().requires_grad_(False)
    torch.manual_seed(2)
    disc = Discriminator.for_shapes(audio.latent_shape(), video.latent_shape(), **DISC_SETTINGS)
    return audio, video, disc.to(device).eval().requires_grad_(False)


def _time_run(
    audio: BaseModel, video: BaseModel, disc: nn.Module | None, args: argparse.Namespace
) -> tuple[float, float]:
    """Wall and process-CPU seconds of one ``joint_sample`` call (same seeds every call)."""
    device = torch.device(args.device)
    streams = [
        Stream(model, DDPMScheduler.from_config(model.scheduler_config), generator=g)
        for model, g in ((audio, torch.Generator(device)), (video, torch.Generator(device)))
    ]
    streams[0].generator.manual_seed(0)
    streams[1].generator.manual_seed(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    joint_sample(
        *streams, disc, batch_size=args.batch, num_inference_steps=args.steps, progress=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def summarise(times: dict[str, list[float]]) -> dict[str, float]:
    """Ratio of the medians, and the median of the per-repeat (paired) ratios."""
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [g / u for g, u in zip(times["guided"], times["unguided"], strict=True)]
    return {
        "unguided_median": med["unguided"],
        "guided_median": med["guided"],
        "ratio": med["guided"] / med["unguided"],
        "paired_ratio_median": statistics.median(paired),
    }


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if os.path.exists("/proc/loadavg"):
        info["load_average_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are ordinary repository files
    os.replace(tmp, path)


def render_markdown(r: dict[str, Any]) -> str:
    p, w, c = r["params"], r["wall_seconds"], r["cpu_seconds"]
    m = r["machine"]
    return "\n".join(
        [
            "# MMDisCo sampling overhead",
            "",
            f"Guided / unguided wall time (ratio of medians): **{r['ratio']:.3f}** "
            f"(overhead {100 * (r['ratio'] - 1):.1f} %; target < 15 %; paper: 10-22 %).",
            "",
            "| | unguided median | guided median | ratio of medians | median paired ratio |",
            "|---|---:|---:|---:|---:|",
            f"| wall time | {w['unguided_median']:.3f} s | {w['guided_median']:.3f} s "
            f"| {w['ratio']:.3f} | {w['paired_ratio_median']:.3f} |",
            f"| process CPU time | {c['unguided_median']:.3f} s | {c['guided_median']:.3f} s "
            f"| {c['ratio']:.3f} | {c['paired_ratio_median']:.3f} |",
            "",
            "On a shared CPU, wall time includes waiting for other processes; process CPU time "
            "(one torch thread) measures the work itself and is the steadier figure there.",
            "",
            "| model | parameters |",
            "|---|---:|",
            f"| audio base (UNet2DModel, {r['audio_shape']} spectrogram latents) "
            f"| {p['audio_base']:,} |",
            f"| video base (frame-wise UNet2DModel, {r['video_shape']} latents) "
            f"| {p['video_base']:,} |",
            f"| discriminator (mmdisco.Discriminator, {r['discriminator_settings']}) "
            f"| {p['discriminator']:,} ({100 * p['discriminator_fraction']:.1f} % of the bases) |",
            "",
            f"{r['steps']} DDPM steps, batch {r['batch']}, {r['repeats']} interleaved repeats"
            f"{' (--quick)' if r['quick'] else ''}.",
            "",
            f"Machine: {m['device']} ({m['cpu']}), {m['cpu_count']} CPUs, "
            f"{m['torch_threads']} torch threads, torch {m['torch']}, {m['platform']}, "
            f"load average at start {m.get('load_average_at_start')}.",
            "",
        ]
    )


def real_shapes(args: argparse.Namespace) -> dict[str, Any]:
    """One run: unguided, our discriminator and the release's, ``args.steps`` steps each."""
    from diffusers import DDPMScheduler as DDPM

    from mmdisco.discriminator import DiscriminatorConfig
    from mmdisco.discriminator.official import RELEASES, OfficialDiscriminator
    from mmdisco.sampling import GuidanceOptions
    from real_shapes import base_models

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    audio, video = base_models(dtype, device)
    torch.manual_seed(2)
    ours = Discriminator(DiscriminatorConfig.text_to_av()).to(device).eval()
    torch.manual_seed(3)
    release = OfficialDiscriminator(RELEASES["audioldm_animediff_vggsound"]).to(device).eval()
    b = args.batch

    def run(disc: nn.Module | None) -> tuple[float, float]:
        streams = []
        for k, (model, cfg) in enumerate(((audio, 2.5), (video, 7.5))):
            cond, uncond = model.encode_prompt(["x"] * b), model.encode_prompt([""] * b)
            text = uncond_text = None
            if isinstance(disc, OfficialDiscriminator):  # the release: the denoiser's tokens
                text, uncond_text = cond.float(), uncond.float()
            elif disc is not None:  # ours: pooled text, its learned null when unconditional
                text = model.pooled_text_embedding(cond)
            generator = torch.Generator(device).manual_seed(k)
            scheduler = DDPM.from_config(model.scheduler_config)
            streams.append(
                Stream(model, scheduler, cond, uncond, cfg, 1.0, generator, None, text, uncond_text)
            )
        options = GuidanceOptions(cfg_on_discriminator=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        joint_sample(*streams, disc, batch_size=b, num_inference_steps=args.steps,
                     options=options, progress=False)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    variants = {"unguided": None, "ours": ours, "release": release}
    times = {k: [] for k in variants}
    for i in tqdm(range(args.repeats), desc="repeats"):
        for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
            times[name].append(run(variants[name]))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    scheduler = DDPM.from_config(audio.scheduler_config)
    scheduler.set_timesteps(50)
    levels = [float(t) / 1000 for t in scheduler.timesteps]
    windows = {}
    for lo, hi in ((0.0, 1.0), (0.5, 1.0), (0.8, 1.0)):
        share = sum(lo <= x <= hi for x in levels) / len(levels)
        windows[f"{lo}-{hi}"] = {
            "guided_share": share,
            **{name: 1 + share * (cpu[name] / cpu["unguided"] - 1) for name in ("ours", "release")},
        }
    return {
        "per_step": {"wall": wall, "cpu": cpu},
        "step_ratio_cpu": {k: cpu[k] / cpu["unguided"] for k in ("ours", "release")},
        "step_ratio_wall": {k: wall[k] / wall["unguided"] for k in ("ours", "release")},
        "windows_50_steps": windows,
        "params": {
            "audio_base": n_params(audio.unet),
            "video_base": n_params(video.unet),
            "ours": n_params(ours),
            "release": n_params(release),
        },
        "steps": args.steps,
        "batch": b,
        "repeats": args.repeats,
        "base_dtype": str(dtype),
        "machine": machine_info(device),
    }


def render_real(r: dict[str, Any]) -> str:
    p, m = r["params"], r["machine"]
    wall, cpu = r["per_step"]["wall"], r["per_step"]["cpu"]
    lines = [
        "# MMDisCo sampling overhead at the text-to-AV preset's real shapes",
        "",
        f"Base models at real size, random weights, {r['base_dtype']}: AudioLDM-M UNet "
        f"({p['audio_base'] / 1e6:.0f}M, latents 8 x 50 x 16, CFG 2.5) and AnimateDiff "
        f"({p['video_base'] / 1e6:.0f}M, latents 4 x 16 x 32 x 32, CFG 7.5); DDPM; batch "
        f"{r['batch']}; CFG on the discriminator term (as the presets). Discriminators in "
        f"float32: the preset's `text_to_av` ({p['ours'] / 1e6:.0f}M) and the release's "
        f"({p['release'] / 1e6:.0f}M).",
        "",
        f"Measured: {r['steps']} denoising step(s) of each variant, {r['repeats']} "
        "interleaved repeat(s), in one process.",
        "",
        "| variant | wall / step | CPU time / step | guided / unguided (CPU time) |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (("unguided", "unguided"), ("ours", "text_to_av"), ("release", "release")):
        ratio = cpu[name] / cpu["unguided"]
        lines.append(
            f"| {label} | {wall[name] / r['steps']:.1f} s | {cpu[name] / r['steps']:.1f} s "
            f"| {ratio:.3f} |"
        )
    lines += [
        "",
        "50 DDPM steps (the preset), from the measured per-step costs:",
        "",
        "| guidance window (t/T) | share of steps guided | text_to_av | release |",
        "|---|---:|---:|---:|",
    ]
    for window, w in r["windows_50_steps"].items():
        lines.append(
            f"| {window} | {w['guided_share']:.2f} | {w['ours']:.3f} | {w['release']:.3f} |"
        )
    lines += [
        "",
        f"Machine: {m['device']} ({m['cpu']}), {m['cpu_count']} CPUs, {m['torch_threads']} "
        f"torch threads, torch {m['torch']}, load average at start "
        f"{m.get('load_average_at_start')}.",
        "",
    ]
    return "\n".join(lines)


def preset_rows(args: argparse.Namespace) -> dict[str, Any]:
    """One step of each 2025-26 preset, unguided and guided, counted or timed in one process."""
    from real_shapes_presets import PRESETS, preset_step_cost

    device = "meta" if args.device == "cpu" else args.device
    rows = {name: preset_step_cost(name, device) for name in PRESETS}
    result = {"rows": rows, "device": device, "machine": machine_info(torch.device("cpu"))}
    _atomic_write(args.out_dir / "sampling_overhead_presets.json", json.dumps(result, indent=2))
    _atomic_write(args.out_dir / "sampling_overhead_presets.md", render_presets(result))
    print(render_presets(result))
    return result


def render_presets(r: dict[str, Any]) -> str:
    counted = r["device"] == "meta"
    unit = "TFLOP" if counted else "s"
    scale = 1e12 if counted else 1.0
    lines = [
        "# MMDisCo guided-step cost of the 2025-26 presets at their real shapes",
        "",
        (
            "Counted, not timed: FLOPs of one sampling step (batch 1) on the meta device "
            "(matmuls, convolutions and attention by torch.utils.flop_counter's formulas), "
            "base models at their real size and shapes with random weights, the discriminator "
            "as each preset configures it. A GPU run (`--device cuda`) times the same passes "
            "in bfloat16 instead."
            if counted
            else f"Timed on {r['device']} in bfloat16 (base models) / float32 (discriminator)."
        ),
        "Unguided: every base-model pass of the step (two with CFG; LTX-2: conditional, "
        "unconditional, STG and modality-isolated). Guided adds the discriminator's forward "
        "and input-gradient: twice where the preset puts CFG on the term of a discriminator "
        "that reads text (LTX-2's), once for the shared-latent network, which reads none.",
        "",
        "| preset | latents (audio; video) | base models | unguided step | discriminator "
        "| its term | guided / unguided |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["rows"].items():
        shapes = row["shapes"]
        lines.append(
            f"| {name} | {tuple(shapes['audio'])}; {tuple(shapes['video'])} "
            f"| {row['base_parameters'] / 1e9:.2f}B | {row['unguided'] / scale:.1f} {unit} "
            f"| {row['discriminator_parameters'] / 1e6:.1f}M "
            f"| {row['discriminator_term'] / scale:.2f} {unit} | {row['ratio']:.4f} |"
        )
    if counted:
        margin = min(0.10 / (row["ratio"] - 1) for row in r["rows"].values())
        lines += [
            "",
            "A FLOP ratio is not a time ratio: the discriminator's 3-D convolutions run at a "
            "lower fraction of a GPU's peak than the transformers' matmuls, so its share of the "
            "time is larger than its share of the FLOPs. A guided step would reach 1.10x only "
            f"if the discriminator ran {margin:.0f}x less efficiently than the base models "
            "(the tightest preset).",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and repeats (smoke run)")
    parser.add_argument(
        "--real-shapes", action="store_true", help="the text-to-AV preset's real-size models"
    )
    parser.add_argument(
        "--presets", action="store_true", help="with --real-shapes: a row per 2025-26 preset"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is stable on busy machines)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.real_shapes and args.presets:
        return preset_rows(args)
    if args.real_shapes:
        args.batch = 1 if args.batch == 2 else args.batch
        args.steps, args.repeats = args.steps or 1, args.repeats or 1
        result = real_shapes(args)
        _atomic_write(args.out_dir / "sampling_overhead_real.json", json.dumps(result, indent=2))
        _atomic_write(args.out_dir / "sampling_overhead_real.md", render_real(result))
        print(render_real(result))
        return result
    args.steps = args.steps or (4 if args.quick else 20)
    args.repeats = args.repeats or (2 if args.quick else 5)
    device = torch.device(args.device)

    audio, video, disc = build(device)
    params = {
        "audio_base": n_params(audio.unet),
        "video_base": n_params(video.unet),
        "discriminator": n_params(disc),
    }
    params["discriminator_fraction"] = params["discriminator"] / (
        params["audio_base"] + params["video_base"]
    )
    info = machine_info(device)
    _time_run(audio, video, disc, argparse.Namespace(**{**vars(args), "steps": 2}))  # warm-up
    wall: dict[str, list[float]] = {"unguided": [], "guided": []}
    cpu: dict[str, list[float]] = {"unguided": [], "guided": []}
    for i in tqdm(range(args.repeats), desc="repeats"):
        order = ("unguided", "guided") if i % 2 == 0 else ("guided", "unguided")
        for kind in order:
            w, c = _time_run(audio, video, disc if kind == "guided" else None, args)
            wall[kind].append(w)
            cpu[kind].append(c)
    result = {
        "ratio": summarise(wall)["ratio"],
        "params": params,
        "audio_shape": list(AUDIO_SHAPE),
        "video_shape": list(VIDEO_SHAPE),
        "discriminator_settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in DISC_SETTINGS.items()
        },
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "quick": args.quick,
        "wall_seconds": {**wall, **summarise(wall)},
        "cpu_seconds": {**cpu, **summarise(cpu)},
        "machine": info,
    }
    _atomic_write(args.out_dir / "sampling_overhead.json", json.dumps(result, indent=2) + "\n")
    _atomic_write(args.out_dir / "sampling_overhead.md", render_markdown(result))
    print(render_markdown(result))
    return result


if __name__ == "__main__":
    main()
