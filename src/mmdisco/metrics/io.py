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
    video and is not a sample of its own."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    items = []
    for p in sorted(directory.iterdir()):
        suffix = p.suffix.lower()
        if (p.is_file() and suffix in VIDEO_SUFFIXES + AUDIO_SUFFIXES) or (
            p.is_dir() and any(c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir())
        ):
            items.append(p)
    if prefer_sibling_audio:
        videos = {p.stem for p in items if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}
        items = [p for p in items if not (p.suffix.lower() in AUDIO_SUFFIXES and p.stem in videos)]
    return items


def read_video_file(path: Path) -> tuple[VideoClip, AudioClip | None]:
    """Video file -> (video, audio or None) via ``mmdisco.media.read_mp4`` (PyAV).

    ``read_mp4`` compensates the AAC priming delay, so audio onsets line up with frames
    (this matters for AV-Align at 8 fps).
    """
    clip = read_mp4(path, require_audio=False)
    audio = None if clip.audio is None else AudioClip(np.asarray(clip.audio), clip.sample_rate)
    return VideoClip(np.asarray(clip.frames), float(clip.fps)), audio


def read_audio_file(path: Path) -> AudioClip:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    if data.shape[0] == 0:
        raise ValueError("empty audio")
    return AudioClip(data.T, int(rate))


def read_frame_folder(path: Path, fps: float) -> tuple[VideoClip, AudioClip | None]:
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    for p in images:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"unreadable image {p.name}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"frames differ in size: {sorted({f.shape for f in frames})}")
    audio_files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    audio = read_audio_file(audio_files[0]) if audio_files else None
    return VideoClip(np.stack(frames), fps), audio


def load_media(path: str | Path, fps: float = 8.0, prefer_sibling_audio: bool = True) -> MediaItem:
    """Load one sample; raises (with the reason) on corrupt or unsupported input."""
    path = Path(path)
    audio_path = path
    if path.is_dir():
        video, audio = read_frame_folder(path, fps)
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        audio_path = found[0] if found else None
    elif path.suffix.lower() in AUDIO_SUFFIXES:
        video, audio = None, read_audio_file(path)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        sibling = sibling_audio(path) if prefer_sibling_audio else None
        video, audio = read_video_file(path)
        if sibling is not None:
            audio, audio_path = read_audio_file(sibling), sibling
    else:
        raise ValueError(f"unsupported media type {path.suffix!r}")
    return MediaItem(path, video, audio, audio_path if audio is not None else None)
