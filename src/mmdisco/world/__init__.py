"""A procedural audio-visual world where every step of MMDisCo runs on a CPU and is measured
exactly: seeded paired clips (:func:`generate_clips`) and hand-written detectors that read
each clip's class and event frames back (:func:`detect_video`, :func:`detect_audio`,
:func:`evaluate`)."""

from mmdisco.world.detectors import (
    Detection,
    chance_levels,
    data_histograms,
    detect_audio,
    detect_video,
    evaluate,
    match_events,
    summarize,
)
from mmdisco.world.generator import Clips, WorldConfig, generate_clips
from mmdisco.world.models import WorldAudioModel, WorldVideoModel, load_world_models

__all__ = [
    "Clips",
    "Detection",
    "WorldAudioModel",
    "WorldConfig",
    "WorldVideoModel",
    "chance_levels",
    "data_histograms",
    "detect_audio",
    "detect_video",
    "evaluate",
    "generate_clips",
    "load_world_models",
    "match_events",
    "summarize",
]
