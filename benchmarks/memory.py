"""Training memory of the text-to-AV preset, per pair, with and without each option.

One training step of ``configs/audioldm_animatediff.yaml``'s objective (L_D + L_DLSM with its
double backward, Adam, captions, CFG 2.5 / 7.5 in L_DLSM) with the real-size discriminator
(``DiscriminatorConfig.text_to_av``, 133M) and the real-size base models (AudioLDM-M's UNet,
AnimateDiff's UNetMotionModel: benchmarks/real_shapes.py) is run on the meta device
(:func:`mmdisco.training.memory.estimate_step_memory`): exact live-tensor bytes, no GPU, no
weights. Peak memory is affine in the micro-batch, so micro-batches of 1, 2 and 4 give the
cost per pair (the slope) and the fixed cost; the table extrapolates to the paper's batch of 32
and to the preset's 4 x 8.

bf16 autocast cannot run on the meta device. Its effect is measured for real on the CPU (CPU
autocast, the same tracker) on the same objective at the same latent shapes with the
discriminator's width cut from 256 to 64 channels (a 1/16 of the compute), and reported as
a ratio of per-pair activations.

    python benchmarks/memory.py            # full (about 5 minutes on a 2-core CPU)
    python benchmarks/memory.py --quick    # micro-batches 1 and 2, no bf16 ratio
    python benchmarks/memory.py --presets  # the 2025-26 presets (a few minutes)

Writes ``benchmarks/results/memory.{json,md}``. ``--presets`` estimates, the same way, one
training step of each 2025-26 preset (configs/{wan,wan22,hunyuan15}_stableaudio3.yaml,
ltx2_mmdisco.yaml) with its discriminator and its base models' transformers at real size in
bfloat16 (benchmarks/real_shapes_presets.py, random weights, on the meta device); it writes
memory_presets.json and adds its table to memory.md. Only the transformers are counted: the
text encoders that L_DLSM runs on each micro-batch's captions add their weights to the fixed
cost (Wan's UMT5-XXL encoder: 5.68B parameters, 10.6 GiB in bfloat16); the VAEs take no part
in a training step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from mmdisco.base_models.loading import ConfiguredModel
from mmdisco.discriminator import Discriminator, DiscriminatorConfig
from mmdisco.io import write_text_atomic
from mmdisco.training.memory import GIB, estimate_step_memory, prompt_conditioning
from mmdisco.training.trainer import TrainConfig

RESULTS = Path(__file__).parent / "results"
TEXT = {"text_audio": 512, "text_video": 768}
OPTIONS = {
    "float32": {},
    "gradient checkpointing": {"gradient_checkpointing": True},
}


def models(device: str = "meta") -> tuple[Any, Any, tuple[Any, Any]]:
    from real_shapes import base_models

    audio, video = base_models(torch.float16, device)  # the preset's torch_dtype
    wrapped = ConfiguredModel(audio, 2.5), ConfiguredModel(video, 7.5)
    return (*wrapped, prompt_conditioning(wrapped))


def discriminator(channels: int = 256, device: str = "meta") -> Discriminator:
    torch.manual_seed(0)
    with torch.device(device):
        return Discriminator(DiscriminatorConfig.text_to_av(channels=channels))


def step_peak(micro: int, with_bases: bool, **options: Any) -> Any:
    if with_bases:
        audio, video, conds = models()
    else:
        from real_shapes import AUDIO_SHAPE, VIDEO_SHAPE, UNetBase

        audio, video, conds = _stand_ins(UNetBase, AUDIO_SHAPE, VIDEO_SHAPE)
    config = TrainConfig(batch_size=micro, **options)
    return estimate_step_memory(discriminator(), audio, video, config, TEXT, conds)


def _stand_ins(
    cls: Any, a_shape: tuple[int, ...], v_shape: tuple[int, ...], device: str = "meta"
) -> Any:
    """Base models whose prediction costs nothing: the discriminator's share alone."""

    class Free(cls):
        def __init__(self, modality: str, shape: tuple[int, ...]) -> None:
            self.modality, self.shape = modality, shape
            self.scheduler_config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}
            self.unet = torch.nn.Linear(1, 1, device=device)

        def predict(self, x_t: Any, t: Any, cond: Any = None) -> Any:
            return x_t

    audio, video = Free("audio", a_shape), Free("video", v_shape)
    return audio, video, prompt_conditioning((audio, video))


def bf16_ratio(channels: int = 64) -> dict[str, float]:
    """Per-pair activations under CPU bf16 autocast / float32, measured on real tensors."""
    from real_shapes import AUDIO_SHAPE, VIDEO_SHAPE, UNetBase

    out = {}
    for precision in ("no", "bf16"):
        peaks = []
        for micro in (1, 2):
            audio, video, conds = _stand_ins(UNetBase, AUDIO_SHAPE, VIDEO_SHAPE, "cpu")
            config = TrainConfig(batch_size=micro, mixed_precision=precision)
            disc = discriminator(channels, "cpu")
            peaks.append(
                estimate_step_memory(disc, audio, video, config, TEXT, conds, "cpu", 1).peak
            )
        out[precision] = peaks[1] - peaks[0]
    return {"channels": channels, **out, "ratio": out["bf16"] / out["no"]}


GPU_BYTES = 80e9  # "80 GB": an A100/H100 80GB holds 80e9 bytes (74.5 GiB)


def preset_peaks(name: str) -> dict[str, Any]:
    """Peak memory of one training step of preset ``name`` at two micro-batches (1 and 2
    pairs, or 1 and 2 contrastive groups), on the meta device, and the largest micro-batch
    under :data:`GPU_BYTES`; for a preset that ends with the hard-negative refinement, also
    its step's (each group with its pool of candidates), and the micro-batch both fit."""
    from mmdisco.config import load_experiment
    from mmdisco.discriminator import build_discriminator, text_dims
    from real_shapes_presets import CONFIGS, base_models, flash_attention_memory, meta_counting

    cfg = load_experiment(CONFIGS / f"{name}.yaml")
    audio, video = base_models(name)
    config = cfg.discriminator_config_for(audio, video)
    with torch.device("meta"):
        disc = build_discriminator(config)
    wrapped = (
        ConfiguredModel(audio, cfg.audio.cfg_scale),
        ConfiguredModel(video, cfg.video.cfg_scale),
    )
    conds = prompt_conditioning(wrapped)
    keys = ("text_audio", "text_video")
    text = {k: d for k, d in zip(keys, text_dims(config), strict=True) if d}
    train = cfg.train_config()
    unit = train.group_size if train.objective == "infonce" else 1
    micros = (unit, 2 * unit)
    phases = (False, True) if train.refine_steps else (False,)
    peaks = {}
    with meta_counting(), flash_attention_memory():
        for refine in phases:
            for m in micros:
                step = TrainConfig(
                    batch_size=m,
                    use_dlsm=train.use_dlsm,
                    dlsm_weight=train.dlsm_weight,
                    objective=train.objective,
                    group_size=train.group_size,
                    refine_steps=train.refine_steps,
                    refine_pool=train.refine_pool,
                )
                peaks[refine, m] = estimate_step_memory(
                    disc, *wrapped, step, text, conds, refine=refine
                )
    lines = {}
    for refine in phases:
        low, high = peaks[refine, micros[0]].peak, peaks[refine, micros[-1]].peak
        slope = (high - low) / (micros[-1] - micros[0])
        lines[refine] = (slope, low - micros[0] * slope)
    fits = min(int((GPU_BYTES - fixed) // slope) for slope, fixed in lines.values())
    slope, fixed = lines[False]
    refinement = {}
    if train.refine_steps:
        refine_slope, refine_fixed = lines[True]
        refinement = {
            "refine_per_pair_gib": refine_slope / GIB,
            "refine_fixed_gib": refine_fixed / GIB,
            "refine_pool": train.refine_pool,
        }
    return {
        "per_pair_gib": slope / GIB,
        "fixed_gib": fixed / GIB,
        "base_models_gib": peaks[False, micros[0]].base_models / GIB,
        "discriminator_parameters": sum(p.numel() for p in disc.parameters()),
        "use_dlsm": train.use_dlsm,
        "objective": train.objective,
        "measured_gib": {m: peaks[False, m].peak / GIB for m in micros},
        "micro_batch_80gb": fits // unit * unit,  # whole groups, both phases
        "preset_micro_batch": train.batch_size // train.grad_accum,
        **refinement,
    }


def render_presets(r: dict[str, Any]) -> str:
    lines = [
        "",
        "## The 2025-26 presets",
        "",
        "One training step of each preset (its discriminator and objective: L_D as binary "
        "cross-entropy or contrastive groups, plus L_DLSM with CFG where the preset keeps it; "
        "the optimiser's two moments) with its base models' transformers at real size "
        "in bfloat16, random weights, on the meta device as above (`python benchmarks/"
        "memory.py --presets`), attention held as a fused kernel holds it (its output; the "
        "meta device's math fallback would hold every score matrix). Peak per device; slope "
        "over two micro-batches (1 and 2 pairs, or 1 and 2 contrastive groups). Fits: the "
        "largest micro-batch under 80 GB (80e9 bytes, "
        "before the CUDA context). Only the base models' transformers are counted: the text "
        "encoders that L_DLSM runs on the captions add their weights to the fixed cost (Wan's "
        "UMT5-XXL encoder 10.6 GiB in bfloat16; Stable Audio 3's T5Gemma and HunyuanVideo "
        "1.5's Qwen2.5-VL likewise, not measured here), so the fitting micro-batch is an "
        "upper bound. A preset without L_DLSM runs no base model while training. A preset "
        "that ends with the hard-negative refinement has a second step to fit: each group of "
        "real pairs with its pool of candidate fakes (`train.refine_pool`) and a frozen copy "
        "of the discriminator; its cost per real pair is the refinement column, and the "
        "micro-batch that fits is the one both steps fit.",
        "",
        "| preset | base weights | discriminator | objective | L_DLSM | per pair | per pair, "
        "refinement | fixed | peak, smallest micro-batch | micro-batch that fits 80 GB "
        "| preset's micro-batch |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["presets"].items():
        smallest, peak = next(iter(row["measured_gib"].items()))
        lines.append(
            f"| {name} | {row['base_models_gib']:.1f} GiB "
            f"| {row['discriminator_parameters'] / 1e6:.1f}M "
            f"| {row.get('objective', 'bce')} | {'yes' if row['use_dlsm'] else 'no'} "
            f"| {row['per_pair_gib']:.2f} GiB "
            + (
                f"| {row['refine_per_pair_gib']:.2f} GiB (pool {row['refine_pool']}) "
                if "refine_per_pair_gib" in row
                else "| - "
            )
            + f"| {row['fixed_gib']:.1f} GiB "
            f"| {peak:.1f} GiB ({smallest}) | {row['micro_batch_80gb']} "
            f"| {row['preset_micro_batch']} |"
        )
    lines.append("")
    return "\n".join(lines)


def presets(args: argparse.Namespace) -> dict[str, Any]:
    from real_shapes_presets import PRESETS

    start = time.perf_counter()
    result = {"presets": {name: preset_peaks(name) for name in PRESETS}}
    result = json.loads(json.dumps(result))  # micro-batch keys as JSON has them
    result["seconds"] = time.perf_counter() - start
    write_text_atomic(args.out_dir / "memory_presets.json", json.dumps(result, indent=2) + "\n")
    base = json.loads((args.out_dir / "memory.json").read_text())
    write_text_atomic(args.out_dir / "memory.md", render(base) + render_presets(result))
    print(render_presets(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--presets", action="store_true", help="the 2025-26 presets")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.presets:
        return presets(args)
    micros = (1, 2) if args.quick else (1, 2, 4)
    start = time.perf_counter()
    rows = {}
    for name, options in OPTIONS.items():
        peaks = {m: step_peak(m, True, **options) for m in micros}
        slope = (peaks[micros[-1]].peak - peaks[1].peak) / (micros[-1] - 1)
        fixed = peaks[1].peak - slope
        disc_only = step_peak(1, False, **options)
        rows[name] = {
            "per_pair_gib": slope / GIB,
            "fixed_gib": fixed / GIB,
            "base_models_gib": peaks[1].base_models / GIB,
            "discriminator_and_adam_gib": (peaks[1].discriminator + peaks[1].optimizer) / GIB,
            "peak_micro_8_gib": (fixed + 8 * slope) / GIB,
            "peak_batch_32_gib": (fixed + 32 * slope) / GIB,
            "peak_micro_1_without_base_models_gib": disc_only.peak / GIB,
            "measured": {m: peaks[m].peak / GIB for m in micros},
        }
    result = {"options": rows, "micro_batches": list(micros), "quick": args.quick}
    if not args.quick:
        result["bf16"] = bf16_ratio()
    result["seconds"] = time.perf_counter() - start
    write_text_atomic(args.out_dir / "memory.json", json.dumps(result, indent=2) + "\n")
    extra = args.out_dir / "memory_presets.json"
    tail = render_presets(json.loads(extra.read_text())) if extra.is_file() else ""
    write_text_atomic(args.out_dir / "memory.md", render(result) + tail)
    print(render(result))
    return result


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Training memory of the text-to-AV preset",
        "",
        "One step of `configs/audioldm_animatediff.yaml`'s objective (L_D + L_DLSM, Adam, "
        "captions, CFG in L_DLSM) with the real-size discriminator (133M) and base models "
        "(AudioLDM-M 416M + AnimateDiff 1.31B, float16), measured on the meta device "
        "(live tensor bytes: a CPU step's peak RSS measured 1.05-1.12x this; on a GPU add the "
        "CUDA context and allocator fragmentation). Real and fake pairs: the micro-batch "
        f"counts each. Slope over micro-batches {r['micro_batches']}.",
        "",
        "| option | per pair | fixed | peak, micro-batch 8 (preset: 4 x 8) | peak, batch 32 at "
        "once | discriminator alone, 1 pair |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["options"].items():
        lines.append(
            f"| {name} | {row['per_pair_gib']:.2f} GiB | {row['fixed_gib']:.2f} GiB "
            f"| {row['peak_micro_8_gib']:.1f} GiB | {row['peak_batch_32_gib']:.1f} GiB "
            f"| {row['peak_micro_1_without_base_models_gib']:.2f} GiB |"
        )
    base = next(iter(r["options"].values()))
    lines += [
        "",
        f"Fixed cost: base models' weights {base['base_models_gib']:.2f} GiB, discriminator "
        f"weights and Adam state {base['discriminator_and_adam_gib']:.2f} GiB, plus one "
        "micro-batch's base-model forward.",
    ]
    if "bf16" in r:
        b = r["bf16"]
        lines += [
            "",
            f"bf16 autocast (measured on the CPU, real tensors, discriminator width "
            f"{b['channels']} instead of 256, same shapes): per-pair activations "
            f"{b['bf16'] / GIB:.3f} vs {b['no'] / GIB:.3f} GiB in float32, ratio "
            f"**{b['ratio']:.2f}** (GroupNorm and the FiLM arithmetic stay float32 under "
            "autocast, so activations shrink by less than half).",
        ]
    lines += ["", f"{r['seconds']:.0f} s{' (--quick)' if r['quick'] else ''}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
