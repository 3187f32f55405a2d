"""DeSync (av-benchmark / MMAudio): the audio-video offset Synchformer predicts, in seconds.

What is implemented, following hkchengrex/av-benchmark (``extract.py``, ``extract_video.py``,
``evaluate.py``, ``data/*_dataset.py``):

* video: frames re-timed to 25 fps (nearest-frame selection as ffmpeg's ``fps`` filter),
  the first ``seconds`` (8 s: 200 frames); short side resized to 224 (long side truncated)
  with antialiased bicubic interpolation on the uint8 frames (torchvision ``v2.Resize``:
  torch's uint8 kernel), centre crop 224 (offsets rounded), scaled to [-1, 1]; 16-frame
  segments every 8 frames -> (S, 16, 3, 224, 224).
* audio: channel mean, torchaudio sinc resampling to 16 kHz, the first ``seconds``;
  segments of 10240 samples (0.64 s) every 5120; per segment a mel power spectrogram
  (``torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, win_length=400, hop_length=160,
  n_mels=128)``: centred, reflect-padded, periodic Hann, HTK mel without normalisation),
  log(x + 1e-6), zero-padded from 65 to 66 frames, (x + 4.2677393) / (2 x 4.5689974)
  -> (S, 1, 128, 66).
* score: Synchformer's logits over the 21 offsets linspace(-2, 2, 21) s for the first 14
  segments (0-4.8 s) and for the last 14; DeSync of a clip is the mean of the two |offsets|,
  and of a set the mean over clips.

The network: :class:`mmdisco.metrics.synchformer.Synchformer` (our implementation of
av-benchmark's, loading ``synchformer_state_dict.pth`` after ``mmdisco convert synchformer``;
``mmdisco evaluate --sync-weights``), or any object with the same interface
(``extract_vfeats``, ``extract_afeats``, ``compare_v_a``; ``--sync-model module:factory``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from mmdisco.metrics.base import AudioClip, VideoClip, resample, to_mono

VIDEO_FPS = 25.0
SIZE = 224
VIDEO_SEGMENT, VIDEO_STEP = 16, 8
AUDIO_RATE = 16000
AUDIO_SEGMENT, AUDIO_STEP = 10240, 5120
MEL_FRAMES = 66
MEL_MEAN, MEL_STD = -4.2677393, 4.5689974
WINDOW_SEGMENTS = 14  # 14 segments of 0.64 s every 0.32 s = 4.8 s
OFFSETS = torch.from_numpy(np.linspace(-2.0, 2.0, 21)).float()  # make_class_grid
WINDOW_SECONDS = (AUDIO_SEGMENT + (WINDOW_SEGMENTS - 1) * AUDIO_STEP) / AUDIO_RATE  # 4.8


@runtime_checkable
class SyncModel(Protocol):
    """The official ``Synchformer`` interface (av-benchmark ``synchformer.py``)."""

    def extract_vfeats(self, vis: torch.Tensor) -> torch.Tensor:
        """(B, S, 16, 3, 224, 224) -> (B, S, tv, D)."""
        ...

    def extract_afeats(self, aud: torch.Tensor) -> torch.Tensor:
        """(B, S, 1, 128, 66) -> (B, S, ta, D)."""
        ...

    def compare_v_a(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """Segment features of one 4.8 s window -> (B, 21) offset logits."""
        ...


def retime_indices(count: int, fps: float, out_fps: float, out_count: int) -> np.ndarray:
    """Input frame shown in each output slot of ffmpeg's ``fps`` filter (round=near): input
    frame i lands in slot floor(i * out_fps / fps + 0.5), each slot keeps the latest frame
    that landed at or before it."""
    slots = np.floor(np.arange(count) * out_fps / fps + 0.5)
    return np.searchsorted(slots, np.arange(out_count), side="right") - 1


def _resize_short_side_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> short side ``size`` (torchvision: long side truncated),
    antialiased bicubic on the uint8 tensor itself, as torchvision's ``Resize`` runs it on
    the CPU: torch's uint8 kernel (fixed-point weights, a horizontal then a vertical pass,
    each rounded and clipped to 0..255). Resizing in float and rounding once differs from it
    wherever bicubic overshoots."""
    h, w = frames.shape[-2:]
    new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    return F.interpolate(frames, size=new, mode="bicubic", antialias=True)


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return x[..., top : top + size, left : left + size]


def preprocess_video(media: VideoClip, seconds: float = 8.0) -> torch.Tensor:
    """Video -> (S, 16, 3, 224, 224) segments in [-1, 1] (module docstring)."""
    frames = np.asarray(media.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be (F, H, W, 3), got shape {frames.shape}")
    needed = int(VIDEO_FPS * seconds)
    if frames.shape[0] / media.fps < seconds - 1e-9:
        raise ValueError(
            f"video is {frames.shape[0] / media.fps:.2f} s, shorter than DeSync's {seconds} s"
        )
    idx = retime_indices(frames.shape[0], media.fps, VIDEO_FPS, needed)
    x = torch.from_numpy(np.ascontiguousarray(frames[idx])).permute(0, 3, 1, 2)
    x = _centre_crop(_resize_short_side_uint8(x, SIZE), SIZE).float() / 255.0
    x = (x - 0.5) / 0.5
    count = (needed - VIDEO_SEGMENT) // VIDEO_STEP + 1
    return torch.stack([x[i * VIDEO_STEP : i * VIDEO_STEP + VIDEO_SEGMENT] for i in range(count)])


def mel_filters() -> torch.Tensor:
    """torchaudio ``melscale_fbanks(513, 0, 8000, 128, 16000, norm=None, mel_scale='htk')``,
    (513, 128); librosa's HTK filters without normalisation are the same triangles."""
    mel = librosa.filters.mel(
        sr=AUDIO_RATE, n_fft=1024, n_mels=128, fmin=0.0, fmax=8000.0, htk=True, norm=None
    )
    return torch.from_numpy(mel.T).float()


def log_mel(segments: torch.Tensor) -> torch.Tensor:
    """(S, 10240) -> (S, 128, 66) normalised log-mel (module docstring)."""
    spec = torch.stft(
        segments,
        n_fft=1024,
        hop_length=160,
        win_length=400,
        window=torch.hann_window(400, periodic=True),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    mel = (spec.abs().pow(2).transpose(-1, -2) @ mel_filters()).transpose(-1, -2)
    x = torch.log(mel + 1e-6)
    x = F.pad(x, (0, max(0, MEL_FRAMES - x.shape[-1])))[..., :MEL_FRAMES]
    return (x - MEL_MEAN) / (2 * MEL_STD)


def preprocess_audio(media: AudioClip, seconds: float = 8.0) -> torch.Tensor:
    """Audio -> (S, 1, 128, 66) segments (module docstring)."""
    wav = resample(to_mono(media.samples), media.sample_rate, AUDIO_RATE, method="torchaudio")
    needed = int(AUDIO_RATE * seconds)
    if wav.shape[0] < needed:
        raise ValueError(
            f"audio is {wav.shape[0] / AUDIO_RATE:.2f} s, shorter than DeSync's {seconds} s"
        )
    x = torch.from_numpy(np.ascontiguousarray(wav[:needed]))
    count = (needed - AUDIO_SEGMENT) // AUDIO_STEP + 1
    segments = torch.stack(
        [x[i * AUDIO_STEP : i * AUDIO_STEP + AUDIO_SEGMENT] for i in range(count)]
    )
    return log_mel(segments).unsqueeze(1)


class DeSync:
    """|predicted offset| in seconds, averaged over the first and last 4.8 s of a clip."""

    name = "desync (Synchformer)"
    reference = "hkchengrex/av-benchmark DeSync"

    def __init__(self, model: SyncModel, seconds: float = 8.0, device: str = "cpu") -> None:
        if seconds < WINDOW_SECONDS:
            raise ValueError(f"DeSync needs at least {WINDOW_SECONDS} s per clip, got {seconds}")
        self.model, self.seconds, self.device = model, seconds, device

    @property
    def version(self) -> str:
        """Which network scores: the built-in one (released size or not) or the user's."""
        from mmdisco.metrics.synchformer import Synchformer, SynchformerConfig

        if not isinstance(self.model, Synchformer):
            return f"user-supplied network ({type(self.model).__name__})"
        if self.model.config != SynchformerConfig():
            return "built-in Synchformer, reduced size (NOT comparable)"
        return "built-in Synchformer (synchformer_state_dict.pth, 24-01-04T16-39-21)"

    @torch.no_grad()
    def __call__(self, video: VideoClip, audio: AudioClip) -> float:
        vis = self.model.extract_vfeats(preprocess_video(video, self.seconds)[None].to(self.device))
        aud = self.model.extract_afeats(preprocess_audio(audio, self.seconds)[None].to(self.device))
        if vis.shape[1] != aud.shape[1]:
            raise ValueError(f"segment counts differ: video {vis.shape[1]}, audio {aud.shape[1]}")
        offsets = []
        for part in (slice(None, WINDOW_SEGMENTS), slice(-WINDOW_SEGMENTS, None)):
            logits = self.model.compare_v_a(vis[:, part], aud[:, part])
            offsets.append(abs(float(OFFSETS[int(logits[0].argmax())])))
        return float(np.mean(offsets))
