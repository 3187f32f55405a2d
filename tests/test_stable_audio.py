"""Stable Audio's clip length: the pipeline's full-length sampling by default, the short form
as an option that is another sample, not a trimmed one."""

import pytest
import torch

from _tiny import save_stable_audio
from mmdisco.base_models import load_base_model
from mmdisco.sampling import Stream, joint_sample

PROMPTS = ["a dog barks", "hammer hits wood"]
STEPS = 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> str:
    # 4 Hz, hop 2, sample_size 4: at most 2 s; 1 s needs 2 of the 4 latent frames.
    return str(save_stable_audio(tmp_path_factory.mktemp("sa") / "stable_audio"))


def _sample(model, noise: torch.Tensor) -> torch.Tensor:
    """Latents sampled from ``noise`` with CFG 7 (the partner stream is the same model)."""
    cond, uncond = model.encode_prompt_pair(PROMPTS)

    def stream() -> Stream:
        scheduler = model.make_scheduler()
        return Stream(model, scheduler, cond, uncond, cfg_scale=7.0, latents=noise.clone())

    latents, _ = joint_sample(
        stream(), stream(), None, batch_size=len(PROMPTS), num_inference_steps=STEPS, progress=False
    )
    return latents


def test_default_is_the_pipelines_full_length_then_cut(path):
    model = load_base_model("stable_audio", path, audio_end_in_s=1.0)
    assert model.latent_shape() == (3, 4) and model.duration == 1.0
    noise = torch.randn(len(PROMPTS), 3, 4, generator=torch.Generator().manual_seed(0))
    audio = model.decode(_sample(model, noise))
    expected = model.pipe(
        PROMPTS,
        audio_end_in_s=1.0,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(0),
    ).audios
    assert audio.shape == expected.shape == (2, 2, 4)  # 1 s at 4 Hz, stereo
    torch.testing.assert_close(audio, torch.as_tensor(expected).float(), rtol=1e-4, atol=1e-5)


def test_short_form_samples_only_the_needed_frames_and_is_another_sample(path):
    full = load_base_model("stable_audio", path, audio_end_in_s=1.0)
    short = load_base_model("stable_audio", path, audio_end_in_s=1.0, full_length=False)
    assert short.latent_shape() == (3, 2)
    z = short.encode(torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(0)))
    assert z.shape == (1, 3, 2)
    noise = torch.randn(len(PROMPTS), 3, 4, generator=torch.Generator().manual_seed(0))
    kept = _sample(full, noise)[..., :2]
    alone = _sample(short, noise[..., :2])
    # The same initial noise on the kept frames, yet the DiT attended to the cut frames too.
    assert float((alone - kept).norm() / kept.norm()) > 0.02
