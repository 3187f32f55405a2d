"""The shipped world pipeline (``src/mmdisco/assets/world/pipeline``), built by one call.

:func:`build_world_pipeline` (``mmdisco build-world-pipeline``) runs the demo
(:func:`mmdisco.demo.run_demo`, its settings and recipe) in a work folder, takes the
discriminator of the demo's best row, and writes it with the shipped world base models and
the demo's sampler and guidance scales as an :class:`~mmdisco.pipeline.MMDisCoPipeline`
folder. The weights are stored in float16 when that keeps guidance intact: the stored copy
is sampled again on the demo's evaluation seeds and must score within ``tolerance`` of the
demo's own row, or float32 is written instead. ``eval.json`` in the folder records both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from mmdisco.config import BaseModelConfig, SamplingConfig
from mmdisco.io import write_json_atomic
from mmdisco.pipeline import MMDisCoPipeline, PipelineConfig

EVAL_NAME = "eval.json"


def build_world_pipeline(
    out: str | os.PathLike,
    settings: Any = None,
    work_dir: str | os.PathLike = "outputs/build-world-pipeline",
    tolerance: float = 0.02,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the demo in ``work_dir`` and write its best discriminator to ``out``
    as a pipeline folder; returns what ``out/eval.json`` holds."""
    from mmdisco.base_models.loading import SCHEDULERS
    from mmdisco.demo import EVAL_SEED_OFFSET, METRICS, DemoSettings, run_demo
    from mmdisco.discriminator import load_discriminator
    from mmdisco.sampling import sample_batches
    from mmdisco.world import evaluate
    from mmdisco.world.models import ASSETS_DIR, load_world_models

    start = time.perf_counter()
    settings = settings or DemoSettings()
    report = run_demo(work_dir, settings, progress=progress)
    best = report["best"]
    if best is None:
        raise ValueError(f"the demo in {work_dir} trained no discriminator (settings.heads)")
    disc_dir = Path(work_dir) / f"disc_{best.removeprefix('mmdisco_')}" / "discriminator"

    models = Path(settings.models_dir) if settings.models_dir else ASSETS_DIR
    sampler = SCHEDULERS[settings.sample_scheduler] or "default"
    config = PipelineConfig(
        audio=BaseModelConfig("world_audio", str(models / "audio")),
        video=BaseModelConfig("world_video", str(models / "video")),
        sampling=SamplingConfig(
            scheduler=sampler,
            num_inference_steps=settings.sample_steps,
            guidance_scale_audio=settings.guidance_scale_audio,
            guidance_scale_video=settings.guidance_scale_video,
            window=tuple(settings.guidance_window),
        ),
    )
    audio, video = load_world_models(directory=models)
    sample = settings.sample_settings()

    def stored_scores(dtype: torch.dtype) -> dict[str, float]:
        """Write the folder with weights in ``dtype``, load it back, sample the demo's seeds."""
        pipe = MMDisCoPipeline(audio, video, load_discriminator(disc_dir), config)
        pipe.save_pretrained(out, dtype=dtype)
        stored = MMDisCoPipeline.from_pretrained(out).discriminator
        a, v = sample_batches(
            audio,
            video,
            settings.n_eval,
            sample,
            seed=EVAL_SEED_OFFSET + settings.seed,
            discriminator=stored,
            batch_size=128,
        )
        scores = evaluate(video.decode(v), audio.decode(a))
        return {k: round(float(scores[k]), 4) for k in METRICS}

    reference = {k: report[best][k] for k in METRICS}
    dtype = torch.float16
    scores = stored_scores(dtype)
    if any(reference[k] - scores[k] > tolerance for k in METRICS):
        dtype = torch.float32
        scores = stored_scores(dtype)
    result = {
        "discriminator": best,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "n_pairs": settings.n_eval,
        "demo_row_float32": reference,
        "stored_weights": scores,
        "independent": {k: report["independent"][k] for k in METRICS},
        "demo_settings": settings.to_dict(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(Path(out) / EVAL_NAME, result)
    return result
