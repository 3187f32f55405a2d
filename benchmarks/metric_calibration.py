"""Do the sync metrics rank known offsets correctly? Calibration on the synthetic world.

Real pairs of the world (``mmdisco.world``: 16 frames of 16x16 at 8 fps, 2 s of 16 kHz audio,
a square bouncing with an impact sound at each contact; only clips whose impacts stay inside
the detectable frames under every shift) are perturbed where the truth is known: the audio
is delayed (+) or advanced (-) by 0, 1, 2 and 4 frames (zero-filled), or its class is
swapped (same impact times, the next class's pitch), or every impact is doubled 80 ms
later (a second onset inside one video frame: the case where the 2023 script counts one
video peak twice). For each condition we report the mean
over clips (with its standard error) of

* AV-Align, the 2023-10-26 and the 2025-02-13 script (MMDisCo's 96 ms onset interval);
* the world's exact temporal and semantic scores (``mmdisco.world.evaluate``);
* the ImageBind AV score, only with real weights (``--imagebind-weights``; random weights
  would be meaningless);
* DeSync, only with Synchformer weights (``--sync-weights synchformer.safetensors`` from
  ``mmdisco convert synchformer``, or another network with ``--sync-model module:factory``);
  its 4.8 s window needs longer clips, so those conditions use a 40-frame (5 s) world.

A metric ranks offsets correctly when its mean falls as |offset| grows: we report Spearman's
rank correlation between |offset| and the per-condition mean (-1: perfect) and whether the
mean at 0 beats every nonzero offset.

    python benchmarks/metric_calibration.py            # full run (64 clips, a few minutes)
    python benchmarks/metric_calibration.py --quick    # smoke run (4 clips)

Writes ``benchmarks/results/metric_calibration.{json,md,png}`` (atomic writes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from mmdisco.io import save_figure, write_json_atomic, write_text_atomic
from mmdisco.media import to_uint8_frames
from mmdisco.metrics.av_align import (
    AVAlignConfig,
    av_align_iou,
    detect_audio_peaks,
    flow_trajectory,
    trajectory_peaks,
)
from mmdisco.metrics.base import AudioClip, VideoClip
from mmdisco.world import Clips, WorldConfig, evaluate, generate_clips
from mmdisco.world.generator import render_audio

RESULTS = Path(__file__).parent / "results"
OFFSETS = (-4, -2, -1, 0, 1, 2, 4)
AV_ALIGN = {
    "av_align_2023": AVAlignConfig.version("2023-10-26", min_onset_spacing=0.096),
    "av_align_2025": AVAlignConfig.version("2025-02-13", min_onset_spacing=0.096),
    "av_align_2023_32ms": AVAlignConfig.version("2023-10-26", min_onset_spacing=0.032),
}


def shift_audio(audio: torch.Tensor, frames: int, config: WorldConfig) -> torch.Tensor:
    """(N, L) audio delayed by ``frames`` video frames (advanced if negative), zero-filled."""
    samples = round(frames * config.sample_rate / config.fps)
    out = torch.zeros_like(audio)
    if samples >= 0:
        out[:, samples:] = audio[:, : audio.shape[1] - samples]
    else:
        out[:, :samples] = audio[:, -samples:]
    return out


def inner_clips(n: int, seed: int, config: WorldConfig, margin: int):
    """The first ``n`` world clips whose events stay in the detectable frames
    [1, F - 2] under every shift of up to ``margin`` frames, so an offset changes the timing
    and never the world's validity (the truth stays known)."""
    pool = generate_clips(20 * n + 64, seed, config)  # about 9 % qualify at a 4-frame margin
    lo, hi = 1 + margin, config.num_frames - 2 - margin
    keep = ((pool.events >= lo) & (pool.events <= hi)).all(dim=1).nonzero().flatten()[:n]
    if len(keep) < n:
        raise ValueError(f"only {len(keep)} of {len(pool)} clips have events in [{lo}, {hi}]")
    fields = ("video", "audio", "classes", "events", "positions")
    return Clips(**{f: getattr(pool, f)[keep] for f in fields})


def conditions(clips, config: WorldConfig, offsets) -> dict[str, torch.Tensor]:
    """Condition name -> the (N, L) audio paired with the unchanged videos."""
    out = {f"offset {k:+d}": shift_audio(clips.audio, k, config) for k in offsets}
    swapped = (clips.classes + 1) % config.num_classes
    out["class swap"] = render_audio(swapped, clips.events, config)
    echo = round(0.08 * config.sample_rate)  # every impact heard twice, 80 ms apart
    flam = clips.audio.clone()
    flam[:, echo:] += clips.audio[:, :-echo]
    out["double onset"] = flam.clamp(-1.0, 1.0)
    return out


def _av_align_scores(trajectories: list[np.ndarray], audio: torch.Tensor, fps: float) -> dict:
    """Per-clip AV-Align of every setting from precomputed flow trajectories (the videos do
    not change between conditions); onsets are detected once per onset interval. A clip
    without any peak scores 0 (no alignment shown)."""
    scores: dict[str, list[float]] = {k: [] for k in AV_ALIGN}
    for traj, wav in zip(trajectories, audio, strict=True):
        onsets: dict[float | None, np.ndarray] = {}
        for key, cfg in AV_ALIGN.items():
            if cfg.min_onset_spacing not in onsets:
                onsets[cfg.min_onset_spacing] = detect_audio_peaks(wav.numpy(), 16000, fps, cfg)
            v = trajectory_peaks(traj, fps, cfg.flow_threshold)
            iou = av_align_iou(
                onsets[cfg.min_onset_spacing], v, fps, cfg.window_frames, cfg.matching
            )
            scores[key].append(0.0 if math.isnan(iou) else iou)
    return scores


def calibrate(
    n_clips: int = 64,
    seed: int = 0,
    offsets: tuple[int, ...] = OFFSETS,
    imagebind: Any = None,
    sync_model: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-condition means and standard errors of every metric (see the module docstring)."""
    config = WorldConfig()
    clips = inner_clips(n_clips, seed, config, max(abs(k) for k in offsets))
    frames = [to_uint8_frames(v) for v in clips.video]
    trajectories = [flow_trajectory(f) for f in frames]
    per_condition: dict[str, dict[str, list[float]]] = {}
    audio_sets = conditions(clips, config, offsets)
    for name, audio in tqdm(audio_sets.items(), desc="conditions", disable=not progress):
        scores = _av_align_scores(trajectories, audio, float(config.fps))
        world = [evaluate(clips.video[i : i + 1], audio[i : i + 1], config) for i in range(n_clips)]
        scores["world_temporal"] = [w["temporal"] for w in world]
        scores["world_semantic"] = [w["semantic"] for w in world]
        if imagebind is not None:
            scores["ib_av"] = _imagebind_scores(imagebind, frames, audio, config)
        per_condition[name] = scores
    skipped = {}
    if imagebind is None:
        skipped["ib_av"] = (
            "no ImageBind weights (--imagebind-weights): random weights are meaningless"
        )
    if sync_model is None:
        skipped["desync"] = (
            "no Synchformer weights (--sync-weights): random weights are meaningless"
        )
    else:
        long_config = WorldConfig(num_frames=40)  # 5 s: DeSync's windows are 4.8 s
        long_clips = inner_clips(n_clips, seed, long_config, max(abs(k) for k in offsets))
        long_frames = [to_uint8_frames(v) for v in long_clips.video]
        for name, audio in conditions(long_clips, long_config, offsets).items():
            per_condition[name]["desync"] = _desync_scores(
                sync_model, long_frames, audio, long_config
            )
    return summarise(per_condition, offsets, n_clips, seed, skipped)


def _imagebind_scores(model, frames, audio, config) -> list[float]:
    from mmdisco.metrics.imagebind import pooled_embedding, preprocess_audio, preprocess_video

    out = []
    for video, wav in zip(frames, audio, strict=True):
        a = pooled_embedding(model, "audio", preprocess_audio(wav.numpy(), config.sample_rate))
        v = pooled_embedding(model, "vision", preprocess_video(video, float(config.fps)))
        out.append(float(a @ v))
    return out


def _desync_scores(model, frames, audio, config) -> list[float]:
    from mmdisco.metrics.desync import WINDOW_SECONDS, DeSync

    desync = DeSync(model, seconds=WINDOW_SECONDS)
    return [
        desync(VideoClip(f, float(config.fps)), AudioClip(a.numpy(), config.sample_rate))
        for f, a in zip(frames, audio, strict=True)
    ]


def summarise(per_condition, offsets, n_clips, seed, skipped) -> dict[str, Any]:
    metrics = sorted({m for scores in per_condition.values() for m in scores})
    table = {
        cond: {
            m: {
                "mean": float(np.mean(v)),
                "sem": float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0,
            }
            for m, v in scores.items()
        }
        for cond, scores in per_condition.items()
    }
    truth = [table[f"offset {k:+d}"]["world_temporal"]["mean"] for k in offsets]
    ranking = {}
    for m in metrics:
        if m == "world_semantic":
            continue
        means = [table[f"offset {k:+d}"][m]["mean"] for k in offsets]
        signed = [-x for x in means] if m == "desync" else means  # DeSync: lower is better
        ranking[m] = {
            "spearman_vs_truth": _spearman(signed, truth),
            "spearman_abs_offset": _spearman([abs(k) for k in offsets], signed),
            "zero_offset_max": bool(signed[offsets.index(0)] >= max(signed))
            if 0 in offsets
            else None,
        }
    return {
        "clips": n_clips,
        "seed": seed,
        "offsets_frames": list(offsets),
        "fps": WorldConfig().fps,
        "av_align_settings": {
            k: vars(v) | {"version": v.version_name} for k, v in AV_ALIGN.items()
        },
        "conditions": table,
        "ranking": ranking,
        "skipped": skipped,
    }


def _spearman(x: list[float], y: list[float]) -> float | None:
    rho = spearmanr(x, y).statistic
    return None if np.isnan(rho) else float(rho)


def markdown(result: dict[str, Any]) -> str:
    metrics = sorted({m for c in result["conditions"].values() for m in c})
    lines = [
        f"# Metric calibration on the world ({result['clips']} real pairs, seed {result['seed']})",
        "",
        "Mean over clips (± standard error). Offsets in video frames at "
        f"{result['fps']} fps (+: audio late); class swap keeps the impact times.",
        "",
        "| condition | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for cond, row in result["conditions"].items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['sem']:.3f}" if m in row else "" for m in metrics]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ranking over the offset conditions: Spearman correlation of the metric's means with the",
        "world's exact temporal score (the truth; 1 is perfect) and with |offset| (-1 is",
        "perfect; the truth itself is not monotone, because a 4-frame shift can line one",
        "impact up with another).",
        "",
        "| metric | Spearman vs truth | Spearman vs abs(offset) | highest at offset 0 |",
        "|---|---|---|---|",
    ]
    for m, r in result["ranking"].items():
        cells = [
            "n/a" if r[k] is None else f"{r[k]:.3f}"
            for k in ("spearman_vs_truth", "spearman_abs_offset")
        ]
        lines.append(f"| {m} | {' | '.join(cells)} | {'yes' if r['zero_offset_max'] else 'no'} |")
    lines += ["", *[f"Skipped {k}: {v}." for k, v in result["skipped"].items()], ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    offsets = result["offsets_frames"]
    metrics = [m for m in sorted(result["ranking"]) if m != "world_semantic"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, m in enumerate(metrics):
        dx = 0.1 * (i - (len(metrics) - 1) / 2)  # side by side: some metrics coincide
        rows = [result["conditions"][f"offset {k:+d}"][m] for k in offsets]
        ax.errorbar([k + dx for k in offsets], [r["mean"] for r in rows],
                    yerr=[r["sem"] for r in rows], marker="o", ms=4, capsize=3, label=m,
                    color=f"C{i}", linestyle="--" if "2023" in m else "-")  # fmt: skip
        for x, cond, marker in ((5.5, "class swap", "x"), (7.0, "double onset", "s")):
            row = result["conditions"][cond].get(m)
            if row is not None:
                ax.scatter([x + dx], [row["mean"]], marker=marker, color=f"C{i}")
    ax.set_xticks([*offsets, 5.5, 7.0], [*map(str, offsets), "class\nswap", "double\nonset"])
    ax.set_xlabel("audio offset (video frames at 8 fps)")
    ax.set_ylabel("score (mean over clips)")
    ax.set_title(f"Sync metrics on the world, {result['clips']} real pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _factory(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 clips (pipeline check)")
    parser.add_argument("--clips", type=int, default=None, help="real pairs (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imagebind-weights", type=Path, default=None)
    parser.add_argument("--sync-weights", type=Path, default=None, help="convert synchformer")
    parser.add_argument("--sync-model", default=None, help="module:factory of a Synchformer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    imagebind = None
    if args.imagebind_weights is not None:
        from mmdisco.metrics.imagebind_model import load_imagebind

        imagebind = load_imagebind(args.imagebind_weights)
    sync = _factory(args.sync_model) if args.sync_model else None
    if args.sync_weights is not None:
        from mmdisco.metrics.synchformer import load_synchformer

        sync = load_synchformer(args.sync_weights)
    n = args.clips or (4 if args.quick else 64)
    result = calibrate(n, args.seed, imagebind=imagebind, sync_model=sync)
    stem = "metric_calibration_quick" if args.quick else "metric_calibration"
    write_json_atomic(args.out / f"{stem}.json", result)
    write_text_atomic(args.out / f"{stem}.md", markdown(result))
    plot(result, args.out / f"{stem}.png")
    print(markdown(result))
    print(json.dumps(result["ranking"], indent=2))


if __name__ == "__main__":
    main()
