"""HiFi-GAN generator (Kong et al. 2020), the vocoder of spectrogram-image models (Auffusion).

Parameter names follow the original implementation (``conv_pre``, ``ups``, ``resblocks``,
``conv_post``), so a released generator converts by folding its weight normalisation
(:func:`fold_weight_norm`) and nothing else. Stored as ``config.json`` + ``model.safetensors``.
Input is a log-mel spectrogram ``(B, num_mels, T)``; output a waveform ``(B, T * hop)`` in
[-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdisco.io import load_pretrained, save_pretrained

LEAKY_SLOPE = 0.1


@dataclass(frozen=True)
class HifiGanConfig:
    """The generator's hyper-parameters, as in a HiFi-GAN ``config.json`` (extra keys of that
    file, e.g. training settings, are ignored by :meth:`from_dict`)."""

    num_mels: int = 80
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    def __post_init__(self) -> None:
        for name in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        dilations = tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes)
        object.__setattr__(self, "resblock_dilation_sizes", dilations)
        object.__setattr__(self, "resblock", str(self.resblock))
        if self.resblock not in ("1", "2"):
            raise ValueError(f"HifiGanConfig.resblock must be '1' or '2', got {self.resblock!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")

    @classmethod
    def from_dict(cls, data: dict) -> HifiGanConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def hop_length(self) -> int:
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    """``"1"``: pairs of a dilated and an undilated conv per dilation; ``"2"``: one conv each."""

    def __init__(self, kind: str, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()

        def conv(d: int) -> nn.Conv1d:
            return nn.Conv1d(channels, channels, kernel, dilation=d, padding=_padding(kernel, d))

        if kind == "1":
            self.convs1 = nn.ModuleList(conv(d) for d in dilations)
            self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        else:
            self.convs = nn.ModuleList(conv(d) for d in dilations)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "convs1"):
            for c1, c2 in zip(self.convs1, self.convs2, strict=True):
                x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LEAKY_SLOPE)), LEAKY_SLOPE))
            return x
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LEAKY_SLOPE))
        return x


class HifiGan(nn.Module):
    """The HiFi-GAN generator (weight normalisation folded away)."""

    def __init__(self, config: HifiGanConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.upsample_initial_channel
        self.conv_pre = nn.Conv1d(c.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(c.upsample_rates, c.upsample_kernel_sizes, strict=True)
        ):
            # An odd (kernel - rate) cannot be padded symmetrically: one more sample of padding
            # and one of output padding keep the output exactly ``rate`` times longer.
            odd = (kernel - rate) % 2
            self.ups.append(
                nn.ConvTranspose1d(
                    ch // 2**i,
                    ch // 2 ** (i + 1),
                    kernel,
                    rate,
                    padding=(kernel - rate) // 2 + odd,
                    output_padding=odd,
                )
            )
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock(c.resblock, ch // 2 ** (i + 1), k, d))
        self.conv_post = nn.Conv1d(ch // 2 ** len(c.upsample_rates), 1, 7, padding=3)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_pre.weight.dtype

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, num_mels, T)`` log-mel -> ``(B, T * hop)`` waveform."""
        x = self.conv_pre(mel)
        n = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LEAKY_SLOPE))
            x = sum(block(x) for block in self.resblocks[i * n : (i + 1) * n]) / n
        x = self.conv_post(F.leaky_relu(x))  # the original's final slope is torch's 0.01
        return torch.tanh(x)[:, 0]

    def save_pretrained(self, directory: str | Path) -> None:
        save_pretrained(directory, asdict(self.config), self)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, torch_dtype: torch.dtype | None = None
    ) -> HifiGan:
        def build(config: dict) -> HifiGan:
            return cls(HifiGanConfig.from_dict(config))

        model = load_pretrained(directory, build, "a converted HiFi-GAN")
        return model.to(dtype=torch_dtype).eval() if torch_dtype else model.eval()


def fold_weight_norm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with every weight-normalised weight replaced by its value ``g v / |v|``.

    Understands both ``torch.nn.utils.weight_norm`` keys (``weight_g`` / ``weight_v``) and
    parametrisation keys (``parametrizations.weight.original0`` / ``original1``); the norm is
    taken over every dimension but the first, weight_norm's default.
    """
    pairs = {
        ".weight_g": (".weight_v", ".weight"),
        ".parametrizations.weight.original0": (".parametrizations.weight.original1", ".weight"),
    }
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for g_suffix, (v_suffix, target) in pairs.items():
            if key.endswith(g_suffix):
                stem = key[: -len(g_suffix)]
                v = state[stem + v_suffix]
                out[stem + target] = torch._weight_norm(v.float(), value.float(), 0).to(v.dtype)
                break
            if key.endswith(v_suffix) and key[: -len(v_suffix)] + g_suffix in state:
                break
        else:
            out[key] = value
    return out
