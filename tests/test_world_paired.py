"""The world models trained on pairs: the cascade's conditional models and the joint model."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from typer.testing import CliRunner

from mmdisco.cli import app
from mmdisco.sampling import Stream, joint_sample
from mmdisco.world import WorldConfig
from mmdisco.world.paired import JointView, WorldConditionalModel, WorldJointModel
from mmdisco.world.train import KINDS, TrainConfig, new_model, train_world_model

A_SHAPE, V_SHAPE = (32, 64), (3, 16, 16, 16)

pytestmark = pytest.mark.usefixtures("one_thread")


def _live(model, seed: int = 1):
    """Output layers start at zero: perturb every weight so that all inputs matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("target", ["audio", "video"])
def test_conditional_model_depends_on_the_given_clip_and_round_trips(target, tmp_path):
    model = _live(WorldConditionalModel.from_config(WorldConditionalModel.default_config(target)))
    x = _randn(2, *(A_SHAPE if target == "audio" else V_SHAPE))
    given = _randn(2, *(V_SHAPE if target == "audio" else A_SHAPE), seed=1)
    t = torch.tensor([100, 700])
    out = model.predict(x, t, given)
    assert out.shape == x.shape
    assert not torch.allclose(out, model.predict(x, t, given.flip(0)))  # the given clip matters
    model.save_pretrained(tmp_path)
    loaded = WorldConditionalModel.from_pretrained(tmp_path)
    assert (loaded.modality, loaded.given_modality) == (model.modality, model.given_modality)
    torch.testing.assert_close(loaded.predict(x, t, given), out)
    with pytest.raises(ValueError, match=f"generates {target} given .* pass the given clip"):
        model.predict(x, t)
    with pytest.raises(ValueError, match="expects cond of shape"):
        model.predict(x, t, x)


def test_joint_model_couples_the_modalities_and_round_trips(tmp_path):
    joint = _live(WorldJointModel.from_config())
    a, v, t = _randn(2, *A_SHAPE), _randn(2, *V_SHAPE, seed=1), torch.tensor([300, 300])
    out_a, out_v = joint.predict_pair(a, v, t, t)
    other_a, _ = joint.predict_pair(a, v.flip(0), t, t)
    assert not torch.allclose(out_a, other_a)  # the audio prediction depends on the video
    # The per-modality views are the same network, with the partner's x_t as cond.
    assert isinstance(joint.audio, JointView) and joint.audio.joint is joint
    torch.testing.assert_close(joint.audio.predict(a, t, v), out_a)
    torch.testing.assert_close(joint.video.predict(v, t, a), out_v)
    joint.save_pretrained(tmp_path)
    loaded = WorldJointModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.predict_pair(a, v, t, t)[1], out_v)
    with pytest.raises(ValueError, match="one timestep"):
        joint.predict_pair(a, v, t, torch.tensor([300, 10]))
    with pytest.raises(ValueError, match="needs the video x_t"):
        joint.audio.predict(a, t)


def test_joint_sample_runs_a_joint_model_once_per_step_like_its_own_loop():
    joint = _live(WorldJointModel.from_config())
    calls = []
    forward = joint.net.forward
    joint.net.forward = lambda *args: calls.append(1) or forward(*args)

    def stream(view, seed):
        return Stream(
            view, view.make_scheduler(DDPMScheduler), generator=torch.Generator().manual_seed(seed)
        )

    a, v = joint_sample(
        stream(joint.audio, 0),
        stream(joint.video, 1),
        batch_size=2,
        num_inference_steps=3,
        progress=False,
    )
    assert len(calls) == 3  # one network call per step serves both modalities
    # Reference: the diffusers DDPM loop on the pair, by hand.
    ref_a, ref_v = (joint.audio.make_scheduler(DDPMScheduler) for _ in range(2))
    ga, gv = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    x_a, x_v = torch.randn(2, *A_SHAPE, generator=ga), torch.randn(2, *V_SHAPE, generator=gv)
    ref_a.set_timesteps(3)
    ref_v.set_timesteps(3)
    for t in ref_a.timesteps:
        p_a, p_v = joint.predict_pair(x_a, x_v, t, t)
        x_a = ref_a.step(p_a, t, x_a, generator=ga).prev_sample
        x_v = ref_v.step(p_v, t, x_v, generator=gv).prev_sample
    torch.testing.assert_close(a, x_a)
    torch.testing.assert_close(v, x_v)


def test_every_kind_trains_reproducibly_and_records_its_cpu_seconds(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4, clips_per_chunk=8, warmup=1)
    world = WorldConfig()
    classes = {"joint": WorldJointModel, "video-to-audio": WorldConditionalModel}
    for kind in ("joint", "video-to-audio"):
        first = train_world_model(kind, cfg, tmp_path / kind, progress=False)
        again = train_world_model(kind, cfg, progress=False)
        assert isinstance(first, classes[kind])
        for k, p in first.net.state_dict().items():
            assert torch.equal(p, again.net.state_dict()[k]), (kind, k)
        fresh = new_model(kind, world, seed=0).net.state_dict()
        assert any(not torch.equal(p, fresh[k]) for k, p in first.net.state_dict().items())
        training = classes[kind].from_pretrained(tmp_path / kind).config["training"]
        assert training["kind"] == kind and training["steps"] == 2
        assert training["cpu_seconds"] > 0 and training["threads"] == 1
    assert new_model("audio-to-video", world).modality == "video"
    with pytest.raises(ValueError, match="kind: must be one of"):
        new_model("text-to-video", world)


def test_train_base_cli_trains_a_cascade_model(tmp_path):
    out = tmp_path / "v2a"
    result = CliRunner().invoke(
        app,
        [
            "train-base",
            "--modality",
            "video-to-audio",
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--clips-per-chunk",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "CPU-s" in result.output
    assert WorldConditionalModel.from_pretrained(out).modality == "audio"
    bad = CliRunner().invoke(app, ["train-base", "--modality", "v2a", "--out", str(out)])
    assert bad.exit_code == 2 and all(k in bad.output for k in KINDS[:2])


def test_fingerprints_tell_paired_models_apart_by_their_weights():
    """Caches and runs made with a paired model record its weights (resuming with another
    model is refused)."""
    world = WorldConfig()
    joint_a, joint_b = new_model("joint", world, seed=0), new_model("joint", world, seed=1)
    assert joint_a.audio.fingerprint() != joint_b.audio.fingerprint()
    assert joint_a.audio.fingerprint() != joint_a.video.fingerprint()
    assert joint_a.audio.fingerprint() == new_model("joint", world, seed=0).audio.fingerprint()
    v2a = [new_model("video-to-audio", world, seed=s).fingerprint() for s in (0, 1)]
    assert v2a[0]["class"] == "WorldConditionalModel" and v2a[0] != v2a[1]
