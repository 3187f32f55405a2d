"""`mmdisco evaluate`: FAD / FVD / KVD / ImageBind / AV-Align over two directories of samples."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer

from mmdisco.cli import app
from mmdisco.metrics.av_align import AVAlignConfig
from mmdisco.metrics.evaluate import ALL_METRICS, EvalOptions, evaluate_directories, write_report
from mmdisco.metrics.i3d import I3DExtractor
from mmdisco.metrics.imagebind_model import load_imagebind
from mmdisco.metrics.offline import OfflineAudioExtractor, OfflineVideoExtractor
from mmdisco.metrics.vggish import VGGishExtractor


def _load_factory(spec: str):
    """'package.module:callable' -> callable() (the user's ImageBind-style model)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise typer.BadParameter(f"expected 'module:callable', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)()


@app.command("evaluate")
def evaluate(
    generated: Annotated[Path, typer.Option(help="Directory of generated samples.")],
    out: Annotated[Path, typer.Option(help="Output directory for metrics.json / metrics.md.")],
    reference: Annotated[
        Path | None, typer.Option(help="Directory of reference samples (FAD/FVD/KVD).")
    ] = None,
    metrics: Annotated[str, typer.Option(help=f"Comma list of {','.join(ALL_METRICS)}.")] = (
        "fad,fvd,kvd,av_align"
    ),
    extractor: Annotated[
        str, typer.Option(help="'offline' (no weights, NOT comparable) or 'pretrained'.")
    ] = "offline",
    vggish_weights: Annotated[
        Path | None, typer.Option(help="VGGish safetensors (pretrained FAD).")
    ] = None,
    i3d_weights: Annotated[
        Path | None, typer.Option(help="I3D safetensors (pretrained FVD/KVD).")
    ] = None,
    imagebind_model: Annotated[
        str | None,
        typer.Option(help="'module:factory' returning an EmbeddingModel (needed for ib)."),
    ] = None,
    imagebind_weights: Annotated[
        Path | None,
        typer.Option(help="Built-in ImageBind: safetensors from `convert imagebind` (for ib)."),
    ] = None,
    imagebind_bpe: Annotated[
        Path | None,
        typer.Option(help="CLIP BPE vocab (bpe_simple_vocab_16e6.txt.gz) for IB-TV / IB-TA."),
    ] = None,
    captions: Annotated[
        Path | None, typer.Option(help="JSON {file stem: caption} for IB-TV / IB-TA.")
    ] = None,
    fps: Annotated[float, typer.Option(help="Frame rate of frame-image folders.")] = 8.0,
    onset_spacing: Annotated[
        float | None, typer.Option(help="AV-Align minimum onset spacing in s (0.768/fps).")
    ] = None,
    window_frames: Annotated[float, typer.Option(help="AV-Align match window, frames.")] = 1.0,
    av_align_version: Annotated[
        str, typer.Option(help="AV-Align script version: 2025-02-13 or 2023-10-26 (MMDisCo).")
    ] = "2025-02-13",
    matching: Annotated[
        str | None,
        typer.Option(help="AV-Align matching: one_to_one or one_to_many (default: version's)."),
    ] = None,
    flow_threshold: Annotated[
        float | None,
        typer.Option(help="AV-Align: ignore flow peaks below this many px (default: version's)."),
    ] = None,
    kvd_mode: Annotated[
        str,
        typer.Option(help="KVD: 'mmdiffusion' (all rows, MM-Diffusion) or 'subsets' (KID)."),
    ] = "mmdiffusion",
    kvd_subsets: Annotated[int, typer.Option(help="KVD subsets mode: number of subsets.")] = 100,
    kvd_subset_size: Annotated[
        int, typer.Option(help="KVD: samples per subset (capped at the set size).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for KVD subsets and offline projections.")] = 0,
    device: Annotated[str, typer.Option(help="Torch device for the feature extractors.")] = "cpu",
) -> None:
    """Evaluate generated samples (mp4, wav, or frame folders) against references."""
    chosen = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if extractor == "offline":
        audio_ex, video_ex = OfflineAudioExtractor(seed=seed), OfflineVideoExtractor()
    elif extractor == "pretrained":
        need_a, need_v = "fad" in chosen, bool({"fvd", "kvd"} & set(chosen))
        if need_a and vggish_weights is None:
            raise typer.BadParameter("--extractor pretrained with fad needs --vggish-weights")
        if need_v and i3d_weights is None:
            raise typer.BadParameter("--extractor pretrained with fvd/kvd needs --i3d-weights")
        audio_ex = VGGishExtractor(vggish_weights, device=device) if need_a else None
        video_ex = I3DExtractor(i3d_weights, device=device) if need_v else None
    else:
        raise typer.BadParameter(
            f"--extractor must be 'offline' or 'pretrained', got {extractor!r}"
        )
    options = EvalOptions(
        metrics=chosen,
        fps=fps,
        kvd_mode=kvd_mode,
        kvd_subsets=kvd_subsets,
        kvd_subset_size=kvd_subset_size,
        seed=seed,
        av_align=AVAlignConfig.version(
            av_align_version,
            window_frames=window_frames,
            min_onset_spacing=onset_spacing,
            **({} if matching is None else {"matching": matching}),
            **({} if flow_threshold is None else {"flow_threshold": flow_threshold}),
        ),
    )
    if imagebind_model and imagebind_weights:
        raise typer.BadParameter("give --imagebind-model or --imagebind-weights, not both")
    if captions and imagebind_weights and imagebind_bpe is None:
        raise typer.BadParameter("--captions with --imagebind-weights needs --imagebind-bpe")
    model = _load_factory(imagebind_model) if imagebind_model else None
    if imagebind_weights is not None:
        model = load_imagebind(imagebind_weights, imagebind_bpe, device=device)
    caption_map = json.loads(captions.read_text()) if captions else None
    report = evaluate_directories(
        generated, reference, options, audio_ex, video_ex, model, caption_map
    )
    json_path, md_path = write_report(report, out)
    typer.echo(md_path.read_text())
    for item in report["skipped"]:
        typer.echo(f"skipped ({item['set']}): {item['path']}: {item['reason']}", err=True)
    typer.echo(f"wrote {json_path} and {md_path}")
