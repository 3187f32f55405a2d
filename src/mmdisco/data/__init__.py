"""Real paired audio-video data: decoding clips from files and caching them as latents."""

from mmdisco.data.cache import LatentCache, cache_latents, caption_dropout, load_latent_cache
from mmdisco.data.clips import (
    Clip,
    ClipDataset,
    ClipItem,
    ClipSpec,
    SkipClip,
    collate,
    drop_captions,
    list_items,
    read_clip,
)

__all__ = [
    "Clip",
    "ClipDataset",
    "ClipItem",
    "ClipSpec",
    "LatentCache",
    "SkipClip",
    "cache_latents",
    "caption_dropout",
    "collate",
    "drop_captions",
    "list_items",
    "load_latent_cache",
    "read_clip",
]
