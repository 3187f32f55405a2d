"""Seeds derived from integers: every random stream in mmdisco is a function of a seed and
its place (shard, batch, modality), never of how often a run was interrupted."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy's SeedSequence), for torch generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)
