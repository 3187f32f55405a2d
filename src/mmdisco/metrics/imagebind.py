"""ImageBind scores (IB-AV, IB-TV, IB-TA): preprocessing + score over any embedding model.

The ImageBind-Huge encoders live in :mod:`mmdisco.metrics.imagebind_model`; any other model
exposing ``embed(modality, batch) -> (n, D)`` can stand behind :class:`EmbeddingModel`.
What is implemented follows facebookresearch/ImageBind ``data.py``:

* audio: every channel resampled to 16 kHz (torchaudio's sinc filter), 3 clips of 2 s evenly
  spaced over the clip (pytorchvideo ``ConstantClipsPerVideoSampler``, exact fractions), each
  clip minus its mean over all channels, Kaldi fbank of channel 0 (128 mel bins, 25 ms Hann
  window, 10 ms shift, dither 0, pre-emphasis 0.97, DC removal, low 20 Hz, no energy),
  pad/crop to 204 frames, normalise with mean -4.268 / std 9.138 -> (3, 1, 128, 204).
* vision (video): 5 clips of 2 s evenly spaced; frames ``ceil(fps * start)`` to
  ``ceil(fps * end) - 1`` (decord ``get_clip``), of which the first and last
  (``UniformTemporalSubsample(2)``); short side scaled to 224 with the long side floored
  (bilinear), CLIP mean/std normalisation, 3 spatial crops of 224 whose centre offset is
  rounded up -> (15, 3, 2, 224, 224).
* text: passed through as strings; tokenisation belongs to the model.

The score of a pair is the cosine similarity of the clip-averaged embeddings; the reported
IB score is its mean over pairs (raw cosine in [-1, 1], not multiplied by 100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from mmdisco.metrics.base import resample

AUDIO_SAMPLE_RATE = 16000
AUDIO_CLIP_SECONDS = 2.0
AUDIO_CLIPS = 3
AUDIO_MEL_BINS = 128
AUDIO_TARGET_FRAMES = 204
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
VIDEO_CLIP_SECONDS = 2.0
VIDEO_CLIPS = 5
VIDEO_FRAMES_PER_CLIP = 2
VISION_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class EmbeddingModel(Protocol):
    """A joint embedding model (ImageBind or a stand-in): one embedding per input row."""

    def embed(self, modality: str, inputs: torch.Tensor | Sequence[str]) -> torch.Tensor:
        """``modality`` in {"audio", "vision", "text"} -> (n, D) embeddings."""
        ...


def clip_starts(duration: float, clip_duration: float, clips: int) -> list[Fraction]:
    """pytorchvideo ConstantClipsPerVideoSampler: evenly spaced clip start times, exact
    fractions of the (float) longest start, as the sampler computes them."""
    max_start = Fraction(max(duration - clip_duration, 0))
    step = max_start / max(clips - 1, 1)
    return [step * i for i in range(clips)]


def _kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_hz: float) -> np.ndarray:
    """Kaldi's triangular mel filters (torchaudio.compliance.kaldi.get_mel_banks, no VTLN)."""

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)

    high_hz = sample_rate / 2.0
    delta = (mel(high_hz) - mel(low_hz)) / (num_bins + 1)
    left = mel(low_hz) + np.arange(num_bins)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    bin_mel = mel(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    banks = np.maximum(
        0.0, np.minimum((bin_mel - left) / (center - left), (right - bin_mel) / (right - center))
    )
    return np.pad(banks, ((0, 0), (0, 1)))  # zero weight on the Nyquist bin


def kaldi_fbank(
    waveform: np.ndarray, sample_rate: int, num_bins: int = AUDIO_MEL_BINS
) -> np.ndarray:
    """(N,) float waveform -> (frames, num_bins) log mel energies, Kaldi/ImageBind settings."""
    window, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
    x = np.asarray(waveform, np.float64)
    if x.shape[0] < window:
        return np.zeros((0, num_bins))
    count = 1 + (x.shape[0] - window) // shift  # snip_edges=True
    frames = x[np.arange(window)[None, :] + shift * np.arange(count)[:, None]]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - 0.97 * previous  # preemphasis (first sample uses itself)
    frames = frames * np.hanning(window)  # symmetric Hann = Kaldi "hanning"
    fft_size = 2 ** int(np.ceil(np.log2(window)))
    power = np.abs(np.fft.rfft(frames, fft_size)) ** 2
    mel = power @ _kaldi_mel_banks(num_bins, fft_size, sample_rate, 20.0).T
    return np.log(np.maximum(mel, np.finfo(np.float32).eps))


def preprocess_audio(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """Audio (N,) or (C, N) -> (3, 1, 128, 204) normalised fbank clips, as ``data.py``'s
    ``load_and_transform_audio_data``: every channel resampled to 16 kHz with torchaudio's
    sinc filter, clips cut at ``int(t * 16000)``, each clip minus its mean over all
    channels, and Kaldi's fbank reading channel 0."""
    audio = np.asarray(samples, np.float32)
    audio = audio[None] if audio.ndim == 1 else audio
    if audio.ndim != 2:
        raise ValueError(f"audio must be (N,) or (C, N), got shape {np.shape(samples)}")
    audio = resample(audio, sample_rate, AUDIO_SAMPLE_RATE, method="torchaudio")
    duration = audio.shape[1] / AUDIO_SAMPLE_RATE
    clips = []
    for start in clip_starts(duration, AUDIO_CLIP_SECONDS, AUDIO_CLIPS):
        end = start + int(AUDIO_CLIP_SECONDS)
        piece = audio[:, int(start * AUDIO_SAMPLE_RATE) : int(end * AUDIO_SAMPLE_RATE)]
        fbank = kaldi_fbank((piece - piece.mean())[0], AUDIO_SAMPLE_RATE).T  # (128, frames)
        pad = AUDIO_TARGET_FRAMES - fbank.shape[1]
        fbank = np.pad(fbank, ((0, 0), (0, pad))) if pad > 0 else fbank[:, :AUDIO_TARGET_FRAMES]
        clips.append(fbank)
    x = torch.from_numpy(np.stack(clips).astype(np.float32)).unsqueeze(1)
    return (x - AUDIO_MEAN) / AUDIO_STD


def clip_frame_indices(count: int, fps: float, start: Fraction, end: Fraction) -> list[int]:
    """Frames of one clip as ``data.py`` decodes them: pytorchvideo's decord ``get_clip``
    keeps frames ``ceil(fps * start) .. ceil(fps * end) - 1`` (capped at the video's end) and
    ``UniformTemporalSubsample(2)`` keeps ``linspace(0, t - 1, 2)`` of them, truncated."""
    first = math.ceil(fps * start)
    stop = min(math.ceil(fps * end), count)
    t = stop - first
    if t < 1:
        raise ValueError(f"ImageBind clip {float(start):.3f}-{float(end):.3f} s holds no frame")
    picks = torch.linspace(0, t - 1, VIDEO_FRAMES_PER_CLIP).clamp(0, t - 1).long()
    return [first + int(i) for i in picks]


def short_side_scale(x: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo ``short_side_scale``: short side -> ``size``, the long side floored,
    bilinear without antialiasing, on (..., H, W)."""
    h, w = x.shape[-2:]
    new = (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))
    return F.interpolate(x, size=new, mode="bilinear", align_corners=False)


def three_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """ImageBind ``SpatialCrop(num_crops=3)`` (slowfast ``uniform_crop``): start, centre
    (offset rounded up) and end along the long side, centred on the short side."""
    h, w = x.shape[-2:]
    y0, x0 = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if h > w:
        return [x[..., o : o + size, x0 : x0 + size] for o in (0, y0, h - size)]
    return [x[..., y0 : y0 + size, o : o + size] for o in (0, x0, w - size)]


def preprocess_video(frames: np.ndarray, fps: float) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> (15, 3, 2, 224, 224): 5 clips x 3 crops, as ``data.py``'s
    ``load_and_transform_video_data`` (duration = F / fps, the decord reader's)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be (F, H, W, 3), got shape {frames.shape}")
    count = frames.shape[0]
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    clips = []
    for start in clip_starts(count / fps, VIDEO_CLIP_SECONDS, VIDEO_CLIPS):
        idx = clip_frame_indices(count, fps, start, start + int(VIDEO_CLIP_SECONDS))
        clip = torch.from_numpy(frames[idx]).float().permute(0, 3, 1, 2) / 255.0  # (T, 3, H, W)
        clip = (short_side_scale(clip, VISION_SIZE) - mean) / std
        clips.extend(three_crops(clip.permute(1, 0, 2, 3), VISION_SIZE))  # (3, T, H, W) each
    return torch.stack(clips)


def pooled_embedding(model: EmbeddingModel, modality: str, batch: torch.Tensor) -> torch.Tensor:
    """Embed all clips/crops of one item, average them (ImageBind's aggregation), L2-normalise."""
    with torch.no_grad():
        return F.normalize(model.embed(modality, batch).float().mean(dim=0), dim=-1)


def scores_from_embeddings(
    audio: torch.Tensor | None = None,
    video: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean cosine similarity of row-aligned (n, D) embeddings: keys ib_av, ib_tv, ib_ta."""
    emb = {
        k: F.normalize(v.float(), dim=-1)
        for k, v in (("a", audio), ("v", video), ("t", text))
        if v is not None
    }
    sizes = {k: v.shape[0] for k, v in emb.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"ImageBind inputs must be paired, got counts {sizes}")
    out = {}
    for key, (p, q) in {"ib_av": ("a", "v"), "ib_tv": ("t", "v"), "ib_ta": ("t", "a")}.items():
        if p in emb and q in emb:
            out[key] = float((emb[p] * emb[q]).sum(dim=-1).mean())
    return out


def imagebind_scores(
    model: EmbeddingModel,
    audio: Sequence[torch.Tensor] | None = None,
    video: Sequence[torch.Tensor] | None = None,
    text: Sequence[str] | None = None,
) -> dict[str, float]:
    """IB scores of aligned items given per-item preprocessed batches and/or captions.

    ``audio`` / ``video`` hold :func:`preprocess_audio` / :func:`preprocess_video` outputs;
    items at the same index belong to the same sample.
    """
    a = None if audio is None else torch.stack([pooled_embedding(model, "audio", x) for x in audio])
    v = (
        None
        if video is None
        else torch.stack([pooled_embedding(model, "vision", x) for x in video])
    )
    t = None
    if text is not None:
        with torch.no_grad():
            t = model.embed("text", list(text))
    return scores_from_embeddings(a, v, t)
