"""Synchformer (Iashin et al. 2024) as hkchengrex/av-benchmark runs it for DeSync.

Three parts, each named as in av-benchmark's ``Synchformer`` so the released
``synchformer_state_dict.pth`` (the ``24-01-04T16-39-21`` AudioSet model) loads key for key:

* ``vfeat_extractor``: MotionFormer (divided space-time ViT-B/16 on 16-frame segments,
  2-frame tubelets -> 8 x 14 x 14 tokens + CLS). Each block attends over time, then over
  space, then applies its MLP; the CLS token attends to every token, a patch token only to its
  own column (time) or frame (space) and to the CLS token. The final norm is followed by a
  CLS-token transformer layer over each frame's patches -> (B, S, 8, D).
* ``afeat_extractor``: AST (HF ``ASTModel`` layout: 16 x 16 patches, stride 10, on the
  128 x 66 log-mel of a 0.64 s segment -> 12 x 6 tokens + CLS + distillation token), then a
  CLS-token transformer layer over each time step's frequency patches -> (B, S, 6, D).
* ``transformer``: ``vproj`` / ``aproj``, then a 3-layer GPT-style encoder over
  [OFF, 14 x 8 video tokens, MOD, 14 x 6 audio tokens] with a learned position embedding;
  the OFF token's output gives the logits over the 21 offsets ``linspace(-2, 2, 21)`` s.

The patch embedding ``vfeat_extractor.patch_embed`` (a 2-D conv) is in the checkpoint but
unused, as in the reference. Dropout is omitted: the network is only run in evaluation.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.io import save_tensors_atomic
from mmdisco.metrics.base import check_state_dict, read_weights


@dataclass(frozen=True)
class SynchformerConfig:
    """The released model by default; tests shrink the sizes."""

    dim: int = 768
    video_depth: int = 12
    video_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    segment_frames: int = 16
    tubelet: int = 2
    audio_depth: int = 12
    audio_heads: int = 12
    mel_bins: int = 128
    mel_frames: int = 66
    audio_patch: int = 16
    audio_stride: int = 10
    global_depth: int = 3
    global_heads: int = 8
    window_segments: int = 14
    offsets: int = 21

    @property
    def video_tokens(self) -> tuple[int, int]:
        """(time, patches per frame) of one segment."""
        return self.segment_frames // self.tubelet, (self.image_size // self.patch_size) ** 2

    @property
    def audio_tokens(self) -> tuple[int, int]:
        """(frequency, time) patches of one segment's spectrogram."""
        f = (self.mel_bins - self.audio_patch) // self.audio_stride + 1
        return f, (self.mel_frames - self.audio_patch) // self.audio_stride + 1

    @property
    def global_tokens(self) -> int:
        """OFF + video + MOD + audio tokens of one window (198 for the released model)."""
        return 2 + self.window_segments * (self.video_tokens[0] + self.audio_tokens[1])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)


class ClsEncoderLayer(nn.TransformerEncoderLayer):
    """Pre-norm transformer layer that prepends a learned CLS token to each sequence and
    returns its output: (N, L, D) -> (N, D). Pools a frame's patches (video) or a time
    step's frequency patches (audio)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(
            dim,
            heads,
            4 * dim,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=1e-6,
            batch_first=True,
            norm_first=True,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


# --- video: MotionFormer ------------------------------------------------------------------


class Conv2dPatches(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)


class TubeletPatches(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        kernel = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.dim, kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> (N, t * h * w, D), time-major."""
        return self.proj(x).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """Attention within groups of patch tokens (one frame, or one patch position over time);
    the CLS token (position 0) attends to all tokens and is a key of every group."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, over_time: bool) -> torch.Tensor:
        """x: (B, 1 + frames * patches, D)."""
        q, k, v = (_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)
        b, h, _, dh = q.shape

        def grouped(t: torch.Tensor) -> torch.Tensor:  # (B, H, f*n, dh) -> (B * groups, H, len, dh)
            t = t[:, :, 1:].unflatten(2, (frames, -1))  # (B, H, f, n, dh)
            t = t.permute(0, 3, 1, 2, 4) if over_time else t.permute(0, 2, 1, 3, 4)
            return t.flatten(0, 1)

        q_, k_, v_ = grouped(q), grouped(k), grouped(v)
        groups = q_.shape[0] // b
        k_ = torch.cat([k[:, :, :1].repeat_interleave(groups, 0), k_], dim=2)
        v_ = torch.cat([v[:, :, :1].repeat_interleave(groups, 0), v_], dim=2)
        out = F.scaled_dot_product_attention(q_, k_, v_).unflatten(0, (b, groups))
        out = out.permute(0, 2, 3, 1, 4) if over_time else out.permute(0, 2, 1, 3, 4)
        out = torch.cat([cls_out, out.reshape(b, h, -1, dh)], dim=2)
        return self.proj(_merge_heads(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (norm3), then space attention (norm1), then the MLP (norm2)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, over_time=True)
        x = x + self.attn(self.norm1(x), frames, over_time=False)
        return x + self.mlp(self.norm2(x))


class MotionFormer(nn.Module):
    """(B, S, 3, T, H, W) segments in [-1, 1] -> (B, S, t, D) per-frame features."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        t, n = cfg.video_tokens
        self.patch_embed = Conv2dPatches(cfg)  # in the checkpoint, unused (see module doc)
        self.patch_embed_3d = TubeletPatches(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, cfg.dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, t, cfg.dim))
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(cfg.dim, cfg.video_heads) for _ in range(cfg.video_depth)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.spatial_attn_agg = ClsEncoderLayer(cfg.dim, cfg.video_heads)
        self.frames = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        x = self.patch_embed_3d(x.flatten(0, 1))  # (BS, t * n, D)
        space = self.pos_embed[:, 1:].repeat(1, self.frames, 1)
        time = self.temp_embed.repeat_interleave(self.pos_embed.shape[1] - 1, dim=1)
        cls = self.cls_token + self.pos_embed[:, :1]
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x + space + time], dim=1)
        for block in self.blocks:
            x = block(x, self.frames)
        x = self.norm(x[:, 1:]).unflatten(1, (self.frames, -1))  # (BS, t, n, D)
        x = self.spatial_attn_agg(x.flatten(0, 1))  # (BS * t, D)
        return x.reshape(b, s, self.frames, -1)


# --- audio: AST (the HF ASTModel layout) ---------------------------------------------------


class ASTPatchEmbeddings(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(1, cfg.dim, cfg.audio_patch, stride=cfg.audio_stride)


class ASTEmbeddings(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        f, t = cfg.audio_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 2 + f * t, cfg.dim))
        self.patch_embeddings = ASTPatchEmbeddings(cfg)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(N, 1, F, T) -> (N, 2 + f * t, D); patches frequency-major."""
        x = self.patch_embeddings.projection(spec).flatten(2).transpose(1, 2)
        aux = torch.cat([self.cls_token, self.distillation_token], dim=1)
        return torch.cat([aux.expand(x.shape[0], -1, -1), x], dim=1) + self.position_embeddings


class ASTSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(proj(x), self.heads) for proj in (self.query, self.key, self.value))
        return _merge_heads(F.scaled_dot_product_attention(q, k, v))


class ASTDense(nn.Module):
    """A Linear called ``dense`` (the HF key names)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)


class ASTAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = ASTSelfAttention(dim, heads)
        self.output = ASTDense(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class ASTLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = ASTAttention(dim, heads)
        self.intermediate = ASTDense(dim, 4 * dim)
        self.output = ASTDense(4 * dim, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ASTEncoder(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            ASTLayer(cfg.dim, cfg.audio_heads) for _ in range(cfg.audio_depth)
        )


class ASTModel(nn.Module):
    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.embeddings = ASTEmbeddings(cfg)
        self.encoder = ASTEncoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.dim, eps=1e-12)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(spec)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class AST(nn.Module):
    """(B, S, 1, F, T) normalised log-mel segments -> (B, S, t, D) per-time-step features."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.ast = ASTModel(cfg)
        self.freq_attn_agg = ClsEncoderLayer(cfg.dim, cfg.audio_heads)
        self.patches = cfg.audio_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        f, t = self.patches
        x = self.ast(x.flatten(0, 1))[:, 2:]  # drop CLS and distillation tokens
        x = x.unflatten(1, (f, t)).transpose(1, 2)  # (BS, t, f, D)
        x = self.freq_attn_agg(x.flatten(0, 1))  # (BS * t, D)
        return x.reshape(b, s, t, -1)


# --- the offset classifier -----------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(proj(x), self.heads) for proj in (self.query, self.key, self.value))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PositionEmbedding(nn.Module):
    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.zeros(1, length, dim))


class GlobalTransformer(nn.Module):
    """[OFF, video tokens, MOD, audio tokens] -> logits over the offset classes (B, offsets)."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.OFF_tok = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.MOD_tok = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_emb_cfg = PositionEmbedding(cfg.global_tokens, cfg.dim)
        self.blocks = nn.Sequential(
            *(Block(cfg.dim, cfg.global_heads) for _ in range(cfg.global_depth))
        )
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.off_head = nn.Linear(cfg.dim, cfg.offsets)

    def forward(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        b = vis.shape[0]
        x = torch.cat(
            [
                self.OFF_tok.expand(b, -1, -1),
                self.vis_in_lnorm(vis),
                self.MOD_tok.expand(b, -1, -1),
                self.aud_in_lnorm(aud),
            ],
            dim=1,
        )
        length = self.pos_emb_cfg.pos_emb.shape[1]
        if x.shape[1] != length:
            raise ValueError(
                f"Synchformer compares windows of {length} tokens (OFF + video + MOD + audio), "
                f"got {x.shape[1]}: pass the features of one window of segments"
            )
        x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
        return self.off_head(x[:, 0])


class Synchformer(nn.Module):
    """The ``SyncModel`` interface of :mod:`mmdisco.metrics.desync` (av-benchmark's)."""

    def __init__(self, config: SynchformerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SynchformerConfig()
        self.vfeat_extractor = MotionFormer(cfg)
        self.afeat_extractor = AST(cfg)
        self.vproj, self.aproj = nn.Linear(cfg.dim, cfg.dim), nn.Linear(cfg.dim, cfg.dim)
        self.transformer = GlobalTransformer(cfg)

    def extract_vfeats(self, vis: torch.Tensor) -> torch.Tensor:
        """(B, S, T, 3, H, W) -> (B, S, t, D)."""
        return self.vfeat_extractor(vis.transpose(2, 3))

    def extract_afeats(self, aud: torch.Tensor) -> torch.Tensor:
        """(B, S, 1, F, T) -> (B, S, t, D)."""
        return self.afeat_extractor(aud)

    def compare_v_a(self, vis: torch.Tensor, aud: torch.Tensor) -> torch.Tensor:
        """Features of one window's segments -> (B, offsets) logits."""
        vis, aud = self.vproj(vis).flatten(1, 2), self.aproj(aud).flatten(1, 2)
        return self.transformer(vis, aud)


def save_synchformer(model: Synchformer, path: str | os.PathLike) -> Path:
    """Weights + config (JSON metadata) to one safetensors file, atomically."""
    meta = {"architecture": "synchformer", "config": json.dumps(asdict(model.config))}
    save_tensors_atomic(path, model.state_dict(), metadata=meta)
    return Path(path)


def load_synchformer(weights: str | os.PathLike, device: str | torch.device = "cpu") -> Synchformer:
    """Synchformer from a safetensors file written by ``mmdisco convert synchformer``, in eval."""
    state, meta = read_weights(weights, device)
    config = SynchformerConfig(**json.loads(meta["config"])) if "config" in meta else None
    with torch.device("meta"):
        model = Synchformer(config)
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
