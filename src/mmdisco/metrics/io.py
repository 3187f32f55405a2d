"""Reading evaluation media: mp4 (video + audio), audio files, and folders of frame images.

A directory of samples may mix
* ``*.mp4`` / ``*.mov`` / ``*.mkv``: video and (if present) the audio track;
* ``*.wav`` / ``*.flac`` / ``*.ogg``: audio only;
* sub-folders of ``*.png`` / ``*.jpg`` frames (sorted by name), optionally with one audio
  file inside (``audio.wav``); their frame rate is the ``fps`` argument.

Video files are decoded by ``mmdisco.media.read_mp4`` (PyAV, AAC priming compensated).
A video file's audio comes from a sibling audio file with the same stem (``x.mp4`` +
``x.wav``) when there is one: the reference scripts read wav files, and AAC shifts the
log-mel and adds spurious onsets. Such a sibling is not listed as a sample of its own.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile

from mmdisco.media import read_mp4
from mmdisco.metrics.base import AudioClip, VideoClip

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class MediaItem:
    """One evaluation sample; either modality may be missing."""

    path: Path
    video: VideoClip | None
    audio: AudioClip | None
    audio_path: Path | None = None  # where the audio was read from (None: no audio)


def sibling_audio(path: Path) -> Path | None:
    """The audio file next to a video file with the same stem, if any (first by suffix)."""
    for suffix in AUDIO_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def list_media(directory: str | Path, prefer_sibling_audio: bool = True) -> list[Path]:
    """Sorted sample paths in ``directory`` (files by suffix, frame folders); with
    ``prefer_sibling_audio`` an audio file next to a same-stem video file belongs to that
    video and is not a sample of its own. What only looks like a sample (a dangling or
    looping link, a folder named ``x.mp4``) is listed too, so that :func:`load_media`
    refuses it with its reason and it is counted, not silently ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    items = []
    for p in sorted(directory.iterdir()):
        suffix = p.suffix.lower()
        if suffix in VIDEO_SUFFIXES + AUDIO_SUFFIXES or (p.is_dir() and _has_images(p)):
            items.append(p)
    if prefer_sibling_audio:
        videos = {p.stem for p in items if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}
        items = [p for p in items if not (p.suffix.lower() in AUDIO_SUFFIXES and p.stem in videos)]
    return items


def _has_images(folder: Path) -> bool:
    return any(c.suffix.lower() in IMAGE_SUFFIXES for c in folder.iterdir())


def _check_entry(path: Path) -> None:
    """Raise the reason a listed entry is not a readable sample (links, folders)."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            raise ValueError("symbolic link loop") from None
        except FileNotFoundError:
            raise ValueError(f"dangling symbolic link (to {os.readlink(path)})") from None
    if path.is_dir() and not _has_images(path):
        raise ValueError("a folder named like a media file, with no frame images")


def read_video_file(
    path: Path,
    max_seconds: float | None = None,
    max_frames: int | None = None,
    *,
    audio: bool = True,
) -> tuple[VideoClip, AudioClip | None]:
    """Video file -> (video, audio or None) via ``mmdisco.media.read_mp4`` (PyAV), decoding
    only the first ``max_seconds`` and at most ``max_frames`` frames.

    ``read_mp4`` compensates the AAC priming delay, so audio onsets line up with frames
    (this matters for AV-Align at 8 fps).
    """
    clip = read_mp4(
        path, require_audio=False, duration=max_seconds, max_frames=max_frames, audio=audio
    )
    samples = None if clip.audio is None else AudioClip(np.asarray(clip.audio), clip.sample_rate)
    return VideoClip(np.asarray(clip.frames), float(clip.fps)), samples


def read_audio_file(path: Path, max_seconds: float | None = None) -> AudioClip:
    """An audio file's first ``max_seconds`` (all of it by default) as (C, N) float32."""
    frames = (
        -1 if max_seconds is None else round(max_seconds * soundfile.info(str(path)).samplerate)
    )
    data, rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("empty audio")
    return AudioClip(data.T, int(rate))


def read_frame_folder(
    path: Path, fps: float, max_seconds: float | None = None, max_frames: int | None = None
) -> tuple[VideoClip, AudioClip | None]:
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    limits = [n for n in (max_frames, max_seconds and math.ceil(max_seconds * fps)) if n]
    images = images[: min(limits)] if limits else images
    frames = []
    for p in images:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"unreadable image {p.name}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"frames differ in size: {sorted({f.shape for f in frames})}")
    audio_files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    audio = read_audio_file(audio_files[0], max_seconds) if audio_files else None
    return VideoClip(np.stack(frames), fps), audio


def load_media(
    path: str | Path,
    fps: float = 8.0,
    prefer_sibling_audio: bool = True,
    max_seconds: float | None = None,
    max_frames: int | None = None,
    audio: bool = True,
) -> MediaItem:
    """Load one sample; raises (with the reason) on corrupt, non-finite or unsupported input.

    Only the first ``max_seconds`` of every sample, and at most ``max_frames`` frames, are
    read (video files are decoded only that far: memory in proportion to the clip, not to
    the file); ``audio=False`` skips a video file's audio."""
    path = Path(path)
    _check_entry(path)
    audio_path = path
    if path.is_dir():
        video, sound = read_frame_folder(path, fps, max_seconds, max_frames)
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        audio_path = found[0] if found else None
    elif path.suffix.lower() in AUDIO_SUFFIXES:
        video, sound = None, read_audio_file(path, max_seconds)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        sibling = sibling_audio(path) if prefer_sibling_audio and audio else None
        video, sound = read_video_file(
            path, max_seconds, max_frames, audio=audio and sibling is None
        )
        if sibling is not None:
            sound, audio_path = read_audio_file(sibling, max_seconds), sibling
    else:
        raise ValueError(f"unsupported media type {path.suffix!r}")
    if sound is not None and not np.isfinite(sound.samples).all():
        raise ValueError(f"audio has NaN or infinite samples ({audio_path.name})")
    return MediaItem(path, video, sound, audio_path if sound is not None else None)
