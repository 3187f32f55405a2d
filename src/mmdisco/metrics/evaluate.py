"""Directory-level evaluation: features for every sample, then FAD / FVD / KVD / IB / AV-Align.

Unreadable samples never abort a run: each is recorded with its path and reason and
skipped, and the counts go into the report, because a metric silently computed on fewer
samples than intended is biased (FD grows as the sample count shrinks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdisco.io import write_text_atomic
from mmdisco.metrics.av_align import AVAlignConfig, av_align_score
from mmdisco.metrics.base import FeatureExtractor
from mmdisco.metrics.imagebind import EmbeddingModel, pooled_embedding, scores_from_embeddings
from mmdisco.metrics.imagebind import preprocess_audio as ib_audio
from mmdisco.metrics.imagebind import preprocess_video as ib_video
from mmdisco.metrics.io import list_media, load_media
from mmdisco.metrics.stats import (
    KVD_MODES,
    frechet_distance_from_features,
    kernel_distance,
    polynomial_mmd,
)

ALL_METRICS = ("fad", "fvd", "kvd", "ib", "av_align")
NEEDS_REFERENCE = {"fad", "fvd", "kvd"}


@dataclass
class EvalOptions:
    """Knobs of the protocol; defaults follow the references (see docs/metrics.md)."""

    metrics: tuple[str, ...] = ("fad", "fvd", "kvd", "av_align")
    fps: float = 8.0  # for frame folders only
    kvd_mode: str = "mmdiffusion"  # or "subsets" (StyleGAN2-ADA KID); see stats.KVD_MODES
    kvd_subsets: int = 100
    kvd_subset_size: int = 1000
    seed: int = 0
    av_align: AVAlignConfig = field(default_factory=AVAlignConfig)
    progress: bool = True


@dataclass
class _SetResult:
    audio: list[np.ndarray] = field(default_factory=list)
    video: list[np.ndarray] = field(default_factory=list)
    ib_audio: list[Any] = field(default_factory=list)
    ib_video: list[Any] = field(default_factory=list)
    av_align: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    ok: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def _process_set(
    directory: Path,
    label: str,
    options: EvalOptions,
    audio_ex: FeatureExtractor | None,
    video_ex: FeatureExtractor | None,
    ib_model: EmbeddingModel | None,
    want_av: bool,
) -> _SetResult:
    res = _SetResult()
    paths = list_media(directory)
    for path in tqdm(paths, desc=f"{label} ({directory.name})", disable=not options.progress):
        try:
            item = load_media(path, options.fps)
            row: dict[str, Any] = {}
            for needed, media, ex, key in (
                (audio_ex is not None, item.audio, audio_ex, "audio"),
                (video_ex is not None, item.video, video_ex, "video"),
            ):
                if needed:
                    if media is None:
                        raise ValueError(f"no {key} track")
                    row[key] = ex(media)
            if ib_model is not None:
                if item.audio is None or item.video is None:
                    raise ValueError("ImageBind AV score needs both audio and video")
                a = ib_audio(item.audio.samples, item.audio.sample_rate)
                v = ib_video(item.video.frames, item.video.fps)
                row["ib_audio"] = pooled_embedding(ib_model, "audio", a)
                row["ib_video"] = pooled_embedding(ib_model, "vision", v)
            if want_av:
                if item.audio is None or item.video is None:
                    raise ValueError("AV-Align needs both audio and video")
                row["av_align"] = av_align_score(
                    item.video.frames, item.video.fps, item.audio.samples,
                    item.audio.sample_rate, options.av_align,
                )  # fmt: skip
        except Exception as err:
            res.skipped.append({"path": str(path), "reason": f"{type(err).__name__}: {err}"})
            continue
        for key, value in row.items():
            getattr(res, key).append(value)
        res.names.append(path.stem)
        res.ok += 1
    return res


def _describe(ex: FeatureExtractor | None) -> dict[str, Any] | None:
    if ex is None:
        return None
    return {"name": ex.name, "comparable_with_published": bool(ex.comparable_with_published)}


def evaluate_directories(
    generated: str | Path,
    reference: str | Path | None,
    options: EvalOptions,
    audio_extractor: FeatureExtractor | None = None,
    video_extractor: FeatureExtractor | None = None,
    embedding_model: EmbeddingModel | None = None,
    captions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Compute ``options.metrics`` for the samples in ``generated`` against ``reference``.

    ``captions`` (file stem -> prompt) adds IB-TV and IB-TA to the ImageBind scores.

    Returns the JSON-able report written by :func:`write_report`.
    """
    metrics = tuple(options.metrics)
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    if NEEDS_REFERENCE & set(metrics) and reference is None:
        raise ValueError(f"{sorted(NEEDS_REFERENCE & set(metrics))} need --reference")
    want_audio, want_video = "fad" in metrics, bool({"fvd", "kvd"} & set(metrics))
    if want_audio and audio_extractor is None:
        raise ValueError("fad needs an audio feature extractor")
    if want_video and video_extractor is None:
        raise ValueError("fvd/kvd need a video feature extractor")
    if "ib" in metrics and embedding_model is None:
        raise ValueError("ib needs an ImageBind-style embedding model (see docs/metrics.md)")
    a_ex = audio_extractor if want_audio else None
    v_ex = video_extractor if want_video else None

    sets = {"generated": Path(generated)}
    if reference is not None:
        sets["reference"] = Path(reference)
    results = {
        label: _process_set(
            d,
            label,
            options,
            a_ex,
            v_ex,
            embedding_model if "ib" in metrics and label == "generated" else None,
            "av_align" in metrics,
        )
        for label, d in sets.items()
    }
    for label, res in results.items():
        if res.ok == 0:  # an extractor bug looks like "every file is corrupt": say why
            raise ValueError(f"no usable {label} samples in {sets[label]}: {res.skipped[:3]}")
    values: dict[str, float | None] = {}
    gen, ref = results["generated"], results.get("reference")
    if want_audio:
        values["fad"] = _fd(gen.audio, ref.audio, "fad")
    if "fvd" in metrics:
        values["fvd"] = _fd(gen.video, ref.video, "fvd")
    if "kvd" in metrics:
        x, y = _stack(gen.video, "generated video"), _stack(ref.video, "reference video")
        if options.kvd_mode == "mmdiffusion":
            values["kvd"] = polynomial_mmd(x, y)
        elif options.kvd_mode == "subsets":
            values["kvd"] = kernel_distance(
                x, y, options.kvd_subsets, options.kvd_subset_size, options.seed
            )
        else:
            raise ValueError(f"unknown kvd_mode {options.kvd_mode!r}; choose from {KVD_MODES}")
    if "ib" in metrics:
        text = None
        if captions is not None:
            missing = [n for n in gen.names if n not in captions]
            if missing:
                raise ValueError(f"captions missing for samples {missing[:8]}")
            text = [captions[n] for n in gen.names]
            with torch.no_grad():
                text = embedding_model.embed("text", text)
        if not gen.ib_audio:
            raise ValueError(
                f"no generated sample could be embedded for ImageBind: {gen.skipped[:3]}"
            )
        audio_emb, video_emb = torch.stack(gen.ib_audio), torch.stack(gen.ib_video)
        values.update(scores_from_embeddings(audio_emb, video_emb, text))
    if "av_align" in metrics:
        for label, res in results.items():
            suffix = "" if label == "generated" else "_reference"
            finite = [s for s in res.av_align if not math.isnan(s)]
            values[f"av_align{suffix}"] = float(np.mean(finite)) if finite else None
    return {
        "metrics": values,
        "extractors": {"audio": _describe(a_ex), "video": _describe(v_ex)},
        "comparable_with_published": all(
            d["comparable_with_published"] for d in (_describe(a_ex), _describe(v_ex)) if d
        ),
        "counts": {
            label: {"ok": r.ok, "skipped": len(r.skipped), "feature_rows": _rows(r)}
            for label, r in results.items()
        },
        "skipped": [s | {"set": label} for label, r in results.items() for s in r.skipped],
        "options": {
            "metrics": list(metrics),
            "fps_for_frame_folders": options.fps,
            "kvd_mode": options.kvd_mode,
            "kvd_subsets": options.kvd_subsets,
            "kvd_subset_size": options.kvd_subset_size,
            "seed": options.seed,
            "av_align": vars(options.av_align),
        },
    }


def _rows(res: _SetResult) -> dict[str, int]:
    return {k: int(sum(f.shape[0] for f in getattr(res, k))) for k in ("audio", "video")}


def _stack(blocks: list[np.ndarray], what: str) -> np.ndarray:
    rows = [b for b in blocks if b.shape[0] > 0]
    if sum(b.shape[0] for b in rows) < 2:
        raise ValueError(f"fewer than 2 {what} feature rows (samples skipped or too short)")
    return np.concatenate(rows, axis=0)


def _fd(gen: list[np.ndarray], ref: list[np.ndarray], name: str) -> float:
    return frechet_distance_from_features(
        _stack(gen, f"generated {name}"), _stack(ref, f"reference {name}")
    )


def markdown_table(report: dict[str, Any]) -> str:
    """One row per metric, with the extractor and whether it is comparable with papers."""
    extractor_of = {"fad": "audio", "fvd": "video", "kvd": "video"}
    lines = [
        "| metric | value | extractor | comparable with published |",
        "|---|---|---|---|",
    ]
    for key, value in report["metrics"].items():
        ex = report["extractors"].get(extractor_of.get(key, ""), None)
        shown = "n/a" if value is None else f"{value:.6g}"
        if ex is None:
            name, comparable = (
                ("ImageBind-style model", "depends on model")
                if key.startswith("ib_")
                else ("librosa onsets + Farneback flow", "yes (one-to-one matching, see docs)")
            )
        else:
            name = ex["name"]
            comparable = "yes" if ex["comparable_with_published"] else "**NO** (offline/untrained)"
        lines.append(f"| {key} | {shown} | {name} | {comparable} |")
    counts = ", ".join(
        f"{label}: {c['ok']} ok / {c['skipped']} skipped" for label, c in report["counts"].items()
    )
    return "\n".join([*lines, "", f"Samples: {counts}.", ""])


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    write_text_atomic(json_path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    write_text_atomic(md_path, markdown_table(report))
    return json_path, md_path
