"""Evaluation metrics: FAD, FVD, KVD, ImageBind scores and AV-Align (docs/metrics.md).

Pretrained extractors (VGGish, I3D) load weights from a local safetensors file given by the
user; nothing is downloaded. Offline extractors need no weights but their numbers are not
comparable with published ones, and every report says so.
"""

from mmdisco.metrics.av_align import AVAlignConfig, av_align_iou, av_align_score
from mmdisco.metrics.base import AudioClip, FeatureExtractor, VideoClip, load_weights
from mmdisco.metrics.evaluate import EvalOptions, evaluate_directories, write_report
from mmdisco.metrics.i3d import I3DConfig, I3DExtractor, InceptionI3d
from mmdisco.metrics.imagebind import EmbeddingModel, imagebind_scores
from mmdisco.metrics.offline import OfflineAudioExtractor, OfflineVideoExtractor
from mmdisco.metrics.stats import (
    GaussianStats,
    frechet_distance,
    frechet_distance_from_features,
    kernel_distance,
)
from mmdisco.metrics.vggish import VGGish, VGGishConfig, VGGishExtractor

__all__ = [
    "AVAlignConfig",
    "AudioClip",
    "EmbeddingModel",
    "EvalOptions",
    "FeatureExtractor",
    "GaussianStats",
    "I3DConfig",
    "I3DExtractor",
    "InceptionI3d",
    "OfflineAudioExtractor",
    "OfflineVideoExtractor",
    "VGGish",
    "VGGishConfig",
    "VGGishExtractor",
    "VideoClip",
    "av_align_iou",
    "av_align_score",
    "evaluate_directories",
    "frechet_distance",
    "frechet_distance_from_features",
    "imagebind_scores",
    "kernel_distance",
    "load_weights",
    "write_report",
]
