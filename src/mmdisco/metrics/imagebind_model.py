"""ImageBind encoders (vision, audio, text) in plain PyTorch, for the IB-AV/TV/TA scores.

Follows facebookresearch/ImageBind ``imagebind_model.py`` (``imagebind_huge``): every
modality is patch/token embedding -> pre-LN transformer -> LayerNorm + token select + linear
projection -> L2 normalisation. Module and parameter names reproduce the official ones, so
the official ``imagebind_huge.pth`` loads after dropping the depth / thermal / IMU
modalities (``mmdisco convert imagebind imagebind_huge.pth ib.safetensors``):

* ``modality_preprocessors.vision.rgbt_stem.proj.1.weight`` Conv3d (2, 14, 14), no bias
  (index 1 because index 0 is the parameter-free PadIm2Video), ``cls_token``,
  ``pos_embedding_helper.pos_embed`` (257 tokens);
* ``modality_preprocessors.audio.rgbt_stem.proj.weight`` Conv2d (16, stride 10) and
  ``rgbt_stem.norm_layer``, ``cls_token``, ``pos_embedding_helper.pos_embed`` (229 tokens);
* ``modality_preprocessors.text.token_embedding``, ``pos_embed``, ``mask`` (causal, stored);
* ``modality_trunks.<m>.pre_transformer_layer.0`` (vision LayerNorm only) and
  ``blocks.<i>.{attn (nn.MultiheadAttention; audio adds bias_k/bias_v), norm_1, mlp.fc1,
  mlp.fc2, norm_2}``;
* ``modality_heads.{vision,audio}.{0: LayerNorm, 2: Linear}``, ``modality_heads.text.proj.{0,1}``;
* ``modality_postprocessors.{text,audio}.1.log_logit_scale``.

The logit scaling only multiplies a unit vector, so :meth:`ImageBind.embed` (what the scores
use) returns the unit-norm embedding and ignores it.
"""

from __future__ import annotations

import gzip
import html
import itertools
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdisco.io import load_tensors, save_tensors_atomic
from mmdisco.metrics.base import check_state_dict

MODALITIES = ("vision", "audio", "text")


@dataclass(frozen=True)
class ImageBindConfig:
    """Sizes of the three encoders; the defaults are ``imagebind_huge``."""

    out_dim: int = 1024
    vision_dim: int = 1280
    vision_blocks: int = 32
    vision_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    video_frames: int = 2
    audio_dim: int = 768
    audio_blocks: int = 12
    audio_heads: int = 12
    audio_drop_path: float = 0.1
    mel_bins: int = 128
    audio_frames: int = 204
    audio_kernel: int = 16
    audio_stride: int = 10
    text_dim: int = 1024
    text_blocks: int = 24
    text_heads: int = 16
    context_length: int = 77
    vocab_size: int = 49408


class LogitScale(nn.Module):
    """``exp(log_logit_scale) * x`` capped at 100; a buffer when not learnable (official)."""

    def __init__(self, init: float = 1 / 0.07, learnable: bool = False) -> None:
        super().__init__()
        value = torch.tensor(float(init)).log()
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=100.0) * x


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class SelectElement(nn.Module):
    """Pick one token (the CLS token at index 0)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class PadIm2Video(nn.Module):
    """Images (B, C, H, W) -> (B, C, T, H, W) by repetition, so images reuse the video stem."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.frames, 1, 1)
        return x


class PatchStem(nn.Module):
    """Convolutional patch embedding -> (B, tokens, dim), optionally LayerNorm-ed."""

    def __init__(self, proj: nn.Module, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm_layer is None else self.norm_layer(x)


class PosEmbed(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))


class PatchPreprocessor(nn.Module):
    """Patch tokens with a prepended CLS token plus a learned positional embedding."""

    def __init__(self, stem: PatchStem, patches: int, dim: int) -> None:
        super().__init__()
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding_helper = PosEmbed(patches + 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)
        pos = self.pos_embedding_helper.pos_embed
        if tokens.shape[1] + 1 != pos.shape[1]:
            raise ValueError(
                f"input {tuple(x.shape)} gives {tokens.shape[1]} patches, the positional "
                f"embedding expects {pos.shape[1] - 1}"
            )
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + pos


class TextPreprocessor(nn.Module):
    """Token + positional embedding; the causal mask is a stored buffer as in the checkpoint."""

    def __init__(self, vocab_size: int, context_length: int, dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, dim))
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("mask", mask)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens) + self.pos_embed


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; drop path (stochastic depth) is active in training only."""

    def __init__(self, dim: int, heads: int, *, bias_kv: bool, drop_path: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, add_bias_kv=bias_kv, batch_first=True)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = drop_path

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep) / keep

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self._drop(self.attn(h, h, h, need_weights=False, attn_mask=mask)[0])
        return x + self._drop(self.mlp(self.norm_2(x)))


class Trunk(nn.Module):
    def __init__(
        self, dim: int, blocks: int, heads: int, *, pre_ln: bool, bias_kv: bool, drop_path: float
    ) -> None:
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(
            nn.LayerNorm(dim, eps=1e-6) if pre_ln else nn.Identity()
        )
        step = drop_path / max(blocks - 1, 1)  # "progressive" (linspace 0..rate), as official
        rates = [step * i for i in range(blocks)]
        self.blocks = nn.ModuleList(Block(dim, heads, bias_kv=bias_kv, drop_path=r) for r in rates)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_transformer_layer(x)
        for block in self.blocks:
            x = block(x, mask)
        return x


class TextHead(nn.Module):
    """LayerNorm + projection of the end-of-text token (the highest token id, as in CLIP)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)])


def _cls_head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim, eps=1e-6), SelectElement(0), nn.Linear(dim, out_dim, bias=False)
    )


class ImageBind(nn.Module):
    """Vision / audio / text ImageBind encoders; an :class:`EmbeddingModel` via :meth:`embed`."""

    def __init__(
        self, config: ImageBindConfig | None = None, tokenizer: ClipTokenizer | None = None
    ) -> None:
        super().__init__()
        c = self.config = config or ImageBindConfig()
        self.tokenizer = tokenizer
        conv3d = nn.Conv3d(
            3,
            c.vision_dim,
            (2, c.patch_size, c.patch_size),
            stride=(2, c.patch_size, c.patch_size),
            bias=False,
        )
        vision_patches = (c.video_frames // 2) * (c.image_size // c.patch_size) ** 2
        conv2d = nn.Conv2d(1, c.audio_dim, c.audio_kernel, stride=c.audio_stride, bias=False)
        grid = [(n - c.audio_kernel) // c.audio_stride + 1 for n in (c.mel_bins, c.audio_frames)]
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": PatchPreprocessor(
                    PatchStem(nn.Sequential(PadIm2Video(c.video_frames), conv3d)),
                    vision_patches,
                    c.vision_dim,
                ),
                "text": TextPreprocessor(c.vocab_size, c.context_length, c.text_dim),
                "audio": PatchPreprocessor(
                    PatchStem(conv2d, nn.LayerNorm(c.audio_dim)), grid[0] * grid[1], c.audio_dim
                ),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": Trunk(
                    c.vision_dim,
                    c.vision_blocks,
                    c.vision_heads,
                    pre_ln=True,
                    bias_kv=False,
                    drop_path=0.0,
                ),
                "text": Trunk(
                    c.text_dim,
                    c.text_blocks,
                    c.text_heads,
                    pre_ln=False,
                    bias_kv=False,
                    drop_path=0.0,
                ),
                "audio": Trunk(
                    c.audio_dim,
                    c.audio_blocks,
                    c.audio_heads,
                    pre_ln=False,
                    bias_kv=True,
                    drop_path=c.audio_drop_path,
                ),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {
                "vision": _cls_head(c.vision_dim, c.out_dim),
                "text": TextHead(c.text_dim, c.out_dim),
                "audio": _cls_head(c.audio_dim, c.out_dim),
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": Normalize(),
                "text": nn.Sequential(Normalize(), LogitScale(learnable=True)),
                "audio": nn.Sequential(Normalize(), LogitScale(20.0, learnable=False)),
            }
        )

    def forward(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """One clip per row -> official output (unit vector times the logit scale, if any)."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; choose from {MODALITIES}")
        tokens = self.modality_preprocessors[modality](x)
        mask = self.modality_preprocessors["text"].mask if modality == "text" else None
        h = self.modality_trunks[modality](tokens, mask)
        head = self.modality_heads[modality]
        h = head(h, x) if modality == "text" else head(h)
        return self.modality_postprocessors[modality](h)

    @torch.no_grad()
    def embed(self, modality: str, inputs: torch.Tensor | list[str]) -> torch.Tensor:
        """Unit-norm (n, out_dim) embeddings, clips of one item averaged as the official model.

        vision: (n, 3, H, W) images, (n, 3, T, H, W) videos (T a multiple of ``video_frames``:
        split into consecutive clips), or (n, S, 3, T, H, W); audio: (n, 1, mel, frames) or
        (n, S, 1, mel, frames); text: strings (needs the tokenizer) or (n, context) token ids.
        """
        if modality == "text" and not isinstance(inputs, torch.Tensor):
            if self.tokenizer is None:
                raise ValueError("text embeddings need a tokenizer (pass the CLIP BPE vocab)")
            inputs = self.tokenizer(list(inputs), self.config.context_length)
        device = next(self.parameters()).device
        x = inputs.to(device)
        if modality == "vision" and x.ndim == 5 and x.shape[2] > self.config.video_frames:
            x = self._split_clips(x)
        clip_dims = {"vision": 5, "audio": 4, "text": 2}.get(modality)
        if clip_dims is not None and x.ndim == clip_dims + 1:  # (n, S, ...): average S clips
            n, s = x.shape[:2]
            out = F.normalize(self(modality, x.flatten(0, 1)), dim=-1).view(n, s, -1).mean(1)
        else:
            out = self(modality, x)
        return F.normalize(out, dim=-1)

    def _split_clips(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, T, H, W) -> (n, T / frames, 3, frames, H, W) consecutive clips."""
        frames = self.config.video_frames
        if x.shape[2] % frames:
            raise ValueError(f"video of shape {tuple(x.shape)}: T must be a multiple of {frames}")
        n, c, t, h, w = x.shape
        return x.view(n, c, t // frames, frames, h, w).transpose(1, 2)


# --- CLIP byte-level BPE tokenizer (OpenAI CLIP / ImageBind ``simple_tokenizer.py``) ---

_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)
_MAX_MERGES = 49152 - 256 - 2  # the official vocabulary keeps this many merges


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


class ClipTokenizer:
    """Lower-cased byte-level BPE with ``<|startoftext|>`` / ``<|endoftext|>``, zero padded.

    Reads ``bpe_simple_vocab_16e6.txt.gz`` (or a plain text file of merges, first line a
    header). Unlike the reference it does not run ``ftfy`` (not a dependency), which only
    matters for mojibake text. Over-long texts are cut and still end with ``<|endoftext|>``,
    whose position the text head reads, as ImageBind's tokenizer does.
    """

    def __init__(self, bpe_path: str | os.PathLike) -> None:
        import regex  # installed with transformers; needed for \p{L} classes

        path = Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(f"BPE vocabulary not found: {path}")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : _MAX_MERGES + 1]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        base = list(_bytes_to_unicode().values())
        vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self.cache = {t: [t] for t in ("<|startoftext|>", "<|endoftext|>")}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str) -> list[str]:
        if word in self.cache:
            return self.cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(itertools.pairwise(parts))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(text)).strip()
        text = " ".join(text.split()).lower()
        byte_map, ids = _bytes_to_unicode(), []
        for word in self.pattern.findall(text):
            word = "".join(byte_map[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._bpe(word))
        return ids

    def __call__(self, texts: list[str], context_length: int = 77) -> torch.Tensor:
        """Texts -> (n, context_length) int64 token ids."""
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text)][: context_length - 1]
            ids.append(self.eot)
            out[i, : len(ids)] = torch.tensor(ids)
        return out


# --- weights -------------------------------------------------------------------------------


def save_imagebind(model: ImageBind, path: str | os.PathLike) -> Path:
    """Write the weights and the config (JSON metadata) to a safetensors file atomically."""
    meta = {"architecture": "imagebind", "config": json.dumps(asdict(model.config))}
    save_tensors_atomic(path, model.state_dict(), metadata=meta, finite=False)  # -inf mask
    return Path(path)


def load_imagebind(
    weights: str | os.PathLike,
    bpe_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> ImageBind:
    """Build ImageBind from a safetensors file (config from its metadata, else huge) in eval.

    The model is built on the meta device and the tensors are assigned, so the ~4.5 GB of
    imagebind_huge is held in memory once.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"ImageBind weights not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected .safetensors; convert with `mmdisco convert imagebind`")
    state, meta = load_tensors(path, device, finite=False)  # the text mask holds -inf
    config = ImageBindConfig(**json.loads(meta["config"])) if "config" in meta else None
    tokenizer = ClipTokenizer(bpe_path) if bpe_path is not None else None
    with torch.device("meta"):
        model = ImageBind(config, tokenizer)
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"{bpe_path}: tokenizer has {tokenizer.vocab_size} tokens, "
            f"the text encoder {model.config.vocab_size}"
        )
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
