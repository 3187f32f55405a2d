"""What does reading a clip of a long file cost? (issue 15: memory in proportion to the clip.)

A synthetic 10-minute mp4 (32x32 at 4 fps, 8 kHz AAC) is written once; then a 2 s training
clip is read at its start, middle and end (``mmdisco.data.read_clip``, which seeks), a 2 s
window through ``mmdisco.media.read_mp4``, and the whole file. ``evaluate`` (AV-Align) runs
on a 60 s file with and without ``max_seconds=2``. Peak memory is what ``tracemalloc`` sees
(numpy arrays included; PyAV's own frame buffers are not traced), times are wall clock. All
figures come from one run, so ratios are comparable even on a busy machine.

    python benchmarks/streaming_memory.py

Writes ``benchmarks/results/streaming_memory.{json,md}`` (atomic writes).
"""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmdisco.data import ClipItem, ClipSpec, read_clip
from mmdisco.io import write_json_atomic, write_text_atomic
from mmdisco.media import read_mp4, write_mp4
from mmdisco.metrics.evaluate import EvalOptions, evaluate_directories

RESULTS = Path(__file__).parent / "results"
FPS, SR, SECONDS = 4, 8000, 600


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """(peak MB traced, seconds) of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6, time.perf_counter() - start
    finally:
        tracemalloc.stop()


def long_file(path: Path, seconds: int, fps: int = FPS, size: int = 32) -> Path:
    n = seconds * fps
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[..., 0] = (np.arange(n) % 256)[:, None, None]
    frames[(np.arange(n) % fps) == 0, : size // 2] = 255  # a flash every second (AV-Align)
    t = np.arange(seconds * SR) / SR
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * ((t % 1.0) < 0.1)).astype(np.float32)
    return write_mp4(path, frames, fps, audio, sample_rate=SR, crf=30)


def main() -> None:
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = long_file(Path(tmp) / "ten_minutes.mp4", SECONDS)
        spec = ClipSpec(duration=2.0, fps=float(FPS), size=32, sample_rate=SR)
        for start in (1.0, 300.0, 590.0):
            item = ClipItem(path, start=start)
            peak, secs = measure(lambda item=item: read_clip(item, spec))
            rows.append({"case": f"read_clip, 2 s at {start:.0f} s", "peak_mb": peak, "s": secs})
        peak, secs = measure(lambda: read_mp4(path, start=300.0, duration=2.0))
        rows.append({"case": "read_mp4, 2 s window at 300 s", "peak_mb": peak, "s": secs})
        peak, secs = measure(lambda: read_mp4(path))
        rows.append({"case": "read_mp4, whole 600 s file", "peak_mb": peak, "s": secs})
        folder = Path(tmp) / "eval"
        folder.mkdir()
        long_file(folder / "sixty_seconds.mp4", 60, fps=8, size=64)
        warm = EvalOptions(metrics=("av_align",), progress=False, max_seconds=1.0)
        evaluate_directories(folder, None, warm)  # imports and JIT compilation, not measured
        for seconds in (2.0, None):
            options = EvalOptions(metrics=("av_align",), progress=False, max_seconds=seconds)
            peak, secs = measure(lambda o=options: evaluate_directories(folder, None, o))
            what = "whole file" if seconds is None else f"max_seconds={seconds:g}"
            rows.append(
                {"case": f"evaluate av_align, 60 s file, {what}", "peak_mb": peak, "s": secs}
            )
    whole = next(r for r in rows if r["case"].startswith("read_mp4, whole"))["peak_mb"]
    worst_clip = max(r["peak_mb"] for r in rows if r["case"].startswith("read_clip"))
    evals = [r["peak_mb"] for r in rows if r["case"].startswith("evaluate")]
    result = {
        "rows": rows,
        "whole_file_over_worst_clip": whole / worst_clip,
        "evaluate_whole_over_2s": evals[1] / evals[0],
        "torch_threads": torch.get_num_threads(),
    }
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "streaming_memory.json", result)
    lines = ["| case | peak traced memory (MB) | time (s) |", "|---|---:|---:|"]
    lines += [f"| {r['case']} | {r['peak_mb']:.2f} | {r['s']:.3f} |" for r in rows]
    lines += [
        "",
        f"Whole file / worst 2 s clip: {result['whole_file_over_worst_clip']:.0f}x; "
        f"evaluate whole / first 2 s: {result['evaluate_whole_over_2s']:.1f}x.",
        "",
    ]
    write_text_atomic(RESULTS / "streaming_memory.md", "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
