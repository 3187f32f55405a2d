"""Evaluation metrics: FAD, FVD, KVD, ImageBind scores, AV-Align, PANNs FD / KL / IS, DeSync
and CLAP (docs/metrics.md), each following a named reference implementation.

Pretrained networks (VGGish, I3D, PANNs, ImageBind, CLAP) load weights from a local path
given by the user; nothing is downloaded. Offline extractors need no weights but their
numbers are not comparable with published ones, and every report says so.
"""

from mmdisco.metrics.av_align import VERSIONS, AVAlignConfig, av_align_iou, av_align_score
from mmdisco.metrics.base import AudioClip, FeatureExtractor, VideoClip, load_weights
from mmdisco.metrics.evaluate import EvalOptions, evaluate_directories, write_report
from mmdisco.metrics.i3d import I3DConfig, I3DExtractor, InceptionI3d
from mmdisco.metrics.imagebind import EmbeddingModel, imagebind_scores
from mmdisco.metrics.offline import OfflineAudioExtractor, OfflineVideoExtractor
from mmdisco.metrics.panns import Cnn14, PANNsConfig, PANNsExtractor
from mmdisco.metrics.protocols import PROTOCOLS, Protocol, get_protocol
from mmdisco.metrics.stats import (
    GaussianStats,
    frechet_distance,
    frechet_distance_from_features,
    kernel_distance,
    polynomial_mmd,
)
from mmdisco.metrics.vggish import VGGish, VGGishConfig, VGGishExtractor

__all__ = [
    "PROTOCOLS",
    "VERSIONS",
    "AVAlignConfig",
    "AudioClip",
    "Cnn14",
    "EmbeddingModel",
    "EvalOptions",
    "FeatureExtractor",
    "GaussianStats",
    "I3DConfig",
    "I3DExtractor",
    "InceptionI3d",
    "OfflineAudioExtractor",
    "OfflineVideoExtractor",
    "PANNsConfig",
    "PANNsExtractor",
    "Protocol",
    "VGGish",
    "VGGishConfig",
    "VGGishExtractor",
    "VideoClip",
    "av_align_iou",
    "av_align_score",
    "evaluate_directories",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_protocol",
    "imagebind_scores",
    "kernel_distance",
    "load_weights",
    "polynomial_mmd",
    "write_report",
]
