"""Find the app's example seeds: pairs the shipped world pipeline gets wrong without guidance
and right with it.

For every seed in a range, the pipeline's default settings are sampled unguided and guided,
and the world's exact detectors read both clips. A seed is an example when the unguided pair
is valid on both sides (class read from picture and sound) but misaligned (classes differ, or
fewer than all events line up) and the guided pair is valid, agrees on class and aligns every
event. Prints one JSON line per example; the app's ``EXAMPLES`` comes from this output.

    python scripts/find_app_examples.py --first 0 --count 256
"""

from __future__ import annotations

import argparse
import json

import torch

from mmdisco.app import sample_both, world_verdict
from mmdisco.pipeline import WORLD_PIPELINE, MMDisCoPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = MMDisCoPipeline.from_pretrained(WORLD_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    found = 0
    for lo in range(args.first, args.first + args.count, args.batch):
        seeds = list(range(lo, min(lo + args.batch, args.first + args.count)))
        outs = sample_both(pipe, seeds)
        for k, seed in enumerate(seeds):
            plain, guided = (world_verdict(outs[name], k) for name in ("unguided", "guided"))
            if plain.valid and not plain.aligned and guided.aligned:
                found += 1
                print(
                    json.dumps({"seed": seed, "unguided": plain.badge, "guided": guided.badge}),
                    flush=True,
                )
    print(json.dumps({"seeds_tried": args.count, "examples": found}), flush=True)


if __name__ == "__main__":
    main()
