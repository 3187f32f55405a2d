"""What a discriminator training step costs, measured in one run on the world (issue 10):

* a full-objective step (L_D + L_DLSM, L_DLSM read from the noise bank) against an
  L_D-only step (goal: <= 1.3x);
* the same full step with L_DLSM calling the base models live (what the bank saves);
* a discriminator step against one fine-tuning step of both base models on the same batch
  of real pairs (goal: the discriminator >= 3x faster; the paper reports 1.46-2.11x).

The demo's codebook discriminator and settings; median of ``--repeats`` timed steps after
warm-up, one torch thread.

    python benchmarks/step_cost.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmdisco.demo import DemoSettings
from mmdisco.discriminator.codebook import CodebookConfig, CodebookDiscriminator
from mmdisco.io import write_json_atomic, write_text_atomic
from mmdisco.training.bank import build_noise_bank, load_noise_bank
from mmdisco.training.data import BatchOrder, PairData
from mmdisco.training.trainer import micro_batches, train_step
from mmdisco.world.models import load_world_models
from mmdisco.world.recipes import REAL_SEED_OFFSET, world_real_pairs

RESULTS = Path(__file__).parent / "results" / "step_cost"


def _time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = DemoSettings()
    audio, video = load_world_models()
    real = world_real_pairs(audio, video, 512, REAL_SEED_OFFSET)
    g = torch.Generator().manual_seed(0)
    fake = PairData(
        real.audio[torch.randperm(512, generator=g)], real.video[torch.randperm(512, generator=g)]
    )
    config = CodebookConfig(
        audio.latent_shape(), video.latent_shape(), settings.codebook_codes, settings.codebook_codes
    )
    disc = CodebookDiscriminator.from_samples(config, real.audio, real.video).couple(
        real.audio, real.video
    )
    base = settings.codebook_train
    with tempfile.TemporaryDirectory() as scratch:
        build_noise_bank(audio, video, real, scratch, noisings=1, progress=False)
        bank = load_noise_bank(scratch)

    def step_fn(config, with_bank: bool):
        opt = torch.optim.Adam(disc.parameters(), lr=0.0)  # lr 0: every step sees one model
        orders = tuple(
            BatchOrder(len(d), config.batch_size, k) for k, d in enumerate((real, fake, fake))
        )
        if with_bank:
            orders += (BatchOrder(len(bank), config.dlsm_batch_size or config.batch_size, 4),)
        state = {"step": 0}

        def run() -> None:
            batches = micro_batches(
                real, fake, orders, config, state["step"], 0, 1, torch.device("cpu"),
                bank if with_bank else None,
            )  # fmt: skip
            train_step(disc, opt, audio, video, batches, config, state["step"])
            state["step"] += 1

        return run

    ld_only = dataclasses.replace(base, use_dlsm=False)
    live = dataclasses.replace(base, dlsm_batch_size=None)
    half = dataclasses.replace(base, dlsm_batch_size=max(1, (base.dlsm_batch_size or 2) // 2))
    seconds = {
        "l_d_only": _time(step_fn(ld_only, False), args.repeats),
        "full_bank": _time(step_fn(base, True), args.repeats),
        "full_bank_half_rows": _time(step_fn(half, True), args.repeats),
        "full_live": _time(step_fn(live, False), args.repeats),
    }

    # One fine-tuning step of both base models on the same real batch (denoising loss).
    params = [p for m in (audio, video) for p in m.net.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=0.0)
    batch = real.take(torch.arange(base.batch_size))

    def finetune() -> None:
        opt.zero_grad()
        loss = 0.0
        for model, x0 in ((audio, batch.audio), (video, batch.video)):
            t = torch.randint(0, model.schedule.num_train_timesteps, (len(x0),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            pred = model.predict(model.schedule.add_noise(x0, noise, t), t)
            loss = loss + (pred - noise).pow(2).mean()
        loss.backward()
        opt.step()

    seconds["base_finetune"] = _time(finetune, args.repeats)
    ratios = {
        "full_bank_over_l_d_only": seconds["full_bank"] / seconds["l_d_only"],
        "full_bank_half_rows_over_l_d_only": seconds["full_bank_half_rows"] / seconds["l_d_only"],
        "full_live_over_l_d_only": seconds["full_live"] / seconds["l_d_only"],
        "base_finetune_over_full_bank": seconds["base_finetune"] / seconds["full_bank"],
    }
    result = {
        "seconds_per_step": {k: round(v, 5) for k, v in seconds.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "batch_size": base.batch_size,
        "dlsm_batch_size": base.dlsm_batch_size,
        "torch_threads": 1,
        "repeats": args.repeats,
    }
    write_json_atomic(args.out / "step_cost.json", result)
    lines = [
        "# Discriminator step cost (world, codebook discriminator, one thread)",
        "",
        "| step | seconds | ratio |",
        "|---|---|---|",
        f"| L_D only | {seconds['l_d_only']:.4f} | 1.00 |",
        f"| L_D + L_DLSM, bank, {base.dlsm_batch_size} L_DLSM rows (the demo's) | "
        f"{seconds['full_bank']:.4f} | "
        f"{ratios['full_bank_over_l_d_only']:.2f} (goal <= 1.3) |",
        f"| L_D + L_DLSM, bank, {half.dlsm_batch_size} L_DLSM rows | "
        f"{seconds['full_bank_half_rows']:.4f} | "
        f"{ratios['full_bank_half_rows_over_l_d_only']:.2f} |",
        f"| L_D + L_DLSM, base models called live | {seconds['full_live']:.4f} | "
        f"{ratios['full_live_over_l_d_only']:.2f} |",
        f"| fine-tuning both base models, same batch | {seconds['base_finetune']:.4f} | "
        f"{ratios['base_finetune_over_full_bank']:.2f}x the full bank step (goal >= 3) |",
        "",
    ]
    write_text_atomic(args.out / "step_cost.md", "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
