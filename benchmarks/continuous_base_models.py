"""Train the continuous world's base models, one per modality, and ship them.

:func:`~mmdisco.world.continuous_models.train_continuous_base` on fresh clips of the world
(18000 steps of 64 clips, one thread; about 1300 CPU-seconds each on the 2-core machine),
saved to ``src/mmdisco/assets/continuous/{audio,video}`` (``config.json`` records the
settings and the CPU-seconds). What they generate, unguided and guided, is measured by
``benchmarks/continuous_world.py --base trained``.

    python benchmarks/continuous_base_models.py                  # both
    python benchmarks/continuous_base_models.py --modality video # one
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mmdisco.world.continuous_models import ASSETS_DIR, BASE_TRAINING, train_continuous_base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=BASE_TRAINING.steps)
    parser.add_argument("--modality", choices=("audio", "video", "both"), default="both")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    modalities = ("audio", "video") if args.modality == "both" else (args.modality,)
    for modality in modalities:
        cfg = dataclasses.replace(BASE_TRAINING, steps=args.steps)
        model = train_continuous_base(modality, cfg)
        model.save_pretrained(ASSETS_DIR / modality)
        print(
            f"{modality}: {model.config.training['cpu_seconds']} CPU s -> {ASSETS_DIR / modality}"
        )


if __name__ == "__main__":
    main()
