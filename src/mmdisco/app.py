"""``mmdisco app``: a Gradio page that samples one seed without and with MMDisCo guidance.

Both clips come from the same generator seed, so they differ only by the discriminator's
guidance; they are shown side by side as mp4 files with sound. With the world's base models
the page also reads each clip back with the world's exact detectors and shows their verdict
as a badge ("classes agree, events aligned 2/2"), and "class" picks the first seed (from the
one given) whose unguided video shows that class: the world's base models are
unconditional. With real base models the page takes a prompt and a negative prompt instead.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import torch

from mmdisco.errors import InputError, check_float
from mmdisco.pipeline import MMDisCoPipeline
from mmdisco.world import Detection, WorldConfig, detect_audio, detect_video, match_events

ANY_CLASS = "any"
UPSCALE = 8  # the world's 16 x 16 frames, viewable
VIDEO_HEIGHT = 360  # pixels a player takes on the page, so the verdicts below stay in view
SEED_SEARCH = 64  # seeds tried for a class, in batches of SEED_BATCH
SEED_BATCH = 16
HUE_NAMES = {0: "red", 90: "lime", 180: "cyan", 270: "violet"}
# Seeds whose unguided pair, with the shipped world pipeline's own settings, is valid on both
# sides but misaligned, and whose guided pair is aligned ("classes agree, events aligned
# 2/2"), each with its unguided verdict: found by scripts/find_app_examples.py (120 of seeds
# 0-127 qualify; these four show each kind of failure). The first is the default seed.
EXAMPLES = {
    1: "classes differ, events aligned 0/2",
    4: "classes agree, events aligned 0/2",
    5: "classes agree, events aligned 1/2",
    15: "classes differ, events aligned 2/2",
}
DEFAULT_SEED = next(iter(EXAMPLES))
# The page's names for the pipeline's arguments: a message names the field the user sees.
FIELD_LABELS = {
    "num_inference_steps": "steps",
    "audio_guidance_scale": "audio guidance scale",
    "video_guidance_scale": "video guidance scale",
    "audio_cfg_scale": "audio CFG scale",
    "video_cfg_scale": "video CFG scale",
}
WINDOW_LABELS = ("guide from t/T", "guide up to t/T")
DOCS = Path(__file__).resolve().parents[2] / "docs"  # the repository's docs, in a checkout


@dataclass(frozen=True)
class WorldVerdict:
    """What the world's exact detectors read from one generated pair."""

    video: Detection
    audio: Detection
    events: int  # events in a clip of the world

    @property
    def valid(self) -> bool:
        return self.video.valid and self.audio.valid

    @property
    def classes_agree(self) -> bool:
        return self.valid and self.video.cls == self.audio.cls

    @property
    def aligned_events(self) -> int:
        return match_events(self.video.events, self.audio.events) if self.valid else 0

    @property
    def aligned(self) -> bool:
        """The pair the world would make: one class, and every event heard where it is seen."""
        return self.classes_agree and self.aligned_events == self.events

    @property
    def badge(self) -> str:
        """The verdict in a few words, e.g. ``classes agree, events aligned 2/2``."""
        sides = (("video", self.video), ("audio", self.audio))
        invalid = [what for what, detection in sides if not detection.valid]
        if invalid:
            return f"not a valid world clip: {' and '.join(invalid)}"
        agree = "agree" if self.classes_agree else "differ"
        return f"classes {agree}, events aligned {self.aligned_events}/{self.events}"

    @property
    def text(self) -> str:
        """Each side's reading, then the verdict on the pair."""
        names = class_names()

        def side(what: str, det: Detection, events: str) -> str:
            if not det.valid:
                return f"{what}: not a valid world clip ({det.reason})"
            frames = " and ".join(str(k) for k in det.events)
            return f"{what}: {names[det.cls]}, {events} at frames {frames}"

        lines = [side("video", self.video, "bounces"), side("audio", self.audio, "impacts")]
        if self.valid:
            agree = "agree" if self.classes_agree else "differ"
            lines.append(f"classes {agree}; {self.aligned_events} of {self.events} events aligned")
        else:
            lines.append("no verdict on alignment: a side is not a valid clip")
        return "\n".join(lines)


@dataclass
class Comparison:
    """One seed sampled unguided and guided: the mp4 files and, for the world, verdicts."""

    seed: int
    unguided: Path
    guided: Path
    verdicts: tuple[WorldVerdict, WorldVerdict] | None = None


def is_world(pipe: MMDisCoPipeline) -> bool:
    return pipe.config.audio.adapter == "world_audio" and pipe.config.video.adapter == "world_video"


def class_names() -> list[str]:
    """One label per world class: its colour and its pitch."""
    cfg = WorldConfig()
    names = []
    for c, pitch in enumerate(cfg.pitches):
        degrees = round(360 * c / cfg.num_classes)
        names.append(f"{HUE_NAMES.get(degrees, f'hue {degrees}')} / {pitch:.0f} Hz")
    return names


def compare(
    pipe: MMDisCoPipeline,
    out_dir: str | os.PathLike,
    seed: Any,
    world_class: int | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    **call: Any,
) -> Comparison:
    """Sample ``seed`` unguided and guided (``call``: the pipeline's scales, steps, window)
    and write both as mp4 under names no earlier run used; ``world_class`` first searches
    for a seed of that class.

    Bad values raise ``InputError`` (a ``ValueError``) naming the page's field.
    """
    seed = _seed(seed)
    call = checked_call(call)
    if world_class is not None:
        seed = find_seed(pipe, world_class, seed, **call)
    outs = sample_both(pipe, [seed], prompt, negative_prompt, **call)
    stem = unused_stem(out_dir, seed)
    paths = write_both(pipe, outs, [seed], out_dir, stem + "-{name}")
    verdicts = None
    if is_world(pipe):
        verdicts = (world_verdict(outs["unguided"]), world_verdict(outs["guided"]))
    return Comparison(seed, paths["unguided"][0], paths["guided"][0], verdicts)


def checked_call(call: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's keyword arguments from the page's values, each checked, with messages
    that name the page's fields ("steps", not ``num_inference_steps``)."""
    call = dict(call)
    for name, value in call.items():
        if name in FIELD_LABELS:
            call[name] = _number(FIELD_LABELS[name], value)
    if "num_inference_steps" in call:
        steps = call["num_inference_steps"]
        if steps != int(steps) or steps < 1:
            raise InputError(f"must be a whole number >= 1, got {steps:g}", "steps")
        call["num_inference_steps"] = int(steps)
    if "guidance_window" in call:
        lo, hi = (
            _number(label, value, 0.0, 1.0)
            for label, value in zip(WINDOW_LABELS, call["guidance_window"], strict=True)
        )
        if lo > hi:
            raise InputError(
                f"must not exceed {WINDOW_LABELS[1]} ({hi:g}), got {lo:g}", WINDOW_LABELS[0]
            )
        call["guidance_window"] = (lo, hi)
    return call


def _number(
    label: str, value: Any, minimum: float | None = None, maximum: float | None = None
) -> float:
    if value is None:
        raise InputError("is empty: enter a number", label)
    return check_float(label, value, minimum, maximum)


def _seed(seed: Any) -> int:
    if seed is None:
        raise InputError("is empty: enter a whole number >= 0", "seed")
    seed = check_float("seed", seed)
    if seed != int(seed) or seed < 0:
        raise InputError(f"must be a whole number >= 0, got {seed:g}", "seed")
    return int(seed)


def unused_stem(out_dir: str | os.PathLike, seed: int) -> str:
    """``seed{seed}-run{k}`` for the first ``k`` whose clips are not in ``out_dir`` yet, so a
    rerun with other settings never overwrites a clip the page shows (the page's queue runs
    one generation at a time)."""
    out_dir = Path(out_dir)
    for k in count(1):
        stem = f"seed{seed}-run{k}"
        if not any((out_dir / f"{stem}-{name}.mp4").exists() for name in ("unguided", "guided")):
            return stem
    raise AssertionError("unreachable")


def sample_both(
    pipe: MMDisCoPipeline,
    seeds: list[int],
    prompt: str | None = None,
    negative_prompt: str | None = None,
    **call: Any,
) -> dict[str, Any]:
    """Pipeline outputs ``{"unguided": ..., "guided": ...}`` for ``seeds``, one generator per
    pair, so each pair's noise is its seed's whatever the batch."""
    world = is_world(pipe)
    prompt = None if world else (prompt or "")
    negative = None if world or not negative_prompt else negative_prompt
    unguided = {"audio_guidance_scale": 0.0, "video_guidance_scale": 0.0}
    return {
        name: pipe(
            prompt,
            negative_prompt=negative,
            num_samples=len(seeds),
            generator=[torch.Generator(pipe.device).manual_seed(s) for s in seeds],
            **{**call, **scales},
        )
        for name, scales in (("unguided", unguided), ("guided", {}))
    }


def write_both(
    pipe: MMDisCoPipeline,
    outs: dict[str, Any],
    seeds: list[int],
    out_dir: str | os.PathLike,
    pattern: str,
) -> dict[str, list[Path]]:
    """Each output's pairs as ``out_dir/pattern.mp4`` (``pattern`` may use ``{seed}`` and
    ``{name}``); the world's tiny frames are upscaled to be seen."""
    upscale = UPSCALE if is_world(pipe) else 1
    return {
        name: out.save(
            out_dir, upscale=upscale, names=[pattern.format(seed=s, name=name) for s in seeds]
        )
        for name, out in outs.items()
    }


def find_seed(pipe: MMDisCoPipeline, world_class: int, start: int, **call: Any) -> int:
    """The first seed from ``start`` whose unguided video the detector reads as
    ``world_class`` (one generator per pair: a seed gives the same clip in any batch)."""
    names = class_names()
    if not 0 <= world_class < len(names):
        raise ValueError(f"world class must lie in [0, {len(names) - 1}], got {world_class}")
    call = {**call, "audio_guidance_scale": 0.0, "video_guidance_scale": 0.0}
    for lo in range(start, start + SEED_SEARCH, SEED_BATCH):
        seeds = list(range(lo, lo + SEED_BATCH))
        gens = [torch.Generator(pipe.device).manual_seed(s) for s in seeds]
        out = pipe(num_samples=len(seeds), generator=gens, output_type="pt", **call)
        for s, det in zip(seeds, detect_video(_world_video(out)), strict=True):
            if det.valid and det.cls == world_class:
                return s
    raise ValueError(
        f"no seed in [{start}, {start + SEED_SEARCH}) gives a {names[world_class]} clip; "
        "try another seed"
    )


def world_verdict(out: Any, index: int = 0) -> WorldVerdict:
    """The world detectors' verdict on pair ``index`` of a pipeline output."""
    video = detect_video(_world_video(out)[index : index + 1])[0]
    audio = detect_audio(torch.as_tensor(out.waveforms)[index : index + 1])[0]
    return WorldVerdict(video, audio, WorldConfig().events_per_clip)


def describe_world_pair(out: Any) -> str:
    """The world detectors' verdicts on the first pair of a pipeline output, in words."""
    return world_verdict(out).text


def _world_video(out: Any) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1], the detectors' layout, from a pipeline output."""
    frames = torch.as_tensor(out.frames)
    if out.output_type == "np":
        frames = frames.permute(0, 1, 4, 2, 3)
    return frames.permute(0, 2, 1, 3, 4) * 2 - 1


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

PAGE_CSS = """
.verdict { display: inline-block; padding: 0.3em 0.9em; border-radius: 1em; font-weight: 600; }
.verdict-aligned { background: #d3f3d6; color: #10501a; }
.verdict-misaligned { background: #fde3c6; color: #7a3b00; }
.verdict-invalid { background: #f8d3d3; color: #7a1111; }
"""
PIXELATED_CSS = "#unguided video, #guided video { image-rendering: pixelated; }"


def intro(*, world: bool, docs_url: Callable[[str], str] | None = None) -> str:
    """The page's opening words: what is generated, what the controls mean, where to read
    more (``docs_url`` maps a file of the repository's docs/ to a link; None: no links)."""
    lines = [
        "# MMDisCo: joint audio-video generation",
        "Two frozen base models, one for sound and one for picture, never see each other's "
        "output: sampled from one seed they match only by chance (left). MMDisCo adds the "
        "input gradient of a small discriminator, trained to tell real pairs from the base "
        "models' independent samples, to both models' noise predictions (right). Both sides "
        "start from the same noise.",
    ]
    if world:
        colours = ", ".join(class_names())
        lines.insert(
            1,
            "**The world.** A square bounces on the floor of a 16 × 16 picture, and every "
            "impact is a tone. The class is the square's colour and the tone's pitch at once "
            f"({colours}). A right pair has one class on both sides and a tone at each bounce.",
        )
    lines.append(
        "**t/T** is the diffusion time as a fraction of the schedule: 1 is pure noise, 0 the "
        "finished clip. Guidance is applied while t/T lies between *guide from* and "
        "*guide up to*."
    )
    if docs_url is not None:
        lines.append(
            f"More: [the method]({docs_url('method.md')}), "
            f"[the app and the study]({docs_url('app_and_study.md')}), "
            f"[training the discriminator]({docs_url('training_the_discriminator.md')})."
        )
    return "\n\n".join(lines)


def badge_html(verdict: WorldVerdict | None) -> str:
    if verdict is None:
        return ""
    kind = "aligned" if verdict.aligned else "misaligned" if verdict.valid else "invalid"
    return f'<span class="verdict verdict-{kind}">{html.escape(verdict.badge)}</span>'


def _input_controls(pipe: MMDisCoPipeline) -> list[Any]:
    """The page's inputs in ``generate``'s order; those a page does not have are states."""
    import gradio as gr

    world, s = is_world(pipe), pipe.config.sampling
    with gr.Row():
        if world:
            choice = gr.Dropdown(
                [ANY_CLASS, *class_names()],
                value=ANY_CLASS,
                label="world class (of the video; the first seed from the one below that shows it)",
                elem_id="world_class",
            )
            prompt, negative = gr.State(None), gr.State(None)
        else:
            choice = gr.State(None)
            prompt = gr.Textbox(label="prompt", elem_id="prompt")
            negative = gr.Textbox(label="negative prompt", elem_id="negative_prompt")
        seed = gr.Number(
            value=DEFAULT_SEED if world else 0, precision=0, label="seed", elem_id="seed"
        )
    with gr.Row():
        steps = gr.Number(value=s.num_inference_steps, label="steps", elem_id="steps", precision=0)
        scales = [
            gr.Number(value=value, label=label, elem_id=elem_id)
            for value, label, elem_id in (
                (s.guidance_scale_audio, FIELD_LABELS["audio_guidance_scale"], "audio_scale"),
                (s.guidance_scale_video, FIELD_LABELS["video_guidance_scale"], "video_scale"),
                (s.window[0], WINDOW_LABELS[0], "window_lo"),
                (s.window[1], WINDOW_LABELS[1], "window_hi"),
            )
        ]
        if world:
            cfg = [gr.State(None), gr.State(None)]
        else:
            cfg = [
                gr.Number(value=pipe.config.audio.cfg_scale, label=FIELD_LABELS["audio_cfg_scale"]),
                gr.Number(value=pipe.config.video.cfg_scale, label=FIELD_LABELS["video_cfg_scale"]),
            ]
    if world:
        gr.Examples(
            [[seed] for seed in EXAMPLES],
            inputs=[seed],
            label="Example seeds: the base models alone give a valid but misaligned pair",
            example_labels=[f"seed {s} (alone: {verdict})" for s, verdict in EXAMPLES.items()],
        )
    return [choice, prompt, negative, seed, steps, *scales, *cfg]


def _output_panel(name: str, label: str, *, world: bool) -> list[Any]:
    """A clip's player, its verdict badge and the detectors' reading."""
    import gradio as gr

    with gr.Column():
        video = gr.Video(label=label, elem_id=name, autoplay=False, height=VIDEO_HEIGHT)
        badge = gr.HTML(visible=world, elem_id=f"{name}_badge")
        text = gr.Textbox(label="detectors", lines=3, visible=world, elem_id=f"{name}_verdict")
    return [video, badge, text]


def generate_callback(pipe: MMDisCoPipeline, out_dir: str | os.PathLike) -> Callable[..., tuple]:
    """The page's callback: both clips, badges and readings, and a status line; on a bad
    value only the status changes, so the last results stay on the page."""
    import gradio as gr

    # Gradio finds the progress tracker by this default (its documented idiom).
    def generate(
        choice: str | None,
        prompt: str | None,
        negative: str | None,
        seed: float | None,
        steps: float | None,
        audio_scale: float | None,
        video_scale: float | None,
        lo: float | None,
        hi: float | None,
        audio_cfg: float | None,
        video_cfg: float | None,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple:
        call = {
            "num_inference_steps": steps,
            "audio_guidance_scale": audio_scale,
            "video_guidance_scale": video_scale,
            "guidance_window": (lo, hi),
        }
        if not is_world(pipe):
            call |= {"audio_cfg_scale": audio_cfg, "video_cfg_scale": video_cfg}
        world_class = None if choice in (None, ANY_CLASS) else class_names().index(choice)
        try:
            result = compare(
                pipe, out_dir, seed, world_class, prompt=prompt, negative_prompt=negative, **call
            )
        except ValueError as err:
            return (*[gr.skip()] * 6, f"**Cannot generate:** {err}")
        left, right = result.verdicts or (None, None)
        note = f"seed {result.seed}"
        if result.seed != int(seed):
            note += f" (the first seed from {int(seed)} with that class)"
        return (
            *(str(result.unguided), badge_html(left), left.text if left else ""),
            *(str(result.guided), badge_html(right), right.text if right else ""),
            note,
        )

    return generate


def build_page(pipe: MMDisCoPipeline, out_dir: str | os.PathLike) -> Any:
    """The Gradio Blocks page for ``pipe``; generated clips are written under ``out_dir``."""
    import gradio as gr

    world = is_world(pipe)
    with gr.Blocks(title="MMDisCo", analytics_enabled=False) as page:
        docs = (lambda name: f"/gradio_api/file={DOCS / name}") if DOCS.is_dir() else None
        gr.Markdown(intro(world=world, docs_url=docs), elem_id="intro")
        inputs = _input_controls(pipe)
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status", container=True, min_height=64)
        with gr.Row():
            left = _output_panel("unguided", "base models alone", world=world)
            right = _output_panel("guided", "with MMDisCo guidance", world=world)
        run.click(
            generate_callback(pipe, out_dir),
            inputs=inputs,
            outputs=[*left, *right, status],
            show_progress_on=[status],  # one progress bar, not one per output
        )
    return page


def launch(
    pipeline: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 7860,
    out_dir: str | os.PathLike | None = None,
    share: bool = False,
) -> None:
    """Load the pipeline folder and serve the page (blocks until interrupted); ``share``
    also asks Gradio for a public link."""
    import gradio as gr

    pipe = MMDisCoPipeline.from_pretrained(pipeline)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mmdisco-app-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    page = build_page(pipe, out_dir)
    page.queue(default_concurrency_limit=1).launch(
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),
        css=PAGE_CSS + (PIXELATED_CSS if is_world(pipe) else ""),
        server_name=host,
        server_port=port,
        allowed_paths=[str(out_dir), *([str(DOCS)] if DOCS.is_dir() else [])],
        share=share,
        inbrowser=False,
        ssr_mode=False,
        show_error=False,
        quiet=True,  # Gradio's own lines advise editing launch(); ours say what to do
        prevent_thread_lock=True,
    )
    print(f"serving on {page.local_url} (clips in {out_dir})", flush=True)
    if share:
        print(f"public link: {page.share_url}", flush=True)
    page.block_thread()
