"""The app's logic without a browser: same-seed comparisons, class search, verdicts, errors."""

from __future__ import annotations

import pytest
import torch

from mmdisco.app import class_names, compare, describe_world_pair, find_seed
from mmdisco.media import read_mp4
from mmdisco.pipeline import MMDisCoPipelineOutput

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_writes_both_clips_of_one_seed(world_pipe, tmp_path):
    result = compare(world_pipe, tmp_path, 3, num_inference_steps=4)
    assert (result.unguided.name, result.guided.name) == ("seed3-unguided.mp4", "seed3-guided.mp4")
    plain, guided = read_mp4(result.unguided, downscale=8), read_mp4(result.guided, downscale=8)
    assert plain.frames.shape == guided.frames.shape == (16, 16, 16, 3)
    assert plain.audio is not None and abs(len(plain.audio) - 32000) < 800
    # The unguided clip is the pipeline's own sample of that seed without guidance.
    out = world_pipe(
        generator=[torch.Generator().manual_seed(3)],
        num_inference_steps=4,
        audio_guidance_scale=0,
        video_guidance_scale=0,
    )
    expected = (out.frames[0] * 255).round()
    assert abs(plain.frames.astype(float) - expected).mean() < 8  # H.264, crf 10
    assert all(v.startswith("video: ") for v in result.verdicts)


def test_a_chosen_class_is_the_unguided_video_class(world_pipe, tmp_path):
    names = class_names()
    assert len(names) == 4 and names[0] == "red / 220 Hz"
    seeds = {}
    for cls in range(2):
        seed = find_seed(world_pipe, cls, 0)
        result = compare(world_pipe, tmp_path, 0, world_class=cls)
        assert result.seed == seed
        assert result.verdicts[0].startswith(f"video: {names[cls]}, bounces at frames")
        seeds[cls] = seed
    assert seeds[0] != seeds[1]
    with pytest.raises(ValueError, match=r"world class must lie in \[0, 3\], got 7"):
        find_seed(world_pipe, 7, 0)


def test_real_world_clips_get_an_agreeing_verdict():
    from mmdisco.world import generate_clips

    clips = generate_clips(2, seed=5)
    out = MMDisCoPipelineOutput(
        clips.audio, (clips.video.permute(0, 2, 1, 3, 4) + 1) / 2, 16000, 8.0, "pt"
    )
    verdict = describe_world_pair(out)
    events = " and ".join(str(int(k)) for k in clips.events[0])
    name = class_names()[int(clips.classes[0])]
    assert verdict.splitlines() == [
        f"video: {name}, bounces at frames {events}",
        f"audio: {name}, impacts at frames {events}",
        "classes agree; 2 of 2 events aligned",
    ]


@pytest.mark.parametrize(
    ("seed", "call", "message"),
    [
        (-1, {}, "seed must be a whole number >= 0, got -1"),
        (1.5, {}, "seed must be a whole number >= 0, got 1.5"),
        (None, {}, "seed must be a whole number, got None"),
        (0, {"num_inference_steps": -3}, "num_inference_steps must be a positive integer, got -3"),
        (0, {"num_inference_steps": 2.5}, "num_inference_steps must be a positive integer"),
        (0, {"audio_guidance_scale": float("nan")}, "audio_guidance_scale must be a number"),
        (0, {"video_guidance_scale": None}, "video_guidance_scale must be a number, got None"),
    ],
)
def test_bad_values_give_messages_for_the_page(world_pipe, tmp_path, seed, call, message):
    with pytest.raises(ValueError, match=message):
        compare(world_pipe, tmp_path, seed, **call)
