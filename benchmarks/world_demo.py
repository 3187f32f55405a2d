"""The end-to-end demo on the synthetic world, kept as a benchmark: alignment bought by each
discriminator head, validity kept, and the wall time of the whole run.

Runs ``mmdisco.demo.run_demo`` (the same code as ``mmdisco demo``) in a scratch directory and
copies its report, table and figure to ``benchmarks/results/demo/``; the fakes cache,
checkpoints and mp4s stay behind.

    python benchmarks/world_demo.py            # full run (about 8 minutes on 2 CPU cores)
    python benchmarks/world_demo.py --quick    # smoke run (well under a minute)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from mmdisco.demo import DemoSettings, run_demo
from mmdisco.io import atomic_path

RESULTS = Path(__file__).parent / "results" / "demo"
KEEP = ("report.json", "report.md", "samples.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (pipeline check)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    with tempfile.TemporaryDirectory() as scratch:
        report = run_demo(scratch, settings)
        for name in KEEP:
            with atomic_path(args.out / name) as tmp:
                shutil.copyfile(Path(scratch) / name, tmp)
    print(f"{report['seconds']:.0f} s; best head {report['best']}; wrote {args.out}")


if __name__ == "__main__":
    main()
