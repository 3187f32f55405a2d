"""`mmdisco evaluate`: FAD / FVD / KVD / ImageBind / AV-Align / PANNs / DeSync / CLAP over two
directories of samples."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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


# The command's options, one alias each, so that the command's signature reads as a list.
GeneratedOption = Annotated[Path, typer.Option(help="Directory of generated samples.")]
OutOption = Annotated[Path, typer.Option(help="Output directory for metrics.json / metrics.md.")]
ReferenceOption = Annotated[
    Path | None, typer.Option(help="Directory of reference samples (FAD/FVD/KVD/PANNs).")
]
ProtocolOption = Annotated[
    str | None,
    typer.Option(help=f"Paper-table preset ({', '.join(PROTOCOLS)}); see docs/metrics.md."),
]
MetricsOption = Annotated[
    str | None,
    typer.Option(help=f"Comma list of {','.join(ALL_METRICS)} (default: fad,fvd,kvd,av_align)."),
]
ExtractorOption = Annotated[
    str, typer.Option(help="'offline' (no weights, NOT comparable) or 'pretrained'.")
]
VggishWeightsOption = Annotated[
    Path | None, typer.Option(help="VGGish safetensors (pretrained FAD).")
]
I3dWeightsOption = Annotated[
    Path | None, typer.Option(help="I3D safetensors (pretrained FVD/KVD).")
]
FadInputOption = Annotated[
    str | None,
    typer.Option(help="FAD waveform input: audioldm_eval (default) or torchvggish."),
]
FvdReferenceClipsOption = Annotated[
    str | None,
    typer.Option(help="FVD reference clips: first 16 frames or a random window (StyleGAN-V)."),
]
PannsWeightsOption = Annotated[
    Path | None, typer.Option(help="PANNs CNN14 safetensors (fd_panns, kl_panns, is_panns).")
]
SyncModelOption = Annotated[
    str | None,
    typer.Option(help="'module:factory' returning a Synchformer-interface model (desync)."),
]
SyncWeightsOption = Annotated[
    Path | None,
    typer.Option(help="Built-in Synchformer: safetensors from `convert synchformer` (desync)."),
]
ClapModelOption = Annotated[
    Path | None, typer.Option(help="Local transformers CLAP checkpoint directory (clap).")
]
ImagebindModelOption = Annotated[
    str | None,
    typer.Option(help="'module:factory' returning an EmbeddingModel (needed for ib)."),
]
ImagebindWeightsOption = Annotated[
    Path | None,
    typer.Option(help="Built-in ImageBind: safetensors from `convert imagebind` (for ib)."),
]
ImagebindBpeOption = Annotated[
    Path | None,
    typer.Option(help="CLIP BPE vocab (bpe_simple_vocab_16e6.txt.gz) for IB-TV / IB-TA."),
]
CaptionsOption = Annotated[
    Path | None, typer.Option(help="JSON {file stem: caption} for IB-TV / IB-TA and CLAP.")
]
FpsOption = Annotated[float, typer.Option(help="Frame rate of frame-image folders.")]
PreferWavOption = Annotated[
    bool, typer.Option(help="Read a video's audio from a same-stem .wav/.flac/.ogg if present.")
]
GroundTruthOption = Annotated[
    bool, typer.Option(help="Also compute IB-AV / AV-Align / DeSync on the reference set.")
]
OnsetSpacingOption = Annotated[
    float | None, typer.Option(help="AV-Align minimum onset spacing in s (0.768/fps).")
]
WindowFramesOption = Annotated[float, typer.Option(help="AV-Align match window, frames.")]
AvAlignVersionOption = Annotated[
    str | None,
    typer.Option(help=f"AV-Align script version: {' or '.join(VERSIONS)} (default 2025)."),
]
MatchingOption = Annotated[
    str | None,
    typer.Option(help="AV-Align matching: one_to_one or one_to_many (default: version's)."),
]
FlowThresholdOption = Annotated[
    float | None,
    typer.Option(help="AV-Align: ignore flow peaks below this many px (default: version's)."),
]
KvdModeOption = Annotated[
    str | None,
    typer.Option(help="KVD: 'mmdiffusion' (all rows, default) or 'subsets' (KID)."),
]
KvdSubsetsOption = Annotated[int, typer.Option(help="KVD subsets mode: number of subsets.")]
KvdSubsetSizeOption = Annotated[
    int, typer.Option(help="KVD: samples per subset (capped at the set size).")
]
SeedOption = Annotated[
    int, typer.Option(help="Seed for KVD subsets, FVD reference windows, offline features.")
]
DeviceOption = Annotated[str, typer.Option(help="Torch device for the feature extractors.")]
MaxSecondsOption = Annotated[
    float | None,
    typer.Option(
        help="Evaluate the first S seconds of every sample (long files: memory follows S, "
        "not the file)."
    ),
]


@dataclass
class ScoringOptions:
    """How the metrics are computed (``--protocol`` fills what is not given)."""

    protocol: str | None
    metrics: str | None
    fps: float
    prefer_wav: bool
    ground_truth: bool
    fvd_reference_clips: str | None
    onset_spacing: float | None
    window_frames: float
    av_align_version: str | None
    matching: str | None
    flow_threshold: float | None
    kvd_mode: str | None
    kvd_subsets: int
    kvd_subset_size: int
    seed: int
    max_seconds: float | None

    def eval_options(self) -> EvalOptions:
        """The :class:`EvalOptions`; unknown metric names are an error naming ``metrics``."""
        preset = get_protocol(self.protocol) if self.protocol else None
        chosen = (
            tuple(m.strip() for m in self.metrics.split(",") if m.strip())
            if self.metrics
            else (preset.metrics if preset else ("fad", "fvd", "kvd", "av_align"))
        )
        version = self.av_align_version or (preset.av_align_version if preset else "2025-02-13")
        onset_spacing = self.onset_spacing
        if onset_spacing is None and preset is not None:
            onset_spacing = preset.onset_spacing
        matching = {} if self.matching is None else {"matching": self.matching}
        flow = {} if self.flow_threshold is None else {"flow_threshold": self.flow_threshold}
        options = EvalOptions(
            metrics=chosen,
            fps=self.fps,
            kvd_mode=self.kvd_mode or (preset.kvd_mode if preset else "mmdiffusion"),
            kvd_subsets=self.kvd_subsets,
            kvd_subset_size=self.kvd_subset_size,
            fvd_reference_clips=self.fvd_reference_clips
            or (preset.fvd_reference_clips if preset else "first"),
            seed=self.seed,
            prefer_sibling_audio=self.prefer_wav,
            ground_truth=self.ground_truth,
            av_align=AVAlignConfig.version(
                version,
                window_frames=self.window_frames,
                min_onset_spacing=onset_spacing,
                **matching,
                **flow,
            ),
            protocol=preset,
            max_seconds=self.max_seconds,
        )
        unknown = sorted(set(chosen) - set(ALL_METRICS))
        if unknown or not chosen:
            raise InputError(
                f"choose from {','.join(ALL_METRICS)}, got {self.metrics!r}", "metrics"
            )
        return options


@dataclass
class ModelSources:
    """Where the feature extractors and scoring networks come from, and their device."""

    extractor: str
    vggish_weights: Path | None
    i3d_weights: Path | None
    fad_input: str | None
    panns_weights: Path | None
    sync_model: str | None
    sync_weights: Path | None
    clap_model: Path | None
    imagebind_model: str | None
    imagebind_weights: Path | None
    imagebind_bpe: Path | None
    captions: Path | None
    device: str

    def check_device(self) -> None:
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise InputError(f"not a torch device ({err})", "device") from None

    def fidelity(self, options: EvalOptions) -> tuple[FeatureExtractor | None, ...]:
        """(audio, video) extractors for FAD and FVD/KVD."""
        protocol = options.protocol
        fad_input = self.fad_input or (protocol.fad_input if protocol else "audioldm_eval")
        return _fidelity_extractors(
            self.extractor,
            options.metrics,
            self.vggish_weights,
            self.i3d_weights,
            fad_input,
            options.seed,
            self.device,
        )

    def panns(self, chosen: tuple[str, ...]) -> Any:
        if not {"fd_panns", "kl_panns", "is_panns"} & set(chosen):
            return None
        if self.panns_weights is None:
            raise InputError("is needed by fd_panns / kl_panns / is_panns", "panns_weights")
        from mmdisco.metrics.panns import PANNsExtractor

        return PANNsExtractor(self.panns_weights, device=self.device)

    def desync(self, chosen: tuple[str, ...]) -> Any:
        if "desync" not in chosen:
            return None
        if (self.sync_model is None) == (self.sync_weights is None):
            raise InputError("desync needs one of --sync-weights or --sync-model (docs/metrics.md)")
        from mmdisco.metrics.desync import DeSync

        if self.sync_weights is not None:
            from mmdisco.metrics.synchformer import load_synchformer

            net = load_synchformer(self.sync_weights, device=self.device)
        else:
            net = _load_factory(self.sync_model, "sync_model")
        return DeSync(net, device=self.device)

    def clap(self, chosen: tuple[str, ...]) -> Any:
        if "clap" not in chosen:
            return None
        if self.clap_model is None:
            raise InputError("is needed by clap (a local CLAP checkpoint directory)", "clap_model")
        from mmdisco.metrics.clap import ClapScorer

        return ClapScorer(self.clap_model, device=self.device)

    def imagebind(self) -> Any:
        if self.imagebind_model and self.imagebind_weights:
            raise InputError("give --imagebind-model or --imagebind-weights, not both")
        if self.captions and self.imagebind_weights and self.imagebind_bpe is None:
            raise InputError("is needed by --captions with --imagebind-weights", "imagebind_bpe")
        model = None
        if self.imagebind_model:
            model = _load_factory(self.imagebind_model, "imagebind_model")
        if self.imagebind_weights is not None:
            from mmdisco.metrics.imagebind_model import load_imagebind

            model = load_imagebind(self.imagebind_weights, self.imagebind_bpe, device=self.device)
        return model

    def caption_map(self) -> dict[str, str] | None:
        caption_map = read_json(self.captions) if self.captions else None
        if caption_map is not None and not (
            isinstance(caption_map, dict) and all(isinstance(v, str) for v in caption_map.values())
        ):
            raise InputError("must map file stems to caption strings", str(self.captions))
        return caption_map


@app.command("evaluate")
def evaluate(
    generated: GeneratedOption,
    out: OutOption,
    reference: ReferenceOption = None,
    protocol: ProtocolOption = None,
    metrics: MetricsOption = None,
    extractor: ExtractorOption = "offline",
    vggish_weights: VggishWeightsOption = None,
    i3d_weights: I3dWeightsOption = None,
    fad_input: FadInputOption = None,
    fvd_reference_clips: FvdReferenceClipsOption = None,
    panns_weights: PannsWeightsOption = None,
    sync_model: SyncModelOption = None,
    sync_weights: SyncWeightsOption = None,
    clap_model: ClapModelOption = None,
    imagebind_model: ImagebindModelOption = None,
    imagebind_weights: ImagebindWeightsOption = None,
    imagebind_bpe: ImagebindBpeOption = None,
    captions: CaptionsOption = None,
    fps: FpsOption = 8.0,
    prefer_wav: PreferWavOption = True,
    ground_truth: GroundTruthOption = True,
    onset_spacing: OnsetSpacingOption = None,
    window_frames: WindowFramesOption = 1.0,
    av_align_version: AvAlignVersionOption = None,
    matching: MatchingOption = None,
    flow_threshold: FlowThresholdOption = None,
    kvd_mode: KvdModeOption = None,
    kvd_subsets: KvdSubsetsOption = 100,
    kvd_subset_size: KvdSubsetSizeOption = 1000,
    seed: SeedOption = 0,
    device: DeviceOption = "cpu",
    max_seconds: MaxSecondsOption = None,
) -> None:
    """Evaluate generated samples (mp4, wav, or frame folders) against references."""
    scoring = ScoringOptions(
        protocol,
        metrics,
        fps,
        prefer_wav,
        ground_truth,
        fvd_reference_clips,
        onset_spacing,
        window_frames,
        av_align_version,
        matching,
        flow_threshold,
        kvd_mode,
        kvd_subsets,
        kvd_subset_size,
        seed,
        max_seconds,
    )
    sources = ModelSources(
        extractor,
        vggish_weights,
        i3d_weights,
        fad_input,
        panns_weights,
        sync_model,
        sync_weights,
        clap_model,
        imagebind_model,
        imagebind_weights,
        imagebind_bpe,
        captions,
        device,
    )
    run_evaluation(generated, reference, out, scoring, sources)


def run_evaluation(
    generated: Path,
    reference: Path | None,
    out: Path,
    scoring: ScoringOptions,
    sources: ModelSources,
) -> None:
    """What ``mmdisco evaluate`` does: every input checked before the features are read."""
    options = scoring.eval_options()
    sources.check_device()
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails before the features
    chosen = options.metrics
    audio_ex, video_ex = sources.fidelity(options)
    panns, desync, clap = sources.panns(chosen), sources.desync(chosen), sources.clap(chosen)
    model = sources.imagebind()
    report = evaluate_directories(
        generated,
        reference,
        options,
        audio_ex,
        video_ex,
        model,
        sources.caption_map(),
        panns,
        desync,
        clap,
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
