"""Every system a user weighs against MMDisCo, on the synthetic world, in one table: joint
generation (independent, MMDisCo, MMDisCo + resampling, best-of-N, the cascade T2V -> V2A,
a joint model from scratch, the joint model + MMDisCo) and conditional generation (V2A and
A2V by MMDisCo and by the cascade's models), with their training and sampling costs.

Runs ``mmdisco.world.systems.run_systems`` with its work (fakes, discriminators) in ``--work``,
which a rerun resumes, and copies the report, table and figure to
``benchmarks/results/systems/``.

    python benchmarks/world_systems.py            # full run (see report.md for its time)
    python benchmarks/world_systems.py --quick    # pipeline check (well under a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch

from mmdisco.errors import check_int
from mmdisco.io import atomic_path
from mmdisco.world.systems import SystemsSettings, run_systems

RESULTS = Path(__file__).parent / "results" / "systems"
KEEP = ("report.json", "report.md", "systems.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (pipeline check)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument(
        "--work", type=Path, default=None, help="fakes and discriminators (resumed; default: temp)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="discriminator seeds (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    settings = SystemsSettings.quick_settings() if args.quick else SystemsSettings()
    if args.seeds is not None:
        check_int("--seeds", args.seeds, 1)
        settings = dataclasses.replace(settings, disc_seeds=tuple(range(args.seeds)))
    torch.set_num_threads(check_int("--threads", args.threads, 1))
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        report = run_systems(work, settings)
        for name in KEEP:
            with atomic_path(args.out / name) as tmp:
                shutil.copyfile(work / name, tmp)
    print(f"{report['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
