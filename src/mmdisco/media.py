"""Reading and writing paired audio-video files (H.264 + AAC mp4 through PyAV) and wav files.

AAC encoders prepend priming samples (1024 for FFmpeg's encoder) that a naive reader returns
as a delay of ~64 ms at 16 kHz. :func:`write_mp4` gives every audio frame its sample-exact pts,
so the muxer records the priming as negative timestamps (and an edit list); :func:`read_mp4`
then places each decoded frame at its own pts and drops whatever falls before zero, and trims
to the stream's duration. No delay constant is assumed, so it also holds for files whose
decoder does not skip the priming itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import torch
from torch import Tensor

from mmdisco.io import atomic_path

AAC_FRAME = 1024  # samples per AAC frame (used when the encoder does not say)
MAX_SIDE = 8192  # x264 (level 6.2) encodes at most 8192 pixels a side
PREROLL = 1.0  # seconds decoded before a window's start (audio decoders need a few frames)


@dataclass
class MediaClip:
    """Decoded file: RGB frames, frame rate and (mono) audio."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    fps: float
    audio: np.ndarray | None  # (L,) float32 in [-1, 1]
    sample_rate: int


def to_uint8_frames(video: Tensor | np.ndarray) -> np.ndarray:
    """Frames as (F, H, W, 3) uint8 from uint8 (F, H, W, 3), or from float in [-1, 1] laid out
    as the world's (3, F, H, W) (a leading axis of 3) or as (F, H, W, 3)."""
    array = video.detach().cpu().numpy() if isinstance(video, Tensor) else np.asarray(video)
    if array.dtype == np.uint8:
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"uint8 frames must have shape (F, H, W, 3), got {array.shape}")
        return array
    if array.ndim != 4 or 3 not in (array.shape[0], array.shape[-1]):
        raise ValueError(
            f"float video must have shape (3, F, H, W) or (F, H, W, 3), got {array.shape}"
        )
    if array.shape[0] == 3:
        array = array.transpose(1, 2, 3, 0)
    return np.round((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def to_mono_audio(audio: Tensor | np.ndarray) -> np.ndarray:
    """(L,) float32 in [-1, 1] from a 1-D tensor or array."""
    array = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
    if array.ndim != 1:
        raise ValueError(f"audio must have shape (L,), got {array.shape}")
    return np.clip(array.astype(np.float32), -1.0, 1.0)


def _video_stream(container, size: tuple[int, int], fps: Fraction, crf: int):
    h, w = size
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {h}x{w}")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    # One thread: x264's threaded output varies with scheduling, so the same clip would not
    # always give the same file.
    stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
    return stream


def _audio_stream(container, sample_rate: int, bitrate: int):
    stream = container.add_stream("aac", rate=sample_rate, layout="mono")
    stream.bit_rate = bitrate
    return stream


def _encode_video(container, stream, frames: np.ndarray) -> None:
    for i, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = i
        container.mux(stream.encode(vf))
    container.mux(stream.encode())


def _encode_audio(container, stream, audio: np.ndarray) -> None:
    size = stream.codec_context.frame_size or AAC_FRAME
    for start in range(0, len(audio), size):
        chunk = np.ascontiguousarray(audio[None, start : start + size])
        af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        af.sample_rate, af.pts = stream.codec_context.sample_rate, start  # sample-exact pts
        container.mux(stream.encode(af))
    container.mux(stream.encode())


def write_mp4(
    path: str | os.PathLike,
    frames: Tensor | np.ndarray,
    fps: float,
    audio: Tensor | np.ndarray | None = None,
    sample_rate: int = 16000,
    upscale: int = 1,
    crf: int = 10,
    audio_bitrate: int = 128_000,
) -> Path:
    """Write H.264 (yuv420p) video, and an AAC mono track if ``audio`` is given, atomically.

    ``frames``: see :func:`to_uint8_frames`. ``upscale`` repeats pixels (nearest neighbour)
    so that tiny frames are viewable and survive chroma subsampling; undo it with
    ``read_mp4(..., downscale=upscale)``. ``crf`` is x264's quality (0 = lossless luma).
    """
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    pixels = to_uint8_frames(frames)
    if max(pixels.shape[1:3]) * upscale > MAX_SIDE:
        raise ValueError(
            f"frames of {pixels.shape[1]}x{pixels.shape[2]} upscaled {upscale}x exceed H.264's "
            f"{MAX_SIDE} pixels a side; use a smaller upscale"
        )
    pixels = pixels.repeat(upscale, axis=1).repeat(upscale, axis=2)
    samples = None if audio is None else to_mono_audio(audio)
    path = Path(path)
    with atomic_path(path, ".mp4") as tmp, av.open(str(tmp), "w", format="mp4") as container:
        # Both streams must exist before the first packet is muxed (that writes the header).
        rate = Fraction(fps).limit_denominator(1001)
        vstream = _video_stream(container, pixels.shape[1:3], rate, crf)
        astream = None if samples is None else _audio_stream(container, sample_rate, audio_bitrate)
        _encode_video(container, vstream, pixels)
        if astream is not None:
            _encode_audio(container, astream, samples)
    return path


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def decode_frames(
    container: Any, streams: list[Any], start: float = 0.0, end: float | None = None
) -> Iterator[tuple[Any, float, Any]]:
    """``(stream, t, frame)`` for the decoded frames of ``streams``, ``t`` in seconds from the
    stream's start, covering ``[start, end]``: the demuxer seeks to the keyframe before
    ``start`` (less a second, so that audio decoders warm up) and stops once every stream
    has passed ``end``. Memory and time grow with the window, not with the file."""
    if start > PREROLL:
        container.seek(round((start - PREROLL) * av.time_base))  # the keyframe at or before
    origin = {s.index: _seconds(s.start_time, s.time_base) or 0.0 for s in streams}
    pending = {s.index for s in streams}
    for packet in container.demux(*streams):
        if packet.stream.index not in pending:
            continue
        for frame in packet.decode():
            t = _seconds(frame.pts, frame.time_base)
            t = None if t is None else t - origin[packet.stream.index]
            if end is not None and t is not None and t > end:
                pending.discard(packet.stream.index)
                break
            yield packet.stream, t, frame
        if not pending:
            return


def place_audio(
    frames: list, stream: Any, start: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """Mono float32 samples of ``[start, start + duration)`` seconds of an audio stream.

    Each decoded frame is placed at its own pts relative to the stream's start (samples
    before it, i.e. encoder priming, are dropped); a frame without pts follows the previous
    one. The result ends where the decoded samples or the stream's duration end (so a short
    result means the stream is short); gaps are zeros."""
    rate = stream.codec_context.sample_rate
    origin = _seconds(stream.start_time, stream.time_base) or 0.0
    lo = round(start * rate)
    placed, cursor = [], None
    for frame in frames:
        data = frame.to_ndarray().astype(np.float32)
        if frame.format.is_packed:
            data = data.reshape(-1, len(frame.layout.channels)).T
        t = _seconds(frame.pts, frame.time_base)
        offset = cursor if t is None and cursor is not None else round(((t or 0.0) - origin) * rate)
        placed.append((offset - lo, data.mean(0)))
        cursor = offset + data.shape[1]
    end = max((o + len(d) for o, d in placed), default=0)
    if stream.duration is not None:
        end = min(end, round(float(stream.duration * stream.time_base) * rate) - lo)
    if duration is not None:
        end = min(end, round(duration * rate))
    out = np.zeros(max(end, 0), np.float32)
    for offset, data in placed:
        a, b = max(offset, 0), min(offset + len(data), len(out))
        if b > a:
            out[a:b] = data[a - offset : b - offset]
    return out


def read_mp4(
    path: str | os.PathLike,
    downscale: int = 1,
    require_audio: bool = True,
    start: float = 0.0,
    duration: float | None = None,
    max_frames: int | None = None,
    audio: bool = True,
) -> MediaClip:
    """Read frames (and the first audio track, as mono) from a video file.

    Only ``[start, start + duration)`` seconds are decoded (the whole file by default), and
    at most ``max_frames`` frames; ``audio=False`` skips the audio track. ``downscale``
    averages ``k x k`` pixel blocks (the inverse of ``write_mp4``'s upscale). Raises
    ``FileNotFoundError`` / ``ValueError`` naming ``path`` if it is missing, unreadable, has
    no video, or has no audio while ``require_audio``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    end = None if duration is None else start + duration
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video track")
            vstream = container.streams.video[0]
            astream = container.streams.audio[0] if audio and container.streams.audio else None
            if astream is None and require_audio:
                raise ValueError(f"{path}: no audio track")
            streams = [s for s in (vstream, astream) if s is not None]
            images, sounds = [], []
            for stream, t, frame in decode_frames(container, streams, start, end):
                if stream is astream:
                    sounds.append(frame)
                elif t is None or ((not start or t >= start - 1e-6) and (end is None or t < end)):
                    if max_frames is None or len(images) < max_frames:
                        images.append(
                            _downscaled(frame.to_ndarray(format="rgb24"), downscale, path)
                        )
                    elif astream is None:
                        break
            fps = float(vstream.average_rate or vstream.guessed_rate or 0)
            samples = None if astream is None else place_audio(sounds, astream, start, duration)
            rate = 0 if astream is None else astream.codec_context.sample_rate
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot read video file {path}: {err}") from err
    if not images:
        raise ValueError(
            f"{path}: video track has no frames" + (f" after {start} s" if start else "")
        )
    return MediaClip(frames=np.stack(images), fps=fps, audio=samples, sample_rate=rate)


def _downscaled(frame: np.ndarray, k: int, path: Path) -> np.ndarray:
    if k <= 1:
        return frame
    h, w, c = frame.shape
    if h % k or w % k:
        raise ValueError(f"{path}: frame size {h}x{w} is not divisible by {k}")
    return np.round(frame.reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))).astype(np.uint8)


def frames_to_video(frames: np.ndarray) -> Tensor:
    """(F, H, W, 3) uint8 -> the world's (3, F, H, W) float video in [-1, 1]."""
    return torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0).permute(3, 0, 1, 2)


def save_wav(path: str | os.PathLike, audio: Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write mono float audio as 16-bit PCM wav, atomically."""
    samples = to_mono_audio(audio)
    path = Path(path)
    with atomic_path(path, ".wav") as tmp:
        soundfile.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV")
    return path


def load_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 (channels averaged) and its sample rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    return data.mean(1), int(rate)
