"""The app's logic without a browser: same-seed comparisons, class search, verdicts, errors."""

from __future__ import annotations

import pytest
import torch

from mmdisco.app import (
    ANY_CLASS,
    EXAMPLES,
    WorldVerdict,
    badge_html,
    build_page,
    class_names,
    compare,
    describe_world_pair,
    find_seed,
    generate_callback,
    intro,
    sample_both,
    world_verdict,
)
from mmdisco.errors import InputError
from mmdisco.media import read_mp4
from mmdisco.pipeline import WORLD_PIPELINE, MMDisCoPipeline, MMDisCoPipelineOutput
from mmdisco.world import Detection

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_writes_both_clips_of_one_seed(world_pipe, tmp_path):
    result = compare(world_pipe, tmp_path, 3, num_inference_steps=4)
    assert (result.unguided.name, result.guided.name) == (
        "seed3-run1-unguided.mp4",
        "seed3-run1-guided.mp4",
    )
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
    assert all(v.text.startswith("video: ") for v in result.verdicts)

    # A rerun with other scales gets new names: the first clips are still there, unchanged.
    before = result.guided.read_bytes()
    again = compare(world_pipe, tmp_path, 3, num_inference_steps=4, audio_guidance_scale=0)
    assert again.guided.name == "seed3-run2-guided.mp4"
    assert result.guided.read_bytes() == before
    assert len(list(tmp_path.glob("*.mp4"))) == 4


def test_a_chosen_class_is_the_unguided_video_class(world_pipe, tmp_path):
    names = class_names()
    assert len(names) == 4 and names[0] == "red / 220 Hz"
    seeds = {}
    for cls in range(2):
        seed = find_seed(world_pipe, cls, 0)
        result = compare(world_pipe, tmp_path, 0, world_class=cls)
        assert result.seed == seed
        assert result.verdicts[0].text.startswith(f"video: {names[cls]}, bounces at frames")
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


def test_badges_say_whether_classes_agree_and_how_many_events_align():
    red_video, red_audio = Detection(True, 0, (3, 9)), Detection(True, 0, (4, 12))
    verdict = WorldVerdict(red_video, red_audio, events=2)
    assert (verdict.classes_agree, verdict.aligned_events, verdict.aligned) == (True, 1, False)
    assert verdict.badge == "classes agree, events aligned 1/2"
    assert 'class="verdict verdict-misaligned"' in badge_html(verdict)
    aligned = WorldVerdict(red_video, Detection(True, 0, (2, 10)), events=2)
    assert aligned.aligned and aligned.badge == "classes agree, events aligned 2/2"
    assert "verdict-aligned" in badge_html(aligned)
    differ = WorldVerdict(red_video, Detection(True, 2, (3, 9)), events=2)
    assert differ.badge == "classes differ, events aligned 2/2" and not differ.aligned
    silent = WorldVerdict(red_video, Detection(False, None, (), "no impacts"), events=2)
    assert silent.badge == "not a valid world clip: audio" and "verdict-invalid" in badge_html(
        silent
    )
    assert silent.text.splitlines()[1] == "audio: not a valid world clip (no impacts)"
    assert badge_html(None) == ""


def test_example_seeds_are_misaligned_alone_and_aligned_with_guidance():
    """The page's examples hold for the shipped pipeline with its own settings."""
    pipe = MMDisCoPipeline.from_pretrained(WORLD_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    outs = sample_both(pipe, list(EXAMPLES))
    for k, label in enumerate(EXAMPLES.values()):
        plain, guided = world_verdict(outs["unguided"], k), world_verdict(outs["guided"], k)
        assert plain.valid and not plain.aligned and plain.badge == label, plain.text
        assert guided.aligned, guided.text


def test_the_intro_says_what_the_world_is_and_links_the_docs():
    text = intro(world=True, docs_url=lambda name: f"/docs/{name}")
    assert "square bounces" in text and "every impact is a tone" in text
    assert all(name in text for name in class_names())
    assert "**t/T**" in text and "1 is pure noise" in text
    assert "(/docs/app_and_study.md)" in text and "[the method](/docs/method.md)" in text
    assert "http" not in text  # nothing outside the repository
    plain = intro(world=False)
    assert "square" not in plain and "docs" not in plain and "**t/T**" in plain


@pytest.mark.parametrize(
    ("seed", "call", "message"),
    [
        (-1, {}, "seed: must be a whole number >= 0, got -1"),
        (1.5, {}, "seed: must be a whole number >= 0, got 1.5"),
        (None, {}, "seed: is empty: enter a whole number >= 0"),
        (0, {"num_inference_steps": -3}, "steps: must be a whole number >= 1, got -3"),
        (0, {"num_inference_steps": 2.5}, "steps: must be a whole number >= 1, got 2.5"),
        (0, {"audio_guidance_scale": float("nan")}, "audio guidance scale: must be finite"),
        (0, {"video_guidance_scale": None}, "video guidance scale: is empty: enter a number"),
        (0, {"guidance_window": (0.2, 1.5)}, "guide up to t/T: must be >= 0.0 and <= 1.0, got 1.5"),
        (
            0,
            {"guidance_window": (0.8, 0.2)},
            r"guide from t/T: must not exceed guide up to t/T \(0.2\), got 0.8",
        ),
    ],
)
def test_bad_values_name_the_field_on_the_page(world_pipe, tmp_path, seed, call, message):
    with pytest.raises(InputError, match=message):
        compare(world_pipe, tmp_path, seed, **call)
    assert not list(tmp_path.iterdir())


def test_the_page_keeps_the_last_results_when_a_value_is_bad(world_pipe, tmp_path):
    generate = generate_callback(world_pipe, tmp_path)
    values = [ANY_CLASS, None, None, 3, 4, 300.0, 300.0, 0.3, 1.0, None, None]
    shown = generate(*values)
    assert len(shown) == 7 and shown[-1] == "seed 3"
    assert shown[0].endswith("seed3-run1-unguided.mp4") and shown[3].endswith("-guided.mp4")
    assert 'class="verdict verdict-' in shown[1] and shown[2].startswith("video: ")
    refused = generate(*values[:4], -3, *values[5:])
    assert refused[-1] == "**Cannot generate:** steps: must be a whole number >= 1, got -3"
    assert all(output == {"__type__": "update"} for output in refused[:-1])  # gr.skip()
    assert build_page(world_pipe, tmp_path) is not None
