"""`mmdisco evaluate`: FAD / FVD / KVD / ImageBind / AV-Align / PANNs / DeSync / CLAP over two
directories of samples."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import torch
import typer

from mmdisco.cli import app
from mmdisco.errors import InputError
from mmdisco.io import read_json
from mmdisco.metrics.av_align import VERSIONS, AVAlignConfig
from mmdisco.metrics.base import FeatureExtractor
from mmdisco.metrics.evaluate import ALL_METRICS, EvalOptions, evaluate_directories, write_report
from mmdisco.metrics.protocols import PROTOCOLS, get_protocol


def _load_factory(spec: str, option: str):
    """'package.module:callable' -> callable() (a user-supplied model)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise InputError(f"expected 'module:callable', got {spec!r}", option)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InputError(f"cannot import {spec!r} ({err})", option) from None
    return factory()


@app.command("evaluate")
def evaluate(
    generated: Annotated[Path, typer.Option(help="Directory of generated samples.")],
    out: Annotated[Path, typer.Option(help="Output directory for metrics.json / metrics.md.")],
    reference: Annotated[
        Path | None, typer.Option(help="Directory of reference samples (FAD/FVD/KVD/PANNs).")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(help=f"Paper-table preset ({', '.join(PROTOCOLS)}); see docs/metrics.md."),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help=f"Comma list of {','.join(ALL_METRICS)} (default: fad,fvd,kvd,av_align)."
        ),
    ] = None,
    extractor: Annotated[
        str, typer.Option(help="'offline' (no weights, NOT comparable) or 'pretrained'.")
    ] = "offline",
    vggish_weights: Annotated[
        Path | None, typer.Option(help="VGGish safetensors (pretrained FAD).")
    ] = None,
    i3d_weights: Annotated[
        Path | None, typer.Option(help="I3D safetensors (pretrained FVD/KVD).")
    ] = None,
    fad_input: Annotated[
        str | None,
        typer.Option(help="FAD waveform input: audioldm_eval (default) or torchvggish."),
    ] = None,
    fvd_reference_clips: Annotated[
        str | None,
        typer.Option(help="FVD reference clips: first 16 frames or a random window (StyleGAN-V)."),
    ] = None,
    panns_weights: Annotated[
        Path | None, typer.Option(help="PANNs CNN14 safetensors (fd_panns, kl_panns, is_panns).")
    ] = None,
    sync_model: Annotated[
        str | None,
        typer.Option(help="'module:factory' returning a Synchformer-interface model (desync)."),
    ] = None,
    sync_weights: Annotated[
        Path | None,
        typer.Option(help="Built-in Synchformer: safetensors from `convert synchformer` (desync)."),
    ] = None,
    clap_model: Annotated[
        Path | None, typer.Option(help="Local transformers CLAP checkpoint directory (clap).")
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
        Path | None, typer.Option(help="JSON {file stem: caption} for IB-TV / IB-TA and CLAP.")
    ] = None,
    fps: Annotated[float, typer.Option(help="Frame rate of frame-image folders.")] = 8.0,
    prefer_wav: Annotated[
        bool, typer.Option(help="Read a video's audio from a same-stem .wav/.flac/.ogg if present.")
    ] = True,
    ground_truth: Annotated[
        bool, typer.Option(help="Also compute IB-AV / AV-Align / DeSync on the reference set.")
    ] = True,
    onset_spacing: Annotated[
        float | None, typer.Option(help="AV-Align minimum onset spacing in s (0.768/fps).")
    ] = None,
    window_frames: Annotated[float, typer.Option(help="AV-Align match window, frames.")] = 1.0,
    av_align_version: Annotated[
        str | None,
        typer.Option(help=f"AV-Align script version: {' or '.join(VERSIONS)} (default 2025)."),
    ] = None,
    matching: Annotated[
        str | None,
        typer.Option(help="AV-Align matching: one_to_one or one_to_many (default: version's)."),
    ] = None,
    flow_threshold: Annotated[
        float | None,
        typer.Option(help="AV-Align: ignore flow peaks below this many px (default: version's)."),
    ] = None,
    kvd_mode: Annotated[
        str | None,
        typer.Option(help="KVD: 'mmdiffusion' (all rows, default) or 'subsets' (KID)."),
    ] = None,
    kvd_subsets: Annotated[int, typer.Option(help="KVD subsets mode: number of subsets.")] = 100,
    kvd_subset_size: Annotated[
        int, typer.Option(help="KVD: samples per subset (capped at the set size).")
    ] = 1000,
    seed: Annotated[
        int, typer.Option(help="Seed for KVD subsets, FVD reference windows, offline features.")
    ] = 0,
    device: Annotated[str, typer.Option(help="Torch device for the feature extractors.")] = "cpu",
    max_seconds: Annotated[
        float | None,
        typer.Option(
            help="Evaluate the first S seconds of every sample (long files: memory follows S, "
            "not the file)."
        ),
    ] = None,
) -> None:
    """Evaluate generated samples (mp4, wav, or frame folders) against references."""
    preset = get_protocol(protocol) if protocol else None
    chosen = (
        tuple(m.strip() for m in metrics.split(",") if m.strip())
        if metrics
        else (preset.metrics if preset else ("fad", "fvd", "kvd", "av_align"))
    )
    version = av_align_version or (preset.av_align_version if preset else "2025-02-13")
    if onset_spacing is None and preset is not None:
        onset_spacing = preset.onset_spacing
    options = EvalOptions(
        metrics=chosen,
        fps=fps,
        kvd_mode=kvd_mode or (preset.kvd_mode if preset else "mmdiffusion"),
        kvd_subsets=kvd_subsets,
        kvd_subset_size=kvd_subset_size,
        fvd_reference_clips=fvd_reference_clips
        or (preset.fvd_reference_clips if preset else "first"),
        seed=seed,
        prefer_sibling_audio=prefer_wav,
        ground_truth=ground_truth,
        av_align=AVAlignConfig.version(
            version,
            window_frames=window_frames,
            min_onset_spacing=onset_spacing,
            **({} if matching is None else {"matching": matching}),
            **({} if flow_threshold is None else {"flow_threshold": flow_threshold}),
        ),
        protocol=preset,
        max_seconds=max_seconds,
    )
    unknown = sorted(set(chosen) - set(ALL_METRICS))
    if unknown or not chosen:
        raise InputError(f"choose from {','.join(ALL_METRICS)}, got {metrics!r}", "metrics")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise InputError(f"not a torch device ({err})", "device") from None
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails before the features
    fad_input = fad_input or (preset.fad_input if preset else "audioldm_eval")
    audio_ex, video_ex = _fidelity_extractors(
        extractor, chosen, vggish_weights, i3d_weights, fad_input, seed, device
    )
    panns = None
    if {"fd_panns", "kl_panns", "is_panns"} & set(chosen):
        if panns_weights is None:
            raise InputError("is needed by fd_panns / kl_panns / is_panns", "panns_weights")
        from mmdisco.metrics.panns import PANNsExtractor

        panns = PANNsExtractor(panns_weights, device=device)
    desync = None
    if "desync" in chosen:
        if (sync_model is None) == (sync_weights is None):
            raise InputError("desync needs one of --sync-weights or --sync-model (docs/metrics.md)")
        from mmdisco.metrics.desync import DeSync

        if sync_weights is not None:
            from mmdisco.metrics.synchformer import load_synchformer

            net = load_synchformer(sync_weights, device=device)
        else:
            net = _load_factory(sync_model, "sync_model")
        desync = DeSync(net, device=device)
    clap = None
    if "clap" in chosen:
        if clap_model is None:
            raise InputError("is needed by clap (a local CLAP checkpoint directory)", "clap_model")
        from mmdisco.metrics.clap import ClapScorer

        clap = ClapScorer(clap_model, device=device)
    if imagebind_model and imagebind_weights:
        raise InputError("give --imagebind-model or --imagebind-weights, not both")
    if captions and imagebind_weights and imagebind_bpe is None:
        raise InputError("is needed by --captions with --imagebind-weights", "imagebind_bpe")
    model = _load_factory(imagebind_model, "imagebind_model") if imagebind_model else None
    if imagebind_weights is not None:
        from mmdisco.metrics.imagebind_model import load_imagebind

        model = load_imagebind(imagebind_weights, imagebind_bpe, device=device)
    caption_map = read_json(captions) if captions else None
    if caption_map is not None and not (
        isinstance(caption_map, dict) and all(isinstance(v, str) for v in caption_map.values())
    ):
        raise InputError("must map file stems to caption strings", str(captions))
    report = evaluate_directories(
        generated, reference, options, audio_ex, video_ex, model, caption_map, panns, desync, clap
    )
    json_path, md_path = write_report(report, out)
    typer.echo(md_path.read_text())
    for item in report["skipped"]:
        what = "" if item["metric"] == "all" else f" [{item['metric']}]"
        typer.echo(f"skipped ({item['set']}){what}: {item['path']}: {item['reason']}", err=True)
    typer.echo(f"wrote {json_path} and {md_path}")


def _fidelity_extractors(
    extractor: str,
    chosen: tuple[str, ...],
    vggish_weights: Path | None,
    i3d_weights: Path | None,
    fad_input: str,
    seed: int,
    device: str,
) -> tuple[FeatureExtractor | None, FeatureExtractor | None]:
    """(audio, video) extractors for FAD and FVD/KVD: offline ones or the published networks."""
    from mmdisco.metrics.i3d import I3DExtractor
    from mmdisco.metrics.offline import OfflineAudioExtractor, OfflineVideoExtractor
    from mmdisco.metrics.vggish import VGGishExtractor

    if extractor == "offline":
        return OfflineAudioExtractor(seed=seed), OfflineVideoExtractor()
    if extractor != "pretrained":
        raise InputError(f"must be 'offline' or 'pretrained', got {extractor!r}", "extractor")
    need_a, need_v = "fad" in chosen, bool({"fvd", "kvd"} & set(chosen))
    if need_a and vggish_weights is None:
        raise InputError("is needed by --extractor pretrained with fad", "vggish_weights")
    if need_v and i3d_weights is None:
        raise InputError("is needed by --extractor pretrained with fvd/kvd", "i3d_weights")
    audio = (
        VGGishExtractor(vggish_weights, device=device, audio_input=fad_input) if need_a else None
    )
    video = I3DExtractor(i3d_weights, device=device) if need_v else None
    return audio, video


@app.command("convert")
def convert_cmd(
    arch: Annotated[str, typer.Argument(help="vggish, i3d, imagebind, panns or synchformer")],
    src: Annotated[Path, typer.Argument(help="the published PyTorch checkpoint (.pth / .pt)")],
    dst: Annotated[Path, typer.Argument(help="the safetensors file to write")],
    variant: Annotated[
        str | None, typer.Option(help="i3d only: tfhub or deepmind (default: from the name)")
    ] = None,
) -> None:
    """Convert a published checkpoint to the safetensors file the extractors load (tensors
    only: torch.load(weights_only=True) refuses pickled code)."""
    from mmdisco.metrics.convert import convert

    typer.echo(convert(arch, src, dst, variant))
