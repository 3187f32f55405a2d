"""The end-to-end demo on the synthetic world, kept as a benchmark: alignment bought by the
trained discriminator next to the exact ratio's, validity kept, calibration, wall time; over
several seeds (data, fakes, discriminator and sampling seeds all change), mean and std.

Runs ``mmdisco.demo.run_demo`` (the same code as ``mmdisco demo``) once per seed in a scratch
directory and writes ``benchmarks/results/demo/``: ``seeds.json`` / ``seeds.md`` (mean and std
per row and score), and seed 0's report, table and figures (the fakes cache, checkpoints and
mp4s stay behind).

    python benchmarks/world_demo.py                 # 3 seeds (about 2.5 minutes each, 2 CPU cores)
    python benchmarks/world_demo.py --quick         # smoke run (well under a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from mmdisco.demo import METRICS, DemoSettings, run_demo
from mmdisco.io import atomic_path, write_json_atomic, write_text_atomic

RESULTS = Path(__file__).parent / "results" / "demo"
KEEP = ("report.json", "report.md", "samples.png", "calibration.png")
ROWS = ("independent", "mmdisco_codebook", "exact_ratio", "real")


def aggregate(reports: list[dict]) -> dict:
    """Mean and std over seeds of every row's scores, and of the trained discriminator's
    calibration (cosines and accuracy per noise level)."""
    rows = {}
    for row in ROWS:
        if all(row in r for r in reports):
            rows[row] = {m: _mean_std([r[row][m] for r in reports]) for m in METRICS}
    calibration = {}
    tables = [r.get("calibration", {}).get("codebook") for r in reports]
    if all(tables):
        for i, level in enumerate(tables[0]):
            calibration[str(level["noise_level"])] = {
                key: _mean_std([t[i][key] for t in tables if t[i][key] is not None])
                for key in ("cos_audio", "cos_video", "accuracy", "bayes_accuracy")
            }
    return {
        "seeds": [r["settings"]["seed"] for r in reports],
        "rows": rows,
        "calibration_codebook": calibration,
        "seconds": _mean_std([r["seconds"] for r in reports]),
    }


def _mean_std(values: list[float]) -> dict:
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "n": len(values)}


def render(summary: dict) -> str:
    n = len(summary["seeds"])
    labels = {
        "independent": "independent",
        "mmdisco_codebook": "MMDisCo, one discriminator (L_D + L_DLSM), scale 1",
        "exact_ratio": "exact ratio, scale 1 (the method's ceiling)",
        "real": "real clips (ceiling)",
    }
    lines = [
        f"# World demo over {n} seeds (mean ± std)",
        "",
        "| method | semantic | temporal | validity (audio) | validity (video) |",
        "|---|---|---|---|---|",
    ]
    for row, scores in summary["rows"].items():
        cells = [f"{scores[m]['mean']:.3f} ± {scores[m]['std']:.3f}" for m in METRICS]
        lines.append(f"| {labels[row]} | " + " | ".join(cells) + " |")
    if summary["calibration_codebook"]:
        lines += [
            "",
            "The discriminator against the exact ratio (input-gradient cosine; accuracy next "
            "to the Bayes rate):",
            "",
            "| t/T | cosine audio | cosine video | accuracy | Bayes accuracy |",
            "|---|---|---|---|---|",
        ]
        for level, c in summary["calibration_codebook"].items():
            cells = []
            for key in ("cos_audio", "cos_video", "accuracy", "bayes_accuracy"):
                v = c[key]
                cells.append("n/a" if v["mean"] is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
    s = summary["seconds"]
    lines += ["", f"Wall time per run: {s['mean']:.0f} ± {s['std']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (pipeline check)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    base = DemoSettings.quick() if args.quick else DemoSettings()
    reports = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as scratch:
            report = run_demo(scratch, dataclasses.replace(base, seed=seed), progress=False)
            reports.append(report)
            if seed == args.seeds[0]:
                for name in KEEP:
                    if (Path(scratch) / name).exists():
                        with atomic_path(args.out / name) as tmp:
                            shutil.copyfile(Path(scratch) / name, tmp)
        row = report.get("mmdisco_codebook", {})
        print(f"seed {seed}: {report['seconds']:.0f} s; codebook {row}", flush=True)
    summary = aggregate(reports)
    write_json_atomic(args.out / "seeds.json", summary)
    write_text_atomic(args.out / "seeds.md", render(summary))
    print(render(summary))


if __name__ == "__main__":
    main()
