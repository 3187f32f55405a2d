"""The toy grid {ind, ood} x {gt, no_joint, d, dlsm, both} over seeds (paper Table 1).

Per seed: one base model is trained on the 1-D data and duplicated for x and y; 500 fake
pairs and the 4000 "no joint" evaluation pairs are drawn from it (independent x and y, shared
by both settings); per setting, 500 real pairs train one discriminator per loss row, which
then guides 4000 ancestral DDPM samples. Nothing is cached between runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmdisco.toy.gmm import TARGETS, base_target
from mmdisco.toy.metrics import evaluate
from mmdisco.toy.sampling import sample_pairs
from mmdisco.toy.train import ROWS, train_base, train_discriminator

SETTINGS = ("ind", "ood")
ALL_ROWS = ("gt", "no_joint", *ROWS)
METRICS = ("nll", "mode_precision", "mode_balance")
PAPER_NLL = {
    "ind": {"gt": 1.67, "no_joint": 18.80, "d": 3.29, "dlsm": 2.40, "both": 1.94},
    "ood": {"gt": 1.67, "no_joint": 22.10, "d": 16.60, "dlsm": 2.63, "both": 2.53},
}


@dataclass(frozen=True)
class ToyConfig:
    """Sizes and step counts (paper Table 5 where it says; step counts tuned for a CPU)."""

    seeds: int = 3
    num_train: int = 500  # base-model data, real pairs and fake pairs alike
    num_eval: int = 4000
    base_steps: int = 1500
    timestep_groups: int = 64  # distinct timesteps per base batch (the time MLP's cost)
    base_ema: float = 0.0  # EMA of the base weights; 0 returns the last iterate
    disc_steps: int = 1000
    disc_lr: float = 3e-3  # Adam, cosine-decayed; 1e-3 (Table 5) needs ~3x the steps
    inference_steps: int = 100  # ancestral DDPM steps (the base models are trained with 500)
    dlsm_weight: float = 1.0
    guidance_scale: float = 1.0

    @classmethod
    def quick(cls) -> ToyConfig:
        sizes = {"seeds": 1, "num_train": 200, "num_eval": 400}
        return cls(**sizes, **{"base_steps": 60, "disc_steps": 20, "inference_steps": 10})


def _seed(*parts: int) -> int:
    """A distinct seed per (seed, stage, ...) so that stages never share random streams."""
    return int(sum(p * 1000**i for i, p in enumerate(reversed(parts))))


def run_seed(cfg: ToyConfig, seed: int, bar: tqdm) -> dict[str, dict[str, Tensor]]:
    """Samples (num_eval, 2) for every (setting, row) of one seed."""
    gen = torch.Generator().manual_seed(_seed(seed, 1))
    net = train_base(
        base_target().sample(cfg.num_train, gen),
        cfg.base_steps,
        _seed(seed, 2),
        timestep_groups=cfg.timestep_groups,
        ema_decay=cfg.base_ema,
    )
    fake = sample_pairs(net, cfg.num_train, _seed(seed, 3), None, cfg.inference_steps)
    independent = sample_pairs(net, cfg.num_eval, _seed(seed, 4), None, cfg.inference_steps)
    bar.update()
    out: dict[str, dict[str, Tensor]] = {}
    for s, setting in enumerate(SETTINGS):
        target = TARGETS[setting]()
        gen = torch.Generator().manual_seed(_seed(seed, 5, s))
        real = target.sample(cfg.num_train, gen)
        out[setting] = {"gt": target.sample(cfg.num_eval, gen), "no_joint": independent}
        for r, row in enumerate(ROWS):
            disc = train_discriminator(
                row,
                real,
                fake,
                net,
                cfg.disc_steps,
                _seed(seed, 6, s, r),
                cfg.dlsm_weight,
                lr=cfg.disc_lr,
            )
            out[setting][row] = sample_pairs(
                net,
                cfg.num_eval,
                _seed(seed, 7, s, r),
                disc,
                cfg.inference_steps,
                cfg.guidance_scale,
            )
            bar.update()
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var)


def gap_ratio(nll: dict[str, float]) -> float:
    """(NLL_both - NLL_gt) / (NLL_no_joint - NLL_gt): the share of the independent models'
    excess NLL that guidance leaves (0 = as good as the target's own samples)."""
    return (nll["both"] - nll["gt"]) / (nll["no_joint"] - nll["gt"])


def run_grid(
    cfg: ToyConfig, progress: bool = True, threads: int = 1
) -> tuple[dict, dict[str, Tensor]]:
    """Run every seed on ``threads`` torch threads; returns the results dict (results.json)
    and the samples by ``"setting/row/seed"``.

    The numbers depend on the thread count and on the CPU kernels torch picks (their sums
    are ordered differently), so both are pinned or recorded: one thread by default, and the
    previous count restored afterwards (the grid may run inside another program)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results, samples = _run_seeds(cfg, progress)
    finally:
        torch.set_num_threads(previous)
    results["machine"] = {
        "torch_threads": threads,
        "torch": torch.__version__,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
    }
    return results, samples


def _run_seeds(cfg: ToyConfig, progress: bool) -> tuple[dict, dict[str, Tensor]]:
    start = time.perf_counter()
    samples: dict[str, Tensor] = {}
    per_seed: dict[str, dict[str, dict[str, list[float]]]] = {
        s: {r: {m: [] for m in METRICS} for r in ALL_ROWS} for s in SETTINGS
    }
    total = cfg.seeds * (1 + len(SETTINGS) * len(ROWS))
    with tqdm(total=total, desc="toy grid", disable=not progress) as bar:
        for seed in range(cfg.seeds):
            out = run_seed(cfg, seed, bar)
            for s, setting in enumerate(SETTINGS):
                target = TARGETS[setting]()
                gen = torch.Generator().manual_seed(_seed(seed, 8, s))
                reference = target.sample(cfg.num_eval, gen)
                for row in ALL_ROWS:
                    samples[f"{setting}/{row}/{seed}"] = out[setting][row]
                    for metric, value in evaluate(out[setting][row], target, reference).items():
                        per_seed[setting][row][metric].append(value)
    results: dict = {}
    std: dict = {}
    ratios: dict = {}
    for setting in SETTINGS:
        results[setting], std[setting] = {}, {}
        for row in ALL_ROWS:
            stats = {m: _stats(per_seed[setting][row][m]) for m in METRICS}
            results[setting][row] = {m: stats[m][0] for m in METRICS}
            std[setting][row] = {m: stats[m][1] for m in METRICS}
        seeds_nll = [
            {r: per_seed[setting][r]["nll"][i] for r in ALL_ROWS} for i in range(cfg.seeds)
        ]
        ratios[setting] = {
            "of_means": gap_ratio({r: results[setting][r]["nll"] for r in ALL_ROWS}),
            "per_seed": [gap_ratio(n) for n in seeds_nll],
        }
    results["seconds"] = time.perf_counter() - start
    results["std"] = std
    results["per_seed"] = per_seed
    results["gap_ratio"] = ratios
    results["paper_nll"] = PAPER_NLL
    results["config"] = asdict(cfg)
    return results, samples
