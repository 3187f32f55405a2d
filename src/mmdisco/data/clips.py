"""Real audio-video clips: files with sound, decoded into fixed-size training clips.

Sources are a folder of video files (searched recursively) or a CSV / JSONL manifest with a
``path`` column and optional ``caption`` and ``start`` (seconds). Each item becomes a clip of
``duration`` seconds: frames resampled to ``fps`` (nearest earlier frame), resized so the
shorter side is ``size`` and centre-cropped to ``size x size``; audio mixed to mono, placed by
its timestamps (so AAC priming is dropped) and resampled to ``sample_rate``. Without a
``start``, the clip's start is drawn from a generator seeded by ``(seed, path)``, so the same
seed picks the same clips in every run and process.

A file that cannot be used (corrupt or truncated, no audio or video track, shorter than
``duration``, not a media file) never stops a run: :class:`ClipDataset` returns ``None`` for
it, logs its path and reason, and counts it in :attr:`ClipDataset.skipped`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
from torch import Tensor

from mmdisco.errors import (
    InputError,
    MissingInputError,
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from mmdisco.media import decode_frames, place_audio, resample_audio

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
ISO_MEDIA_SUFFIXES = (".mp4", ".mov", ".m4v")  # files made of boxes (ISO/IEC 14496-12)


class SkipClip(ValueError):
    """A file that cannot give a clip; the message is the reason."""


@dataclass(frozen=True)
class ClipSpec:
    """What one training clip looks like (match the base models' expectations).

    ``audio_peak`` rescales each clip's waveform so its largest magnitude is that value (after
    removing its mean when ``remove_dc``), as the audio model's training data were: AudioLDM
    0.5 with the mean removed, Auffusion 0.95 (``ExperimentConfig.clip_spec`` reads it from
    the adapter). ``posterior`` is how latents are taken from a VAE: ``"sample"`` draws from
    the posterior (seeded per clip), as the reference release does; ``"mode"`` takes its mean.
    """

    duration: float = 2.0
    fps: float = 8.0
    size: int = 256
    sample_rate: int = 16000
    audio_peak: float | None = None
    remove_dc: bool = False
    posterior: str = "sample"
    width: int | None = None  # frames of size x width (height x width); None: size x size

    def __post_init__(self) -> None:
        check_float("duration", self.duration, 0.0, open_min=True)
        check_float("fps", self.fps, 0.0, open_min=True)
        check_int("size", self.size, 1)
        if self.width is not None:
            check_int("width", self.width, 1)
        check_int("sample_rate", self.sample_rate, 1)
        if self.num_frames < 1:
            raise InputError(f"duration * fps gives no frame ({self.duration} * {self.fps})")
        check_choice("posterior", self.posterior, ("sample", "mode"))
        if self.audio_peak is not None:
            check_float("audio_peak", self.audio_peak, 0.0, 1.0, open_min=True)
        check_bool("remove_dc", self.remove_dc)

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.sample_rate)


@dataclass(frozen=True)
class ClipItem:
    path: Path
    caption: str = ""
    start: float | None = None


@dataclass
class Clip:
    video: Tensor  # (3, F, H, W) float in [-1, 1]
    audio: Tensor  # (L,) float, mono
    caption: str
    path: str
    start: float


def list_items(source: str | Path) -> list[ClipItem]:
    """Items from a folder (recursively, sorted) or a manifest whose relative paths are
    resolved against the manifest's folder: ``.csv`` (a ``path`` column, optional
    ``caption`` and ``start``), ``.jsonl`` (one such object a line) or ``.txt`` (one path a
    line; blank lines and ``#`` comments skipped). A UTF-8 byte order mark (Excel's default
    for CSV) is ignored. Every row is an item, so a file listed twice gives two clips; exact
    duplicate rows are logged."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        return [ClipItem(p) for p in files]
    if not source.is_file():
        raise MissingInputError(f"no such folder or manifest: {source}")
    rows = _read_rows(source)
    items = []
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1}"
        if not isinstance(row, dict) or not row.get("path"):
            columns = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise InputError(f"{where} has no 'path' (found {columns})")
        path = Path(str(row["path"]))
        start = row.get("start")
        if start not in (None, ""):
            try:
                start = float(start)
            except (TypeError, ValueError):
                message = f"{where}: start must be a number of seconds, got {start!r}"
                raise InputError(message) from None
            if not math.isfinite(start) or start < 0:
                raise InputError(f"{where}: start must be finite and >= 0, got {start}")
        items.append(
            ClipItem(
                path if path.is_absolute() else source.parent / path,
                str(row.get("caption") or ""),
                None if start in (None, "") else start,
            )
        )
    repeated = len(items) - len(set(items))
    if repeated:
        logger.warning("%s: %d rows repeat an earlier row exactly", source, repeated)
    return items


def _read_rows(source: Path) -> list:
    suffix = source.suffix.lower()
    try:
        text = source.read_text(encoding="utf-8-sig")  # -sig: drop a byte order mark
    except UnicodeDecodeError as err:
        raise InputError(f"{source}: not UTF-8 text ({err})") from None
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise InputError(f"{source}: line {n} is not JSON ({err})") from None
        return rows
    if suffix == ".txt":
        lines = (line.strip() for line in text.splitlines())
        return [{"path": line} for line in lines if line and not line.startswith("#")]
    raise InputError(f"{source}: a manifest must be .csv, .jsonl or .txt")


def clip_start(path: Path, length: float, duration: float, seed: int) -> float:
    """A start time in ``[0, length - duration]``, a pure function of ``(seed, path)``."""
    digest = hashlib.sha256(f"{seed}:{path.name}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    return u * max(length - duration, 0.0)


def resize_center_crop(frame: np.ndarray, size: int, width: int | None = None) -> np.ndarray:
    """Scale so the frame just covers ``size x width`` (height x width; ``size x size`` when
    ``width`` is None: the shorter side becomes ``size``), then crop the centre."""
    height, width = size, width or size
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    frame = cv2.resize(frame, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return frame[top : top + height, left : left + width]


def truncation(path: Path) -> str | None:
    """Why an MP4 / MOV file is cut short (a top-level box runs past its end), or None.

    A cut file whose index (``moov``) comes first still opens, and decodes up to the cut, so
    a clip reaching past it would silently end in a repeated frame and silence."""
    if path.suffix.lower() not in ISO_MEDIA_SUFFIXES:
        return None
    size, offset = path.stat().st_size, 0
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:  # a 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            if box_size < 8 or not all(32 <= c < 127 for c in kind):
                return None  # size 0: the box runs to the end; otherwise not boxes at all
            if offset + box_size > size:
                name = kind.decode("latin-1")
                return f"truncated file ({size} bytes; its {name!r} box needs {offset + box_size})"
            offset += box_size
    return None


def open_media(path: Path) -> av.container.InputContainer:
    """The file's opened container; raises :class:`SkipClip` saying why it cannot be one."""
    if not path.is_file():
        raise SkipClip("file not found")
    if (cut := truncation(path)) is not None:
        raise SkipClip(cut)
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise SkipClip(f"not a readable media file ({err})") from err


def read_clip(item: ClipItem, spec: ClipSpec, seed: int = 0) -> Clip:
    """Decode one clip; raises :class:`SkipClip` with the reason if the file is unusable."""
    path = item.path
    with open_media(path) as container:
        if not container.streams.video:
            raise SkipClip("no video track")
        if not container.streams.audio:
            raise SkipClip("no audio track")
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        length = container.duration / av.time_base if container.duration else None
        if length is None:
            length = float(vstream.duration * vstream.time_base) if vstream.duration else 0.0
        if length + 1e-3 < spec.duration:
            raise SkipClip(f"too short ({length:.2f} s < {spec.duration} s)")
        start = (
            item.start if item.start is not None else clip_start(path, length, spec.duration, seed)
        )
        if start + spec.duration > length + 1e-3:
            raise SkipClip(f"clip [{start}, {start + spec.duration}] s exceeds {length:.2f} s")
        times = start + np.arange(spec.num_frames) / spec.fps
        frames: list[np.ndarray | None] = [None] * spec.num_frames

        def place(t: float, frame: av.VideoFrame) -> None:
            # Nearest earlier frame: this frame serves every target time >= t (later frames,
            # placed after it, overwrite their own share).
            image = resize_center_crop(frame.to_ndarray(format="rgb24"), spec.size, spec.width)
            for k in np.nonzero(times >= t - 1e-6)[0]:
                frames[k] = image

        sounds, before = [], None
        try:
            # Seeks to the clip: a long file costs what the clip costs.
            for stream, t, frame in decode_frames(
                container, [vstream, astream], start, start + spec.duration
            ):
                if stream is astream:
                    sounds.append(frame)
                    continue
                t = t or 0.0
                if t > times[-1] + 1e-6:
                    continue
                if t <= times[0] + 1e-6:  # only the latest of these is used: convert later
                    before = (t, frame)
                    continue
                if before is not None:
                    place(*before)
                    before = None
                place(t, frame)
            if before is not None:
                place(*before)
        except av.error.FFmpegError as err:
            raise SkipClip(f"decoding failed ({err})") from err
        if any(f is None for f in frames):
            raise SkipClip("video track has no frames for the clip")
        rate = astream.codec_context.sample_rate
        audio = place_audio(sounds, astream, start, spec.duration)
    need = math.ceil(spec.duration * rate)
    if len(audio) < need - round(0.05 * rate):  # allow 50 ms of trailing padding
        raise SkipClip(f"audio track too short ({(round(start * rate) + len(audio)) / rate:.2f} s)")
    audio = np.pad(audio, (0, max(0, need - len(audio))))
    audio = resample_audio(audio, rate, spec.sample_rate)
    audio = np.pad(audio, (0, max(0, spec.num_samples - len(audio))))[: spec.num_samples]
    if not np.isfinite(audio).all():
        raise SkipClip("audio has NaN or infinite samples")
    if spec.audio_peak is not None:
        audio = normalize_peak(audio, spec.audio_peak, remove_dc=spec.remove_dc)
    video = torch.from_numpy(np.stack(frames).astype(np.float32) / 127.5 - 1.0)
    return Clip(
        video=video.permute(3, 0, 1, 2),
        audio=torch.from_numpy(np.clip(audio, -1, 1)),
        caption=item.caption,
        path=str(path),
        start=float(start),
    )


def normalize_peak(audio: np.ndarray, peak: float, *, remove_dc: bool = False) -> np.ndarray:
    """``audio`` (mean removed if ``remove_dc``) scaled so that ``max |audio| == peak``;
    silence stays silence."""
    audio = audio - audio.mean() if remove_dc else audio
    return (audio * (peak / (np.abs(audio).max() + 1e-8))).astype(np.float32)


class ClipDataset(torch.utils.data.Dataset):
    """Clips from a folder or manifest; unusable files give ``None`` (see :func:`collate`)."""

    def __init__(self, source: str | Path, spec: ClipSpec, seed: int = 0) -> None:
        self.items = list_items(source)
        self.root = Path(source) if Path(source).is_dir() else Path(source).parent
        self.spec, self.seed = spec, seed
        self.skipped: dict[int, str] = {}  # item index -> reason (a path may repeat)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Clip | None:
        item = self.items[index]
        try:
            return read_clip(item, self.spec, self.seed)
        except SkipClip as err:
            self.skip(index, str(err))
            return None

    def skip(self, index: int, reason: str) -> None:
        """Record that item ``index`` is unusable (and why)."""
        self.skipped[index] = reason
        logger.warning("skipping %s: %s", self.items[index].path, reason)

    def fingerprint(self) -> dict[str, Any]:
        """What the clips are made from: each item's path (relative to the source), size,
        caption and start, the clip settings and the seed. Cheap: files are not read."""
        digest = hashlib.sha256()
        for item in self.items:
            size = item.path.stat().st_size if item.path.is_file() else -1
            path = os.path.relpath(item.path, self.root)
            digest.update(json.dumps([path, size, item.caption, item.start]).encode() + b"\n")
        spec = dataclasses.asdict(self.spec)
        if spec["width"] is None:  # square clips: the fingerprint caches were written with
            del spec["width"]
        return {
            "items": len(self.items),
            "sha256": digest.hexdigest(),
            "spec": spec,
            "seed": self.seed,
        }

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            key = reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        return f"{len(self.items) - len(self.skipped)} of {len(self.items)} files used" + (
            f"; skipped {len(self.skipped)}: {detail}" if self.skipped else ""
        )


def collate(clips: list[Clip | None]) -> dict | None:
    """Batch the usable clips (``None`` for a batch with none)."""
    clips = [c for c in clips if c is not None]
    if not clips:
        return None
    return {
        "video": torch.stack([c.video for c in clips]),
        "audio": torch.stack([c.audio for c in clips]),
        "caption": [c.caption for c in clips],
        "path": [c.path for c in clips],
        "start": torch.tensor([c.start for c in clips]),
    }


def drop_captions(
    captions: list[str], probability: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace each caption by "" with ``probability`` (the paper's 10 % text dropout)."""
    keep = torch.rand(len(captions), generator=generator) >= probability
    return [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]
