"""``mmdisco app``: a Gradio page that samples one seed without and with MMDisCo guidance.

Both clips come from the same generator seed, so they differ only by the discriminator's
guidance; they are shown side by side as mp4 files with sound. With the world's base models
the page also reads each clip back with the world's exact detectors and prints their
verdicts, and "class" picks the first seed (from the one given) whose unguided video shows
that class: the world's base models are unconditional. With real base models the page takes
a prompt and a negative prompt instead.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmdisco.pipeline import MMDisCoPipeline

ANY_CLASS = "any"
UPSCALE = 8  # the world's 16 x 16 frames, viewable
SEED_SEARCH = 64  # seeds tried for a class, in batches of SEED_BATCH
SEED_BATCH = 16
HUE_NAMES = {0: "red", 90: "lime", 180: "cyan", 270: "violet"}


@dataclass
class Comparison:
    """One seed sampled unguided and guided: the mp4 files and, for the world, verdicts."""

    seed: int
    unguided: Path
    guided: Path
    verdicts: tuple[str, str] | None = None


def is_world(pipe: MMDisCoPipeline) -> bool:
    return pipe.config.audio.adapter == "world_audio" and pipe.config.video.adapter == "world_video"


def class_names() -> list[str]:
    """One label per world class: its colour and its pitch."""
    from mmdisco.world import WorldConfig

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
    and write both as mp4; ``world_class`` first searches for a seed of that class.

    Bad values raise ``ValueError`` with a message meant for the page.
    """
    seed = _seed(seed)
    for name, value in call.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if "num_inference_steps" in call:
        steps = call["num_inference_steps"]
        if float(steps) != int(steps):
            raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
        call["num_inference_steps"] = int(steps)
    if world_class is not None:
        seed = find_seed(pipe, world_class, seed, **call)
    outs = sample_both(pipe, [seed], prompt, negative_prompt, **call)
    paths = write_both(pipe, outs, [seed], out_dir, "seed{seed}-{name}")
    verdicts = None
    if is_world(pipe):
        verdicts = (describe_world_pair(outs["unguided"]), describe_world_pair(outs["guided"]))
    return Comparison(seed, paths["unguided"][0], paths["guided"][0], verdicts)


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
    from mmdisco.world import detect_video

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


def describe_world_pair(out: Any) -> str:
    """The world detectors' verdicts on the first pair of a pipeline output, in words."""
    from mmdisco.world import detect_audio, detect_video, match_events

    video = detect_video(_world_video(out)[:1])[0]
    audio = detect_audio(torch.as_tensor(out.waveforms)[:1])[0]
    names = class_names()

    def side(what: str, det: Any, events: str) -> str:
        if not det.valid:
            return f"{what}: not a valid world clip ({det.reason})"
        frames = " and ".join(str(k) for k in det.events)
        return f"{what}: {names[det.cls]}, {events} at frames {frames}"

    lines = [side("video", video, "bounces"), side("audio", audio, "impacts")]
    if video.valid and audio.valid:
        agree = "agree" if video.cls == audio.cls else "differ"
        matched = match_events(video.events, audio.events)
        lines.append(f"classes {agree}; {matched} of {len(video.events)} events aligned")
    else:
        lines.append("no verdict on alignment: a side is not a valid clip")
    return "\n".join(lines)


def _world_video(out: Any) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1], the detectors' layout, from a pipeline output."""
    frames = torch.as_tensor(out.frames)
    if out.output_type == "np":
        frames = frames.permute(0, 1, 4, 2, 3)
    return frames.permute(0, 2, 1, 3, 4) * 2 - 1


def _seed(seed: Any) -> int:
    if seed is None or (isinstance(seed, float) and not math.isfinite(seed)):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    if float(seed) != int(seed) or int(seed) < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def build_page(pipe: MMDisCoPipeline, out_dir: str | os.PathLike) -> Any:
    """The Gradio Blocks page for ``pipe``; generated clips are written under ``out_dir``."""
    import gradio as gr

    world = is_world(pipe)
    s = pipe.config.sampling
    with gr.Blocks(title="MMDisCo", analytics_enabled=False) as page:
        gr.Markdown(
            "# MMDisCo: joint audio-video generation\n"
            "The same seed sampled by the two frozen base models alone (left) and with the "
            "discriminator's guidance (right)."
        )
        with gr.Row():
            if world:
                choice = gr.Dropdown(
                    [ANY_CLASS, *class_names()],
                    value=ANY_CLASS,
                    label="world class (of the video; the first seed from the one below "
                    "that shows it)",
                    elem_id="world_class",
                )
                prompt = negative = None
            else:
                prompt = gr.Textbox(label="prompt", elem_id="prompt")
                negative = gr.Textbox(label="negative prompt", elem_id="negative_prompt")
                choice = None
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
        with gr.Row():
            steps = gr.Number(
                value=s.num_inference_steps, label="steps", elem_id="steps", precision=0
            )
            audio_scale = gr.Number(
                value=s.guidance_scale_audio, label="audio guidance scale", elem_id="audio_scale"
            )
            video_scale = gr.Number(
                value=s.guidance_scale_video, label="video guidance scale", elem_id="video_scale"
            )
            lo = gr.Number(value=s.window[0], label="guide from t/T", elem_id="window_lo")
            hi = gr.Number(value=s.window[1], label="guide up to t/T", elem_id="window_hi")
            if not world:
                audio_cfg = gr.Number(value=pipe.config.audio.cfg_scale, label="audio CFG scale")
                video_cfg = gr.Number(value=pipe.config.video.cfg_scale, label="video CFG scale")
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column():
                unguided = gr.Video(label="base models alone", elem_id="unguided", autoplay=False)
                unguided_verdict = gr.Textbox(
                    label="detectors", lines=3, visible=world, elem_id="unguided_verdict"
                )
            with gr.Column():
                guided = gr.Video(label="with MMDisCo guidance", elem_id="guided", autoplay=False)
                guided_verdict = gr.Textbox(
                    label="detectors", lines=3, visible=world, elem_id="guided_verdict"
                )

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
            if not world:
                call |= {"audio_cfg_scale": audio_cfg, "video_cfg_scale": video_cfg}
            try:
                if lo is None or hi is None:
                    raise ValueError("the guidance window needs both ends")
                result = compare(
                    pipe,
                    out_dir,
                    seed,
                    world_class=None
                    if choice in (None, ANY_CLASS)
                    else class_names().index(choice),
                    prompt=prompt,
                    negative_prompt=negative,
                    **call,
                )
            except ValueError as err:
                return None, "", None, "", f"**Cannot generate:** {err}"
            left, right = result.verdicts or ("", "")
            note = f"seed {result.seed}"
            if result.seed != int(seed):
                note += f" (the first seed from {int(seed)} with that class)"
            return str(result.unguided), left, str(result.guided), right, note

        # Components a page does not have are passed as None.
        def given(component: Any) -> Any:
            return gr.State(None) if component is None else component

        run.click(
            generate,
            inputs=[
                given(c)
                for c in (choice, prompt, negative, seed, steps, audio_scale, video_scale, lo, hi)
            ]
            + ([gr.State(None)] * 2 if world else [audio_cfg, video_cfg]),
            outputs=[unguided, unguided_verdict, guided, guided_verdict, status],
        )
    return page


def launch(
    pipeline: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 7860,
    out_dir: str | os.PathLike | None = None,
) -> None:
    """Load the pipeline folder and serve the page (blocks until interrupted)."""
    pipe = MMDisCoPipeline.from_pretrained(pipeline)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mmdisco-app-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    import gradio as gr

    page = build_page(pipe, out_dir)
    page.queue(default_concurrency_limit=1).launch(
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),
        server_name=host,
        server_port=port,
        allowed_paths=[str(out_dir)],
        share=False,
        inbrowser=False,
        ssr_mode=False,
        show_error=False,
    )
