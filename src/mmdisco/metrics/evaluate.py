"""Directory-level evaluation: features for every sample, then the distribution and per-sample
metrics (FAD, FVD, KVD, ImageBind, AV-Align, PANNs FD / KL / IS, DeSync, CLAP).

Unreadable samples never abort a run: each is recorded with its path and reason and
skipped, and the counts go into the report, because a metric silently computed on fewer
samples than intended is biased (FD grows as the sample count shrinks). A sample that one
metric cannot use (no audio track, shorter than the metric's window, no peaks for AV-Align)
is skipped for that metric only, and counted under that metric's name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdisco.errors import check_float, check_int
from mmdisco.io import write_text_atomic
from mmdisco.metrics.av_align import AVAlignConfig, av_align_score
from mmdisco.metrics.base import AudioClip, FeatureExtractor, VideoClip
from mmdisco.metrics.clap import ClapScorer, clap_score
from mmdisco.metrics.desync import DeSync
from mmdisco.metrics.imagebind import EmbeddingModel, pooled_embedding, scores_from_embeddings
from mmdisco.metrics.imagebind import preprocess_audio as ib_audio
from mmdisco.metrics.imagebind import preprocess_video as ib_video
from mmdisco.metrics.io import MediaItem, list_media, load_media
from mmdisco.metrics.panns import PANNsExtractor, inception_score, kl_divergences
from mmdisco.metrics.protocols import Protocol
from mmdisco.metrics.stats import (
    KVD_MODES,
    frechet_distance_from_features,
    kernel_distance,
    polynomial_mmd,
)

ALL_METRICS = (
    "fad",
    "fvd",
    "kvd",
    "ib",
    "av_align",
    "fd_panns",
    "kl_panns",
    "is_panns",
    "desync",
    "clap",
)
NEEDS_REFERENCE = {"fad", "fvd", "kvd", "fd_panns", "kl_panns"}
FVD_REFERENCE_CLIPS = ("first", "random")


@dataclass
class EvalOptions:
    """Knobs of the protocol; defaults follow the references (see docs/metrics.md)."""

    metrics: tuple[str, ...] = ("fad", "fvd", "kvd", "av_align")
    fps: float = 8.0  # for frame folders only
    kvd_mode: str = "mmdiffusion"  # or "subsets" (StyleGAN2-ADA KID); see stats.KVD_MODES
    kvd_subsets: int = 100
    kvd_subset_size: int = 1000
    fvd_reference_clips: str = "first"  # "random": StyleGAN-V's random window of real clips
    seed: int = 0
    prefer_sibling_audio: bool = True  # x.wav next to x.mp4 replaces its AAC track
    ground_truth: bool = True  # per-sample metrics (IB-AV, AV-Align, DeSync) on the reference
    av_align: AVAlignConfig = field(default_factory=AVAlignConfig)
    protocol: Protocol | None = None
    progress: bool = True
    # Evaluate the first max_seconds of every sample (None: all of it). Long files are
    # decoded only that far, so memory follows this, not the file's length.
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        self.fps = check_float("fps", self.fps, 0.0, open_min=True)
        check_int("kvd_subsets", self.kvd_subsets, 1)
        check_int("kvd_subset_size", self.kvd_subset_size, 2)
        check_int("seed", self.seed, 0)
        check_float("window_frames", self.av_align.window_frames, 0.0, open_min=True)
        if self.av_align.min_onset_spacing is not None:
            check_float("onset_spacing", self.av_align.min_onset_spacing, 0.0, open_min=True)
        if self.max_seconds is not None:
            self.max_seconds = check_float("max_seconds", self.max_seconds, 0.0, open_min=True)


@dataclass
class _SetResult:
    """Per-metric values of one directory, each with the sample names it came from."""

    values: dict[str, list[Any]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    ok: int = 0
    audio_from_sibling: int = 0
    fps_seen: list[float] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, key: str, name: str, value: Any) -> None:
        self.values.setdefault(key, []).append(value)
        self.names.setdefault(key, []).append(name)

    def by_name(self, key: str) -> dict[str, Any]:
        return dict(zip(self.names.get(key, []), self.values.get(key, []), strict=True))


def _audio(item: MediaItem) -> AudioClip:
    if item.audio is None:
        raise ValueError("no audio track (and no sibling audio file)")
    return item.audio


def _video(item: MediaItem) -> VideoClip:
    if item.video is None:
        raise ValueError("no video")
    return item.video


def _steps(
    label: str, options: EvalOptions, models: dict[str, Any]
) -> dict[str, Callable[[MediaItem], Any]]:
    """Per-sample computations for one set: key -> function of the loaded sample."""
    steps: dict[str, Callable[[MediaItem], Any]] = {}
    wanted, reference = set(options.metrics), label == "reference"
    per_sample = not reference or options.ground_truth
    if models.get("audio") is not None:
        steps["audio"] = lambda it: models["audio"](_audio(it))
    if models.get("video") is not None:
        window = _reference_window(options) if reference else None
        steps["video"] = lambda it: models["video"](
            _video(it) if window is None else window(_video(it))
        )
    if models.get("panns") is not None:
        steps["panns"] = lambda it: models["panns"].extract(_audio(it))
    if "ib" in wanted and per_sample:
        ib = models["imagebind"]

        def embed(it: MediaItem) -> tuple[torch.Tensor, torch.Tensor]:
            a, v = _audio(it), _video(it)
            return (
                pooled_embedding(ib, "audio", ib_audio(a.samples, a.sample_rate)),
                pooled_embedding(ib, "vision", ib_video(v.frames, v.fps)),
            )

        steps["ib"] = embed
    if "av_align" in wanted and per_sample:

        def av(it: MediaItem) -> float:
            v, a = _video(it), _audio(it)
            score = av_align_score(v.frames, v.fps, a.samples, a.sample_rate, options.av_align)
            if math.isnan(score):
                raise ValueError("no audio onset and no video peak: AV-Align is undefined")
            return score

        steps["av_align"] = av
    if "desync" in wanted and per_sample:
        steps["desync"] = lambda it: models["desync"](_video(it), _audio(it))
    if "clap" in wanted and not reference:
        steps["clap"] = lambda it: models["clap"].embed_audio(_audio(it))
    return steps


def _reference_window(options: EvalOptions) -> Callable[[VideoClip], VideoClip] | None:
    """StyleGAN-V's real-video sampling: a random ``frames``-long window per clip (seeded)."""
    if options.fvd_reference_clips == "first":
        return None
    if options.fvd_reference_clips != "random":
        raise ValueError(
            f"fvd_reference_clips must be one of {FVD_REFERENCE_CLIPS}, "
            f"got {options.fvd_reference_clips!r}"
        )
    gen = torch.Generator().manual_seed(options.seed)
    frames = 16

    def window(clip: VideoClip) -> VideoClip:
        extra = clip.frames.shape[0] - frames
        if extra < 0:
            return clip  # the extractor names the shortfall
        start = int(torch.randint(extra + 1, (1,), generator=gen))
        return VideoClip(clip.frames[start : start + frames], clip.fps)

    return window


def _process_set(
    directory: Path, label: str, options: EvalOptions, models: dict[str, Any]
) -> _SetResult:
    res = _SetResult()
    steps = _steps(label, options, models)
    paths = list_media(directory, options.prefer_sibling_audio)
    # Decode only what the metrics read: an FVD-only run needs the extractor's first frames.
    first_frames_only = set(steps) <= {"video", "audio", "panns", "clap"} and not (
        label == "reference" and options.fvd_reference_clips != "first"
    )
    max_frames = getattr(models.get("video"), "num_frames", None) if first_frames_only else None
    need_audio = bool(set(steps) - {"video"})
    for path in tqdm(paths, desc=f"{label} ({directory.name})", disable=not options.progress):
        try:
            item = load_media(
                path,
                options.fps,
                prefer_sibling_audio=options.prefer_sibling_audio,
                max_seconds=options.max_seconds,
                max_frames=max_frames,
                audio=need_audio,
            )
        except Exception as err:
            res.skipped.append(
                {"path": str(path), "metric": "all", "reason": f"{type(err).__name__}: {err}"}
            )
            continue
        res.ok += 1
        if item.audio_path is not None and item.audio_path != path and path.is_file():
            res.audio_from_sibling += 1
        if item.video is not None:
            res.fps_seen.append(float(item.video.fps))
        for key, step in steps.items():
            try:
                res.add(key, path.stem, _finite(step(item), key))
            except Exception as err:
                res.skipped.append(
                    {"path": str(path), "metric": key, "reason": f"{type(err).__name__}: {err}"}
                )
    return res


def _finite(value: Any, key: str) -> Any:
    """``value`` if every number in it is finite; else this sample's ``key`` is skipped."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    for part in parts:
        array = part.detach().cpu().numpy() if torch.is_tensor(part) else part
        if isinstance(array, (np.ndarray, float, int)) and not np.isfinite(array).all():
            raise ValueError(f"{key} features are not finite (NaN or infinity)")
    return value


def _describe(ex: Any) -> dict[str, Any] | None:
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
    panns: PANNsExtractor | None = None,
    desync: DeSync | None = None,
    clap: ClapScorer | None = None,
) -> dict[str, Any]:
    """Compute ``options.metrics`` for the samples in ``generated`` against ``reference``.

    ``captions`` (file stem -> prompt) adds IB-TV and IB-TA to the ImageBind scores and is
    the text side of the CLAP score. Returns the JSON-able report written by
    :func:`write_report`.
    """
    metrics = set(options.metrics)
    _check_inputs(
        options,
        reference,
        audio_extractor,
        video_extractor,
        embedding_model,
        captions,
        panns,
        desync,
        clap,
    )
    models = {
        "audio": audio_extractor if "fad" in metrics else None,
        "video": video_extractor if metrics & {"fvd", "kvd"} else None,
        "imagebind": embedding_model,
        "panns": panns if metrics & {"fd_panns", "kl_panns", "is_panns"} else None,
        "desync": desync,
        "clap": clap,
    }
    sets = {"generated": Path(generated)}
    if reference is not None:
        sets["reference"] = Path(reference)
    results = {label: _process_set(d, label, options, models) for label, d in sets.items()}
    for label, res in results.items():
        if res.ok == 0:  # an extractor bug looks like "every file is corrupt": say why
            raise ValueError(f"no usable {label} samples in {sets[label]}: {res.skipped[:3]}")
    values = _metric_values(results, options, captions, embedding_model, clap)
    return {
        "metrics": values,
        "metric_info": metric_info(options, models),
        "protocol": None if options.protocol is None else options.protocol.to_json(),
        "extractors": {
            "audio": _describe(models["audio"]),
            "video": _describe(models["video"]),
            "panns": _describe(models["panns"]),
        },
        "comparable_with_published": all(
            d["comparable_with_published"]
            for d in (_describe(models[k]) for k in ("audio", "video", "panns"))
            if d
        ),
        "counts": {label: _counts(r) for label, r in results.items()},
        "warnings": _warnings(results, options),
        "skipped": [s | {"set": label} for label, r in results.items() for s in r.skipped],
        "options": _report_options(options),
    }


def _check_inputs(
    options: EvalOptions,
    reference: str | Path | None,
    audio_extractor: FeatureExtractor | None,
    video_extractor: FeatureExtractor | None,
    embedding_model: EmbeddingModel | None,
    captions: dict[str, str] | None,
    panns: PANNsExtractor | None,
    desync: DeSync | None,
    clap: ClapScorer | None,
) -> None:
    """Every chosen metric has what it needs (a reference, a model, captions)."""
    metrics = set(options.metrics)
    unknown = sorted(metrics - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    if NEEDS_REFERENCE & metrics and reference is None:
        raise ValueError(f"{sorted(NEEDS_REFERENCE & metrics)} need --reference")
    if options.kvd_mode not in KVD_MODES:
        raise ValueError(f"unknown kvd_mode {options.kvd_mode!r}; choose from {KVD_MODES}")
    needs = {
        "fad": (audio_extractor, "an audio feature extractor"),
        "fvd": (video_extractor, "a video feature extractor"),
        "kvd": (video_extractor, "a video feature extractor"),
        "ib": (embedding_model, "an ImageBind-style embedding model (see docs/metrics.md)"),
        "fd_panns": (panns, "PANNs weights (--panns-weights)"),
        "kl_panns": (panns, "PANNs weights (--panns-weights)"),
        "is_panns": (panns, "PANNs weights (--panns-weights)"),
        "desync": (desync, "a Synchformer model (--sync-model)"),
        "clap": (clap, "a CLAP checkpoint (--clap-model)"),
    }
    for name in sorted(metrics & set(needs)):
        if needs[name][0] is None:
            raise ValueError(f"{name} needs {needs[name][1]}")
    if "clap" in metrics and captions is None:
        raise ValueError("clap needs --captions (file stem -> caption)")


def _report_options(options: EvalOptions) -> dict[str, Any]:
    """The options a report was computed with, as written into metrics.json."""
    return {
        "metrics": list(options.metrics),
        "fps_for_frame_folders": options.fps,
        "kvd_mode": options.kvd_mode,
        "kvd_subsets": options.kvd_subsets,
        "kvd_subset_size": options.kvd_subset_size,
        "fvd_reference_clips": options.fvd_reference_clips,
        "prefer_sibling_audio": options.prefer_sibling_audio,
        "ground_truth": options.ground_truth,
        "seed": options.seed,
        "av_align": vars(options.av_align) | {"version": options.av_align.version_name},
        "max_seconds": options.max_seconds,
    }


def _metric_values(
    results: dict[str, _SetResult],
    options: EvalOptions,
    captions: dict[str, str] | None,
    embedding_model: EmbeddingModel | None,
    clap: ClapScorer | None,
) -> dict[str, float | None]:
    metrics = set(options.metrics)
    gen, ref = results["generated"], results.get("reference")
    values: dict[str, float | None] = {}
    if "fad" in metrics:
        values["fad"] = _fd(gen.values.get("audio", []), ref.values.get("audio", []), "fad")
    if "fvd" in metrics:
        values["fvd"] = _fd(gen.values.get("video", []), ref.values.get("video", []), "fvd")
    if "kvd" in metrics:
        x = _stack(gen.values.get("video", []), "generated video")
        y = _stack(ref.values.get("video", []), "reference video")
        values["kvd"] = (
            polynomial_mmd(x, y)
            if options.kvd_mode == "mmdiffusion"
            else kernel_distance(x, y, options.kvd_subsets, options.kvd_subset_size, options.seed)
        )
    if "fd_panns" in metrics:
        embed = {label: [e for e, _ in r.values.get("panns", [])] for label, r in results.items()}
        values["fd_panns"] = _fd(embed["generated"], embed["reference"], "fd_panns")
    if "kl_panns" in metrics:
        values.update(_kl(gen, ref))
    if "is_panns" in metrics:
        logits = _stack([lg for _, lg in gen.values.get("panns", [])], "generated PANNs logits")
        values["is_panns"], values["is_panns_std"] = inception_score(logits)
    if "ib" in metrics:
        values.update(_imagebind(results, captions, embedding_model))
    if "av_align" in metrics:
        for label, res in results.items():
            if label == "generated" or options.ground_truth:
                scores = res.values.get("av_align", [])
                values[_suffixed("av_align", label)] = float(np.mean(scores)) if scores else None
    if "desync" in metrics:
        for label, res in results.items():
            if label == "generated" or options.ground_truth:
                scores = res.values.get("desync", [])
                values[_suffixed("desync", label)] = float(np.mean(scores)) if scores else None
    if "clap" in metrics:
        names = gen.names.get("clap", [])
        missing = [n for n in names if n not in captions]
        if missing:
            raise ValueError(f"captions missing for samples {missing[:8]}")
        if not names:
            raise ValueError(f"no generated sample could be embedded for CLAP: {gen.skipped[:3]}")
        text = clap.embed_text([captions[n] for n in names])
        values["clap"] = clap_score(text, torch.stack(gen.values["clap"]))
    return values


def _suffixed(key: str, label: str) -> str:
    return key if label == "generated" else f"{key}_reference"


def _imagebind(
    results: dict[str, _SetResult],
    captions: dict[str, str] | None,
    model: EmbeddingModel | None,
) -> dict[str, float]:
    gen = results["generated"]
    if not gen.values.get("ib"):
        raise ValueError(f"no generated sample could be embedded for ImageBind: {gen.skipped[:3]}")
    out = {}
    for label, res in results.items():
        pairs = res.values.get("ib", [])
        if not pairs:
            continue
        text = None
        if captions is not None and label == "generated":
            missing = [n for n in res.names["ib"] if n not in captions]
            if missing:
                raise ValueError(f"captions missing for samples {missing[:8]}")
            with torch.no_grad():
                text = model.embed("text", [captions[n] for n in res.names["ib"]])
        audio = torch.stack([a for a, _ in pairs])
        video = torch.stack([v for _, v in pairs])
        scores = scores_from_embeddings(audio, video, text)
        out.update({_suffixed(k, label): v for k, v in scores.items()})
    return out


def _kl(gen: _SetResult, ref: _SetResult) -> dict[str, float]:
    """KL of PANNs logits, generated and reference paired by file stem (av-benchmark)."""
    ref_logits = {n: lg for n, (_, lg) in ref.by_name("panns").items()}
    gen_logits = {n: lg for n, (_, lg) in gen.by_name("panns").items()}
    pairs = [(lg, ref_logits[n]) for n, lg in gen_logits.items() if n in ref_logits]
    unpaired = [n for n in gen_logits if n not in ref_logits]
    for name in unpaired:
        gen.skipped.append(
            {"path": name, "metric": "kl_panns", "reason": "no reference sample with this name"}
        )
    if not pairs:
        raise ValueError(
            "kl_panns pairs generated and reference samples by file name, and none of the "
            f"{len(unpaired)} generated names (e.g. {unpaired[:3]}) is in the reference set"
        )
    kl = kl_divergences(
        np.concatenate([g for g, _ in pairs]), np.concatenate([r for _, r in pairs])
    )
    return {"kl_panns": kl["softmax"], "kl_panns_sigmoid": kl["sigmoid"]}


def _counts(res: _SetResult) -> dict[str, Any]:
    used = {}
    for key, vals in res.values.items():
        if key == "panns":
            used[key] = len(vals)
        elif key in ("audio", "video"):
            used[key] = {"samples": len(vals), "feature_rows": int(sum(v.shape[0] for v in vals))}
        else:
            used[key] = len(vals)
    return {
        "ok": res.ok,
        "skipped": sum(1 for s in res.skipped if s["metric"] == "all"),
        "audio_from_sibling_file": res.audio_from_sibling,
        "used": used,
        "skipped_per_metric": {
            key: sum(1 for s in res.skipped if s["metric"] == key)
            for key in sorted({s["metric"] for s in res.skipped} - {"all"})
        },
    }


def _warnings(results: dict[str, _SetResult], options: EvalOptions) -> list[str]:
    """Deviations a reader must know about (they do not stop the run)."""
    out = []
    gen, ref = results["generated"], results.get("reference")
    for key in ("audio", "video", "panns"):
        if ref is not None and key in gen.values and key in ref.values:
            n_gen, n_ref = len(gen.values[key]), len(ref.values[key])
            if n_gen != n_ref:
                out.append(
                    f"{key}: {n_gen} generated vs {n_ref} reference samples; Fréchet distances "
                    "are biased by the sample count, compare only at equal counts"
                )
    protocol = options.protocol
    if protocol is not None:
        if protocol.num_samples and gen.ok != protocol.num_samples:
            out.append(
                f"protocol {protocol.name} uses {protocol.num_samples} generated samples, "
                f"found {gen.ok}"
            )
        for label, res in results.items():
            off = [f for f in res.fps_seen if abs(f - protocol.fps) > 1e-3]
            if off:
                out.append(
                    f"protocol {protocol.name} uses {protocol.fps:g} fps; {len(off)} {label} "
                    f"clips are at {sorted(set(off))[:3]} fps"
                )
    return out


def _stack(blocks: list[np.ndarray], what: str) -> np.ndarray:
    rows = [b for b in blocks if b.shape[0] > 0]
    if sum(b.shape[0] for b in rows) < 2:
        raise ValueError(f"fewer than 2 {what} feature rows (samples skipped or too short)")
    return np.concatenate(rows, axis=0)


def _fd(gen: list[np.ndarray], ref: list[np.ndarray], name: str) -> float:
    return frechet_distance_from_features(
        _stack(gen, f"generated {name}"), _stack(ref, f"reference {name}")
    )


def metric_info(options: EvalOptions, models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each computed metric's reference implementation, version and options."""
    metrics, info = set(options.metrics), {}
    audio, video, panns = models.get("audio"), models.get("video"), models.get("panns")
    if "fad" in metrics:
        info["fad"] = {
            "reference": getattr(audio, "reference", audio.name),
            "version": getattr(audio, "audio_input", "offline"),
            "options": {
                "extractor": audio.name,
                "audio_input": getattr(audio, "audio_input", None),
            },
        }
    if metrics & {"fvd", "kvd"}:
        info.update(_video_metric_info(options, metrics, video))
    if "ib" in metrics:
        info["ib"] = {
            "reference": "facebookresearch/ImageBind data.py (imagebind_huge)",
            "version": "data.py",
            "options": {
                "model": type(models["imagebind"]).__name__,
                "ground_truth": options.ground_truth,
            },
        }
    if "av_align" in metrics:
        cfg = options.av_align
        info["av_align"] = {
            "reference": "guyyariv/TempoTokens av_align.py",
            "version": cfg.version_name,
            "options": vars(cfg),
        }
    for key in ("fd_panns", "kl_panns", "is_panns"):
        if key in metrics:
            extra = {"splits": 10, "shuffle_seed": 2020} if key == "is_panns" else {}
            info[key] = {
                "reference": panns.reference,
                "version": "Cnn14_16k_mAP=0.438",
                "options": {"audio_input": panns.audio_input, "max_seconds": panns.max_seconds}
                | extra,
            }
    if "desync" in metrics:
        d = models["desync"]
        info["desync"] = {
            "reference": d.reference,
            "version": d.version,
            "options": {"seconds": d.seconds, "model": type(d.model).__name__},
        }
    if "clap" in metrics:
        c = models["clap"]
        info["clap"] = {
            "reference": c.reference,
            "version": c.source,
            "options": {"max_seconds": c.max_seconds},
        }
    return info


def _video_metric_info(options: EvalOptions, metrics: set[str], video: Any) -> dict[str, Any]:
    """FVD's and KVD's entries of :func:`metric_info` (one video extractor serves both)."""
    info: dict[str, Any] = {}
    fvd_opts = {
        "extractor": video.name,
        "frames": getattr(video, "num_frames", None),
        "weights_variant": getattr(video, "variant", None),
        "generated_clips": "first",
        "reference_clips": options.fvd_reference_clips,
    }
    if "fvd" in metrics:
        info["fvd"] = {
            "reference": getattr(video, "reference", video.name),
            "version": "fvd2048_16f" if hasattr(video, "reference") else "offline",
            "options": fvd_opts,
        }
    if "kvd" in metrics:
        mmd = options.kvd_mode == "mmdiffusion"
        info["kvd"] = {
            "reference": "researchmm/MM-Diffusion polynomial_mmd"
            if mmd
            else "NVlabs/stylegan2-ada-pytorch compute_kid",
            "version": options.kvd_mode,
            "options": fvd_opts
            | (
                {}
                if mmd
                else {"subsets": options.kvd_subsets, "subset_size": options.kvd_subset_size}
            ),
        }
    return info


def markdown_table(report: dict[str, Any]) -> str:
    """One row per value, with its reference, version and whether it is comparable."""
    info = report.get("metric_info", {})
    extractor_of = {"fad": "audio", "fvd": "video", "kvd": "video", "fd_panns": "panns"}
    lines = [
        "| metric | value | reference | version | comparable with published |",
        "|---|---|---|---|---|",
    ]
    for key, value in report["metrics"].items():
        base = key.removesuffix("_reference").removesuffix("_std").removesuffix("_sigmoid")
        base = "ib" if base.startswith("ib_") else base
        meta = info.get(base, {})
        ex = report["extractors"].get(extractor_of.get(base, ""), None)
        if ex is not None:
            comparable = "yes" if ex["comparable_with_published"] else "**NO** (offline/untrained)"
        elif base in ("kl_panns", "is_panns"):
            comparable = (
                "yes" if report["extractors"]["panns"]["comparable_with_published"] else "**NO**"
            )
        else:
            comparable = "depends on the model" if base in ("ib", "desync", "clap") else "yes"
        shown = "n/a" if value is None else f"{value:.6g}"
        ref_name, version = meta.get("reference", ""), meta.get("version", "")
        lines.append(f"| {key} | {shown} | {ref_name} | {version} | {comparable} |")
    counts = ", ".join(
        f"{label}: {c['ok']} ok / {c['skipped']} skipped" for label, c in report["counts"].items()
    )
    notes = [f"Samples: {counts}."]
    notes += [f"Warning: {w}" for w in report.get("warnings", [])]
    if report.get("protocol"):
        notes.append(f"Protocol: {report['protocol']['name']} ({report['protocol']['table']}).")
    return "\n".join([*lines, "", *notes, ""])


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.md`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    write_text_atomic(json_path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    write_text_atomic(md_path, markdown_table(report))
    return json_path, md_path
