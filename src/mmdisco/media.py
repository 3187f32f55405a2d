"""Reading and writing paired audio-video files (H.264 + AAC mp4 through PyAV) and wav files.

AAC encoders prepend priming samples (1024 for FFmpeg's encoder) that a naive reader returns
as a delay of ~64 ms at 16 kHz. :func:`write_mp4` gives every audio frame its sample-exact pts,
so the muxer records the priming as negative timestamps (and an edit list); :func:`read_mp4`
then places each decoded frame at its own pts and drops whatever falls before zero, and trims
to the stream's duration. No delay constant is assumed, so it also holds for files whose
decoder does not skip the priming itself.
"""

from __future__ import annotations

import math
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

from mmdisco.errors import InputError, MissingInputError, check_choice
from mmdisco.io import atomic_path

AAC_FRAME = 1024  # samples per AAC frame (used when the encoder does not say)
MAX_SIDE = 8192  # x264 (level 6.2) encodes at most 8192 pixels a side
PREROLL = 1.0  # seconds decoded before a window's start (audio decoders need a few frames)
# Sample rates an AAC track can carry; other rates are resampled to 16 kHz for the mp4.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


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


def mono(audio: Tensor) -> Tensor:
    """``(B, L)`` from ``(B, L)`` or multi-channel ``(B, C, L)`` waveforms."""
    return audio.float().mean(dim=1) if audio.ndim == 3 else audio.float()


def for_aac(audio: Tensor, rate: int) -> tuple[Tensor, int]:
    """A waveform at a rate an AAC track can carry (16 kHz when ``rate`` is not one)."""
    if rate in AAC_RATES:
        return audio, rate
    return torch.from_numpy(resample_audio(audio.cpu().numpy(), rate, 16000)), 16000


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
    :class:`~mmdisco.errors.MissingInputError` / :class:`~mmdisco.errors.InputError`
    (a ``FileNotFoundError`` / ``ValueError``) naming ``path`` if it is missing, unreadable, has
    no video, or has no audio while ``require_audio``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no such video file: {path}")
    end = None if duration is None else start + duration
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError("no video track", str(path))
            vstream = container.streams.video[0]
            astream = container.streams.audio[0] if audio and container.streams.audio else None
            if astream is None and require_audio:
                raise InputError("no audio track", str(path))
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
        raise InputError(f"cannot read video file {path}: {err}") from err
    if not images:
        raise InputError(
            "video track has no frames" + (f" after {start} s" if start else ""), str(path)
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


def resample_audio(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling along the last axis from ``rate`` to ``target`` Hz (float32)."""
    if rate == target:
        return audio.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g, axis=-1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Given clips for conditional generation, checked against what the model expects
# --------------------------------------------------------------------------------------------

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


@dataclass(frozen=True)
class MediaSpec:
    """The clips a pair of base models makes: the given clips of conditional generation are
    checked against it (and resampled where that cannot misalign them)."""

    sample_rate: int
    num_samples: int
    fps: float
    num_frames: int
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def media_spec(audio_model: Any, video_model: Any) -> MediaSpec:
    """The clips two base models make, from their ``sample_rate`` / ``num_samples`` (audio)
    and ``fps`` / ``num_frames`` / ``height`` / ``width`` (video)."""
    try:
        return MediaSpec(
            int(audio_model.sample_rate),
            int(audio_model.num_samples),
            float(video_model.fps),
            int(video_model.num_frames),
            int(video_model.height),
            int(video_model.width),
        )
    except AttributeError as err:
        raise InputError(f"cannot tell what clips these base models make: {err}") from None


def _given_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    return path


def _video_info(path: Path) -> tuple[float, int, int]:
    """A video file's frame rate, height and width, from its header (nothing decoded)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError("no video track", str(path))
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            return fps, stream.codec_context.height, stream.codec_context.width
    except av.error.FFmpegError as err:
        raise InputError(f"cannot read video file ({err})", str(path)) from err


def read_given_audio(path: str | os.PathLike, spec: MediaSpec) -> np.ndarray:
    """A given audio clip as ``(spec.num_samples,)`` float32 mono at ``spec.sample_rate``.

    Audio files (wav, flac, ...) or the audio track of a video file. Another sample rate is
    resampled. The clip must last the model's duration: up to half a video frame of codec
    padding is trimmed or zero-padded at the end (the start, which alignment hangs on, is
    never moved); anything longer or shorter is refused with a message naming the file.
    Only the model's duration and a second more are read, however long the file.
    """
    path = _given_file(path)
    window = spec.duration + 1.0
    if path.suffix.lower() in AUDIO_SUFFIXES:
        try:
            info = soundfile.info(str(path))
            data, rate = soundfile.read(
                str(path),
                frames=math.ceil(window * info.samplerate),
                dtype="float32",
                always_2d=True,
            )
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise InputError(f"cannot read audio file ({err})", str(path)) from err
        audio, seconds = data.mean(1), info.frames / info.samplerate
    else:  # the track is read up to the window's end: longer only shows as reaching it
        clip = read_mp4(path, duration=window, max_frames=1)
        audio, rate = clip.audio, clip.sample_rate
        seconds = len(audio) / rate if len(audio) < round(window * rate) else math.inf
    audio = resample_audio(np.asarray(audio), rate, spec.sample_rate)
    slack = round(spec.sample_rate / (2 * spec.fps))
    samples = round(seconds * spec.sample_rate) if math.isfinite(seconds) else None
    if samples is None or abs(samples - spec.num_samples) > slack:
        lasts = (
            f"more than {window:.3f} s"
            if samples is None
            else f"{seconds:.3f} s ({samples} samples at {spec.sample_rate} Hz)"
        )
        raise InputError(
            f"audio lasts {lasts}; the model makes {spec.duration:.3f} s clips "
            f"({spec.num_samples} samples)",
            str(path),
        )
    return np.pad(audio, (0, max(0, spec.num_samples - len(audio))))[: spec.num_samples]


def read_given_video(path: str | os.PathLike, spec: MediaSpec) -> np.ndarray:
    """A given video clip as ``(num_frames, height, width, 3)`` uint8 frames.

    The frame rate and the number of frames must be the model's (resampling time would move
    the events the audio must follow); frames may be an integer multiple of the model's size
    (as :func:`write_mp4` upscales) and are then block-averaged down. Anything else is refused
    with a message naming the file and what was expected. At most one frame more than the
    model's is decoded, however long the file.
    """
    path = _given_file(path)
    fps, h, w = _video_info(path)
    if abs(fps - spec.fps) > 1e-3:
        raise InputError(
            f"{fps:g} fps; the model makes {spec.fps:g} fps clips (re-encode at {spec.fps:g} fps)",
            str(path),
        )
    k = h // spec.height
    if k < 1 or (h, w) != (k * spec.height, k * spec.width):
        raise InputError(
            f"frames of {h}x{w} pixels; the model makes {spec.height}x{spec.width} "
            "(or an integer multiple of it)",
            str(path),
        )
    frames = read_mp4(
        path, downscale=k, require_audio=False, audio=False, max_frames=spec.num_frames + 1
    ).frames
    if len(frames) != spec.num_frames:
        got = f"more than {spec.num_frames}" if len(frames) > spec.num_frames else len(frames)
        raise InputError(
            f"{got} frames; the model makes {spec.num_frames} frames "
            f"({spec.num_frames / spec.fps:g} s at {spec.fps:g} fps)",
            str(path),
        )
    return frames


def load_given(paths: list[Path], modality: str, spec: MediaSpec) -> Tensor:
    """Given clips of ``modality`` as one batch: audio ``(N, L)`` float in [-1, 1], or video
    ``(N, 3, F, H, W)`` float in [-1, 1]."""
    check_choice("modality", modality, ("audio", "video"))
    if modality == "audio":
        return torch.from_numpy(np.stack([read_given_audio(p, spec) for p in paths]))
    return torch.stack([frames_to_video(read_given_video(p, spec)) for p in paths])
