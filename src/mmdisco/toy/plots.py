"""Scatter plots like the paper's Figures 2 and 4 (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor

from mmdisco.io import save_figure

TITLES = {
    "gt": "target (GT)",
    "no_joint": "no joint guidance",
    "d": "$L_D$",
    "dlsm": "$L_{DLSM}$",
    "both": "$L_D + L_{DLSM}$",
}


def scatter_grid(
    samples: dict[str, Tensor],
    settings: tuple[str, ...],
    rows: tuple[str, ...],
    seed: int,
    path: str | Path,
    nll: dict | None = None,
) -> None:
    """One row of panels per setting, one panel per method; written atomically as PNG."""
    fig, axes = plt.subplots(
        len(settings), len(rows), figsize=(2.6 * len(rows), 2.6 * len(settings)), squeeze=False
    )
    for i, setting in enumerate(settings):
        for j, row in enumerate(rows):
            ax = axes[i][j]
            xy = samples[f"{setting}/{row}/{seed}"].numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=1.0, alpha=0.3, color="tab:blue", rasterized=True)
            ax.set(xlim=(-4, 4), ylim=(-4, 4), xticks=[-3, 0, 3], yticks=[-3, 0, 3])
            ax.set_aspect("equal")
            title = TITLES.get(row, row)
            if nll is not None:
                title += f"\nNLL {nll[setting][row]['nll']:.2f}"
            ax.set_title(title, fontsize=9)
        axes[i][0].set_ylabel(setting.upper())
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
