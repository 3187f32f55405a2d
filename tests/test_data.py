"""Real-data pipeline: clip decoding, skipping bad files, latent caching and caption dropout.

Every media file is written by the test itself (H.264 + AAC through PyAV).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import Tensor

from mmdisco.base_models.base import BaseModel, PromptEmbeds
from mmdisco.data import (
    ClipDataset,
    ClipItem,
    ClipSpec,
    SkipClip,
    cache_latents,
    caption_dropout,
    collate,
    drop_captions,
    list_items,
    load_latent_cache,
    read_clip,
)
from mmdisco.errors import InputError
from mmdisco.media import write_mp4

SRC_FPS, SRC_RATE, SRC_SECONDS = 10, 22050, 3.0
ONSET = 1.5  # seconds: the audio is silent before, a 440 Hz tone after
SPEC = ClipSpec(duration=1.0, fps=5.0, size=16, sample_rate=16000)


def write_clip(path: Path, seconds: float = SRC_SECONDS, audio: bool = True) -> Path:
    n = round(seconds * SRC_FPS)
    # Frame i is uniformly grey at level 8 * i, so a decoded frame tells its source index.
    frames = np.repeat((8 * np.arange(n, dtype=np.uint8))[:, None, None, None], 3, axis=3)
    frames = np.broadcast_to(frames, (n, 32, 48, 3)).copy()
    t = np.arange(round(seconds * SRC_RATE)) / SRC_RATE
    sound = (0.5 * np.sin(2 * np.pi * 440 * t) * (t >= ONSET)).astype(np.float32)
    return write_mp4(path, frames, SRC_FPS, sound if audio else None, sample_rate=SRC_RATE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    write_clip(root / "good.mp4")
    write_clip(root / "sub" / "good2.mp4")
    write_clip(root / "silent.mp4", audio=False)
    write_clip(root / "short.mp4", seconds=0.5)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "notes.mkv").write_text("this is not a video")
    return root


def test_clip_timing_resize_and_resampling(folder):
    clip = read_clip(ClipItem(folder / "good.mp4", "a tone", start=1.0), SPEC)
    assert clip.video.shape == (3, 5, 16, 16)
    assert clip.audio.shape == (16000,)
    # 5 fps from 10 fps starting at 1.0 s: source frames 10, 12, 14, 16, 18.
    levels = ((clip.video.mean(dim=(0, 2, 3)) + 1) * 127.5 / 8).round().long()
    assert levels.tolist() == [10, 12, 14, 16, 18]
    # Between source frames the nearest earlier one is used: 1.07 s -> frame 10, 1.27 -> 12...
    late = read_clip(ClipItem(folder / "good.mp4", start=1.07), SPEC).video
    assert ((late.mean(dim=(0, 2, 3)) + 1) * 127.5 / 8).round().long().tolist() == [
        10,
        12,
        14,
        16,
        18,
    ]
    audio = clip.audio.numpy()
    # The tone starts 0.5 s into the clip (AAC priming removed): silence before, tone after.
    assert np.abs(audio[: int(0.48 * 16000)]).max() < 0.02
    assert np.abs(audio[int(0.52 * 16000) :]).mean() > 0.2
    spectrum = np.abs(np.fft.rfft(audio[8000:]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) <= 4


def test_deterministic_clip_choice(folder):
    a = ClipDataset(folder, SPEC, seed=3)
    b = ClipDataset(folder, SPEC, seed=3)
    c = ClipDataset(folder, SPEC, seed=4)
    index = [str(i.path) for i in a.items].index(str(folder / "good.mp4"))
    starts = [ds[index].start for ds in (a, b, c)]
    assert starts[0] == starts[1] and starts[0] != starts[2]
    assert 0 <= starts[0] <= SRC_SECONDS - SPEC.duration


def test_bad_files_are_skipped_with_reasons(folder, caplog):
    ds = ClipDataset(folder, SPEC)
    assert len(ds) == 6
    clips = [ds[i] for i in range(len(ds))]
    batch = collate(clips)
    assert batch["video"].shape == (2, 3, 5, 16, 16) and batch["audio"].shape == (2, 16000)
    reasons = {ds.items[i].path.name: r for i, r in ds.skipped.items()}
    assert set(reasons) == {"silent.mp4", "short.mp4", "corrupt.mp4", "notes.mkv"}
    assert reasons["silent.mp4"] == "no audio track"
    assert reasons["short.mp4"].startswith("too short")
    assert reasons["corrupt.mp4"].startswith("not a readable media file")
    assert "2 of 6 files used; skipped 4" in ds.summary()
    assert "silent.mp4" in caplog.text and "no audio track" in caplog.text
    assert collate([None, None]) is None


def test_manifests(folder, tmp_path):
    rows = [
        {"path": str(folder / "good.mp4"), "caption": "a tone", "start": 0.5},
        {"path": "../" + folder.name + "/sub/good2.mp4", "caption": ""},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with open(tmp_path / "m.csv", "w") as f:
        f.write("path,caption,start\n")
        f.write(f'{folder / "good.mp4"},"a tone, loud",0.5\n')
    jsonl = list_items(tmp_path / "m.jsonl")
    assert jsonl[0] == ClipItem(folder / "good.mp4", "a tone", 0.5)
    assert jsonl[1].start is None and jsonl[1].path.resolve() == (folder / "sub/good2.mp4")
    csv_items = list_items(tmp_path / "m.csv")
    assert csv_items[0].caption == "a tone, loud" and csv_items[0].start == 0.5
    clip = ClipDataset(tmp_path / "m.jsonl", SPEC)[0]
    assert clip.caption == "a tone" and clip.start == 0.5
    (tmp_path / "bad.jsonl").write_text(json.dumps({"caption": "x"}))
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1 has no 'path' \(found \['caption'\]\)"):
        list_items(tmp_path / "bad.jsonl")
    (tmp_path / "start.csv").write_text("path,start\ngood.mp4,soon\n")
    with pytest.raises(ValueError, match=r"start\.csv: row 1: start must be a number"):
        list_items(tmp_path / "start.csv")


def test_manifest_with_bom_txt_list_and_repeated_rows(folder, tmp_path, caplog):
    # Excel saves CSV as UTF-8 with a byte order mark, which used to hide the 'path' column.
    good, silent = folder / "good.mp4", folder / "silent.mp4"
    rows = f"path,caption\n{good},a\n{silent},b\n{good},a\n{silent},b\n"
    (tmp_path / "excel.csv").write_bytes(rows.encode("utf-8-sig"))
    items = list_items(tmp_path / "excel.csv")
    assert [i.path for i in items] == [good, silent, good, silent]
    assert "2 rows repeat an earlier row exactly" in caplog.text
    # A file listed twice is two items; each unusable row is counted once.
    ds = ClipDataset(tmp_path / "excel.csv", SPEC)
    assert sum(ds[i] is not None for i in range(len(ds))) == 2
    assert sorted(ds.skipped) == [1, 3]
    assert "2 of 4 files used; skipped 2: 2 no audio track" in ds.summary()
    text = f"# clips\n{good}\n\nsub/good2.mp4\n"
    (folder / "list.txt").write_text(text)
    assert list_items(folder / "list.txt") == [ClipItem(good), ClipItem(folder / "sub/good2.mp4")]
    (tmp_path / "m.tsv").write_text("path\n")
    with pytest.raises(ValueError, match=r"m.tsv: a manifest must be .csv, .jsonl or .txt"):
        list_items(tmp_path / "m.tsv")


def test_audio_with_nan_samples_is_skipped(tmp_path):
    """Float PCM can carry NaN: such a file is skipped with its reason, never cached."""
    import av

    path = tmp_path / "nan.mkv"
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("ffv1", rate=10)
        vstream.width, vstream.height, vstream.pix_fmt = 16, 16, "yuv420p"
        astream = container.add_stream("pcm_f32le", rate=16000, layout="mono")
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        samples = np.zeros((1, 32000), np.float32)
        samples[0, 20000] = np.nan
        for start in range(0, 32000, 1600):
            chunk = av.AudioFrame.from_ndarray(samples[:, start : start + 1600], "flt", "mono")
            chunk.sample_rate, chunk.pts = 16000, start
            container.mux(astream.encode(chunk))
        container.mux(astream.encode())
    ds = ClipDataset(tmp_path, ClipSpec(duration=1.5, fps=5.0, size=16, sample_rate=16000))
    assert ds[0] is None
    assert ds.skipped == {0: "audio has NaN or infinite samples"}


class PoolModel(BaseModel):
    """A stand-in base model: average pooling as the encoder, a character histogram as text."""

    scheduler_config = {"_class_name": "DDPMScheduler"}  # noqa: RUF012

    def __init__(self, modality: str) -> None:
        self.modality = modality
        self.calls = 0

    def predict(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        return torch.zeros_like(x_t)

    def latent_shape(self) -> tuple[int, ...]:
        return (4, 4000) if self.modality == "audio" else (3, 5, 4, 4)

    def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self.calls += 1
        if self.modality == "audio":
            return media.reshape(media.shape[0], 4, 4000)
        return torch.nn.functional.avg_pool3d(media, (1, 4, 4))

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        pooled = torch.stack(
            [
                torch.bincount(torch.tensor([ord(c) % 8 for c in p] or [0]), minlength=8).float()
                * bool(p)
                for p in prompts
            ]
        )
        return PromptEmbeds(pooled, pooled)

    def pooled_text_embedding(self, cond):
        return cond.pooled


def test_latent_cache_resumes_and_round_trips(folder, tmp_path):
    ds = ClipDataset(folder, SPEC, seed=1)
    audio_model, video_model = PoolModel("audio"), PoolModel("video")
    out = tmp_path / "cache"
    manifest = cache_latents(
        ds, audio_model, video_model, out, shard_size=2, batch_size=2, progress=False
    )
    assert manifest["complete"] and manifest["num_pairs"] == 2
    assert len(manifest["shards"]) == 3
    assert {Path(s["path"]).name for s in manifest["skipped"]} == {
        "silent.mp4",
        "short.mp4",
        "corrupt.mp4",
        "notes.mkv",
    }
    assert manifest["skipped"][0].keys() == {"row", "path", "reason"}
    cache = load_latent_cache(out)
    batch = collate([ds[i] for i in range(len(ds))])
    torch.testing.assert_close(cache.audio, audio_model.encode(batch["audio"]))
    torch.testing.assert_close(cache.video, video_model.encode(batch["video"]))
    assert cache.cond["text_audio"].shape == (2, 8) and cache.uncond["text_video"].shape == (8,)
    assert sorted(Path(p).name for p in cache.paths) == ["good.mp4", "good2.mp4"]

    # Resume: remove one shard; only its clips are encoded again, the result is the same.
    shard = next(e for e in manifest["shards"] if e["file"] and e["count"])
    (out / shard["file"]).unlink()
    audio_model.calls = 0
    cache_latents(ds, audio_model, video_model, out, shard_size=2, batch_size=2, progress=False)
    assert audio_model.calls == 1
    again = load_latent_cache(out)
    torch.testing.assert_close(again.audio, cache.audio)
    # A tampered shard is caught.
    path = out / shard["file"]
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match="sha256"):
        load_latent_cache(out)

    # Other data, clip settings or base models: refused, saying what differs.
    with pytest.raises(ValueError, match=r"made from other inputs \(data\.seed: was 1, now 2\)"):
        cache_latents(ClipDataset(folder, SPEC, seed=2), audio_model, video_model, out,
                      shard_size=2, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="shard_size: was 2, now 3"):
        cache_latents(ds, audio_model, video_model, out, shard_size=3, progress=False)


def test_clips_with_non_finite_latents_are_skipped(folder, tmp_path):
    class FirstCallNaN(PoolModel):
        def encode(self, media: Tensor, generator: torch.Generator | None = None) -> Tensor:
            out = super().encode(media, generator)
            return out * float("nan") if self.calls == 1 else out

    ds = ClipDataset(folder, SPEC, seed=1)  # good.mp4 is the first usable clip, good2 the last
    manifest = cache_latents(ds, FirstCallNaN("audio"), PoolModel("video"), tmp_path,
                             shard_size=2, batch_size=2, progress=False)  # fmt: skip
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    assert reasons["good.mp4"] == "encoded latents or text embeddings are not finite"
    assert len(reasons) == 5 and manifest["num_pairs"] == 1
    cache = load_latent_cache(tmp_path)
    assert [Path(p).name for p in cache.paths] == ["good2.mp4"]
    assert cache.audio.shape[0] == 1 and torch.isfinite(cache.audio).all()


def test_clip_spec_numbers_are_checked():
    with pytest.raises(ValueError, match=r"fps: must be > 0\.0, got 0\.0"):
        ClipSpec(fps=0.0)
    with pytest.raises(ValueError, match="duration: must be finite, got nan"):
        ClipSpec(duration=float("nan"))
    with pytest.raises(ValueError, match="size: must be an integer, got '256'"):
        ClipSpec(size="256")


def test_caption_dropout():
    g = torch.Generator().manual_seed(0)
    cond = {"text_audio": torch.ones(4000, 3), "text_video": 2 * torch.ones(4000, 5)}
    uncond = {"text_audio": torch.zeros(3), "text_video": torch.zeros(5)}
    assert caption_dropout(cond, uncond, 0.0, g)["text_audio"].eq(1).all()
    assert caption_dropout(cond, uncond, 1.0, g)["text_video"].eq(0).all()
    out = caption_dropout(cond, uncond, 0.1, g)
    dropped_a = out["text_audio"][:, 0] == 0
    assert torch.equal(dropped_a, out["text_video"][:, 0] == 0)  # same pairs for both
    assert abs(dropped_a.float().mean().item() - 0.1) < 3 * math.sqrt(0.09 / 4000)
    captions = drop_captions(["x"] * 1000, 0.1, torch.Generator().manual_seed(1))
    assert 60 < captions.count("") < 140


def faststart_copy(source: Path, target: Path) -> Path:
    """``source`` remuxed with its index (``moov``) before the media data, as streaming
    encoders write it: such a file still opens when its end is cut off."""
    with (
        av.open(str(source)) as src,
        av.open(str(target), "w", options={"movflags": "faststart"}) as dst,
    ):
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    return target


def test_truncated_mp4_is_skipped_and_counted(tmp_path):
    whole = faststart_copy(write_clip(tmp_path / "src.mp4"), tmp_path / "whole.mp4")
    data = whole.read_bytes()
    assert data[4:8] == b"ftyp" and data[36:40] == b"moov"  # the index comes first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(0.99 * len(data))])  # the last 1 % is missing
    with av.open(str(cut)) as container:  # it opens, and says it is 3 s long
        assert container.duration / av.time_base == pytest.approx(SRC_SECONDS, abs=0.05)
    last = ClipItem(whole, start=SRC_SECONDS - SPEC.duration)
    assert read_clip(last, SPEC).audio.abs().max() > 0.2
    for start in (0.0, SRC_SECONDS - SPEC.duration):
        with pytest.raises(SkipClip, match=rf"^truncated file \({len(data) * 99 // 100} bytes"):
            read_clip(ClipItem(cut, start=start), SPEC)
    ds = ClipDataset(tmp_path, SPEC)
    assert [ds[i] is None for i in range(len(ds))] == [True, False, False]
    assert ds.summary() == "2 of 3 files used; skipped 1: 1 truncated file"


def test_a_cache_with_nothing_in_it_is_an_error(tmp_path):
    (tmp_path / "notes.xyz").write_text("not a video")
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text('{"path": 5}\n{"path": "notes.xyz"}\n')
    ds = ClipDataset(manifest, SPEC)
    with pytest.raises(
        InputError,
        match=r"cache: no row gave a clip, so the cache is empty: "
        r"row 1 \(.*5\): file not found; row 2 \(.*notes.xyz\): not a readable",
    ):
        cache_latents(
            ds, PoolModel("audio"), PoolModel("video"), tmp_path / "cache", progress=False
        )
