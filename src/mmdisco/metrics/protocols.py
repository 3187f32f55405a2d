"""Evaluation protocols: the settings behind each paper table, so a number can be quoted.

A protocol fixes which metrics are computed and how (script versions, input modes, clip
sampling) and states what the samples must be (count, frame rate, length, resolution). The
settings go into ``metrics.json``; sample counts and frame rates that differ from the
protocol are reported as warnings. docs/metrics.md explains each table's choices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Protocol:
    """One paper table's evaluation settings (see the module docstring)."""

    name: str
    table: str
    metrics: tuple[str, ...]
    num_samples: int
    fps: float
    seconds: float
    resolution: str
    fad_input: str = "audioldm_eval"
    kvd_mode: str = "mmdiffusion"
    fvd_reference_clips: str = "random"  # StyleGAN-V samples a random window of real videos
    av_align_version: str = "2025-02-13"
    onset_spacing: float | None = None  # None: 0.768 / fps
    # DeSync reads the first desync_seconds of a clip; its last 4.8 s window ends there
    # (av-benchmark's --audio_length).
    desync_seconds: float = 8.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return asdict(self)


_GROUND_TRUTH = (
    "Ground-truth row: IB-AV, AV-Align and DeSync are also computed on the reference set "
    "(`*_reference`); the GT FVD / FAD compare a second real split with the reference "
    "(run it as --generated)."
)


def _mm_diffusion_table(name: str, dataset: str) -> Protocol:
    """MMDisCo Table 2: the in-domain setting on MM-Diffusion's 1.6 s, 10 fps clips."""
    return Protocol(
        name=name,
        table=f"MMDisCo (ICLR 2025) Table 2: {dataset}, MM-Diffusion base (in-domain)",
        metrics=("fvd", "fad", "ib"),
        num_samples=2048,
        fps=10.0,
        seconds=1.6,
        resolution="as generated (MM-Diffusion: 64x64, 256x256 after its SR model)",
        notes=(
            "1.6 s clips: audioldm_eval pads them to 2 s, so each gives 2 VGGish rows.",
            _GROUND_TRUTH,
        ),
    )


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="mmdisco-t2av-vggsound",
            table="MMDisCo (ICLR 2025) Table 4 and Table 13: VGGSound, text-to-audio-video",
            metrics=("fvd", "fad", "ib", "av_align"),
            num_samples=2048,
            fps=8.0,
            seconds=2.0,
            resolution="256x256 (32x32 latents of Table 6)",
            av_align_version="2023-10-26",
            onset_spacing=0.096,
            notes=(
                "IB-TV and IB-TA need --captions (the VGGSound class labels).",
                "AV-Align: the 2023 script with a 96 ms onset interval (appendix A.10.1).",
                _GROUND_TRUTH,
            ),
        ),
        Protocol(
            name="mmdisco-t2av-landscape",
            table="MMDisCo (ICLR 2025) Table 3: Landscape, text-to-audio-video",
            metrics=("fvd", "fad", "ib"),
            num_samples=2048,
            fps=8.0,
            seconds=2.0,
            resolution="256x256 (32x32 latents of Table 6)",
            notes=("IB-TV and IB-TA need --captions (InstructBLIP captions).", _GROUND_TRUTH),
        ),
        _mm_diffusion_table("mmdisco-landscape", "Landscape"),
        _mm_diffusion_table("mmdisco-aist", "AIST++"),
        Protocol(
            name="av-benchmark",
            table="hkchengrex/av-benchmark (MMAudio and later): the 2026 audio set",
            metrics=("fd_panns", "kl_panns", "is_panns", "ib", "desync", "clap"),
            num_samples=0,  # the test set as a whole
            fps=25.0,
            seconds=8.0,
            resolution="any (224 crops)",
            desync_seconds=8.0,
            notes=(
                "KL pairs generated and reference samples by file name.",
                "IB here follows ImageBind's data.py, not av-benchmark's 0.5 fps bicubic frames.",
                "DeSync needs --sync-weights (convert synchformer) or --sync-model; it scores "
                "the first 8 s (--desync-seconds; av-benchmark's --audio_length).",
                "CLAP needs --clap-model and --captions.",
            ),
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {list(PROTOCOLS)}")
    return PROTOCOLS[name]
