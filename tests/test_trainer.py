"""Discriminator training: exact resumption, checkpoint format, learning, 2-process runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmdisco.base_models.base import BaseModel
from mmdisco.errors import BusyError, NonFiniteError
from mmdisco.seeding import derive_seed
from mmdisco.training.checkpoints import (
    flatten_optimizer_state,
    latest_checkpoint,
    unflatten_optimizer_state,
)
from mmdisco.training.data import BatchOrder, PairData
from mmdisco.training.distributed import finish_processes
from mmdisco.training.trainer import TrainConfig, train_discriminator


class GaussianModel(BaseModel):
    """Exact denoiser for x_0 ~ N(0, I): E[eps | x_t] = sigma * x_t (variance preserving)."""

    scheduler_config = {  # noqa: RUF012
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 100,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
    }

    def __init__(self, modality: str, shape: tuple[int, ...]) -> None:
        self.modality, self.shape = modality, shape

    def predict(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        sigma = self.schedule.alpha_sigma(torch.as_tensor(t).expand(x_t.shape[0]))[1]
        return sigma.view(-1, *([1] * (x_t.ndim - 1))) * x_t

    def latent_shape(self) -> tuple[int, ...]:
        return self.shape


class TinyDisc(nn.Module):
    def __init__(self, da: int = 4, dv: int = 6, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(da + dv + 2, width), nn.SiLU(), nn.Dropout(0.1), nn.Linear(width, 1)
        )

    def forward(self, audio, video, t_audio, t_video):
        x = torch.cat(
            [audio.flatten(1), video.flatten(1), t_audio[:, None] / 20, t_video[:, None] / 20], 1
        )
        return self.net(x).squeeze(-1)


def toy_data(n: int = 256, seed: int = 0) -> tuple[PairData, PairData]:
    """Real pairs: video repeats the audio's sign pattern; fakes: independent N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 4, generator=g)
    v = torch.cat([a, a[:, :2]], 1)
    fa, fv = torch.randn(n, 4, generator=g), torch.randn(n, 6, generator=g)
    return PairData(a, v), PairData(fa, fv)


def models():
    return GaussianModel("audio", (4,)), GaussianModel("video", (6,))


def run(out: Path | None, config: TrainConfig, stop_after=None, seed=0, data=None) -> nn.Module:
    torch.manual_seed(seed)
    disc = TinyDisc()
    real, fake = data or toy_data()
    train_discriminator(
        disc, *models(), real, fake, config, out, progress=False, stop_after=stop_after
    )
    return disc


def test_resume_is_exact(tmp_path):
    cfg = TrainConfig(
        steps=12,
        batch_size=16,
        checkpoint_every=4,
        log_every=2,
        dlsm_weight=0.5,
        noise_range=(0.3, 0.9),  # a tuple that comes back from state.json as a list
    )
    straight = run(tmp_path / "a", cfg)
    run(tmp_path / "b", cfg, stop_after=6)  # "killed" after 6 steps (checkpoint at 6)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000006"
    resumed = run(tmp_path / "b", cfg, seed=123)  # different init: weights must come from disk
    for (k, x), y in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    a_opt = load_file(tmp_path / "a" / "checkpoints" / "step-00000012" / "optimizer.safetensors")
    b_opt = load_file(tmp_path / "b" / "checkpoints" / "step-00000012" / "optimizer.safetensors")
    assert a_opt.keys() == b_opt.keys() and all(torch.equal(a_opt[k], b_opt[k]) for k in a_opt)
    # Checkpoints are safetensors + JSON only, old ones pruned; TensorBoard events written.
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step-00000008", "step-00000012"]
    files = sorted(p.name for p in (tmp_path / "b" / "checkpoints" / "step-00000012").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert list((tmp_path / "b" / "logs").glob("events.out.tfevents.*"))


def test_resume_refuses_changed_settings_and_other_inputs(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, checkpoint_every=2)
    run(tmp_path, cfg)
    with pytest.raises(ValueError, match=r"settings\.lr: was 0\.001, now 0\.0003"):
        run(tmp_path, TrainConfig(steps=4, batch_size=8, lr=3e-4))
    # Other real or fake data (e.g. a regenerated fake cache) is refused, naming it.
    real, fake = toy_data()
    other_fakes = PairData(fake.audio.flip(0), fake.video)
    with pytest.raises(ValueError, match=r"\(fake: was \"[0-9a-f]+\", now") as err:
        run(tmp_path, TrainConfig(steps=4, batch_size=8), data=(real, other_fakes))
    assert f"delete {tmp_path / 'checkpoints'} to start fresh" in str(err.value)
    run(tmp_path, TrainConfig(steps=4, batch_size=8, checkpoint_every=2))  # same inputs: resumes
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000004"


def test_a_run_recorded_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """An older version recorded no ``objective`` or ``group_size`` (nor the checkpoint's
    config): those fields count as their defaults, so the run resumes; another value of
    such a field is still refused."""
    cfg = TrainConfig(steps=2, batch_size=8, checkpoint_every=2)
    run(tmp_path, cfg)
    inputs_file = tmp_path / "inputs.json"
    inputs = json.loads(inputs_file.read_text())
    for field in ("objective", "group_size"):
        del inputs["settings"][field]
    inputs_file.write_text(json.dumps(inputs))
    state_file = tmp_path / "checkpoints" / "step-00000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["objective"], state["config"]["group_size"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"settings\.objective: was \"bce\", now \"infonce\""):
        run(tmp_path, TrainConfig(steps=4, batch_size=8, objective="infonce", group_size=4))
    run(tmp_path, TrainConfig(steps=4, batch_size=8, checkpoint_every=2))
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000004"


def test_half_written_checkpoints_are_ignored_then_removed(tmp_path):
    run(tmp_path, TrainConfig(steps=2, batch_size=8, checkpoint_every=2))
    ckpts = tmp_path / "checkpoints"
    (ckpts / ".tmp-step-00000004").mkdir()  # the temporary names of a killed run
    (ckpts / ".step-00000004.tmp-x1y2z3").mkdir()
    (ckpts / "step-00000009").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(ckpts).name == "step-00000002"
    run(tmp_path, TrainConfig(steps=4, batch_size=8, checkpoint_every=2))
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["step-00000002", "step-00000004", "step-00000009"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(steps=8, batch_size=8, checkpoint_every=2, keep_checkpoints=1)
    run(tmp_path, cfg, stop_after=4)
    good = (tmp_path / "checkpoints" / "step-00000004" / "model.safetensors").read_bytes()
    real, fake = toy_data()
    fake.audio[::2] = float("nan")  # poisoned fake pairs: the first batch draws some
    with pytest.raises(NonFiniteError) as err:
        run(tmp_path / "poisoned", cfg, data=(real, fake))
    assert "the loss is nan" in str(err.value) and "no checkpoint was written yet" in str(err.value)
    assert not list((tmp_path / "poisoned" / "checkpoints").glob("step-*"))
    # With a good checkpoint to go back to: it is kept, and the message says how to resume.
    bad_cfg = TrainConfig(steps=8, batch_size=8, checkpoint_every=2, keep_checkpoints=1, lr=1e30)
    with pytest.raises(NonFiniteError, match=r"step \d: .*step-00000004, is kept; run the same"):
        train_discriminator(
            TinyDisc(),
            *models(),
            real,
            toy_data()[1],
            bad_cfg,
            tmp_path,
            progress=False,
            resume=False,
        )
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert "step-00000004" in ckpts
    assert (tmp_path / "checkpoints" / "step-00000004" / "model.safetensors").read_bytes() == good


def test_a_second_run_on_the_same_directory_is_stopped(tmp_path):
    from mmdisco.io import DirectoryLock

    with DirectoryLock(tmp_path), pytest.raises(BusyError, match="is being written by process"):
        run(tmp_path, TrainConfig(steps=2, batch_size=8))
    assert not (tmp_path / "checkpoints").exists()
    run(tmp_path, TrainConfig(steps=2, batch_size=8))  # released: runs
    assert not (tmp_path / ".lock").exists()


def test_a_batch_too_large_for_the_machine_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size: needs an estimated [\d.]+ TB of memory"):
        run(tmp_path, TrainConfig(steps=1, batch_size=10**11))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps: must be >= 1, got 0"),
        ("batch_size", -4, "batch_size: must be >= 1, got -4"),
        ("lr", float("nan"), "lr: must be finite, got nan"),
        ("dlsm_weight", float("nan"), "dlsm_weight: must be finite, got nan"),
        ("checkpoint_every", 0, "checkpoint_every: must be >= 1, got 0"),
        ("log_every", 0, "log_every: must be >= 1, got 0"),
        (
            "noise_range",
            (0.9, 0.3),
            r"noise_range: must satisfy 0 <= lo < hi <= 1, got \[0\.9, 0\.3\]",
        ),
        ("noise_range", "01", r"noise_range: must be a pair \[lo, hi\], got '01'"),
        ("steps", "100", "steps: must be an integer, got '100'"),
        ("grad_clip", 0.0, r"grad_clip: must be > 0\.0, got 0\.0"),
        ("use_dlsm", "no", "use_dlsm: must be true or false, got 'no'"),
        ("clean_prob", 1.5, r"clean_prob: must be >= 0\.0 and <= 1\.0, got 1\.5"),
    ],
)
def test_train_config_numbers_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"step": 3})


def test_optimizer_state_round_trip():
    model = TinyDisc()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4), torch.randn(3, 6), torch.zeros(3), torch.zeros(3)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    meta = json.loads(json.dumps(meta))  # must be JSON-able
    restored = unflatten_optimizer_state(tensors, meta)
    opt2 = torch.optim.Adam(TinyDisc().parameters(), lr=1e-3)
    opt2.load_state_dict(restored)
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_batch_order_covers_each_epoch_and_splits_ranks():
    order = BatchOrder(n=10, batch_size=4, seed=3)
    first_epoch = torch.cat([order.global_batch(s) for s in range(3)])[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))
    halves = [order.local_batch(7, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(halves), order.global_batch(7))
    with pytest.raises(ValueError, match="divisible"):
        order.local_batch(0, 0, 3)


def test_training_learns_to_tell_real_from_fake():
    cfg = TrainConfig(steps=300, batch_size=64, dlsm_weight=0.1, log_every=50)
    torch.manual_seed(0)
    disc = TinyDisc()
    real, fake = toy_data()
    result = train_discriminator(disc, *models(), real, fake, cfg, progress=False)
    # Heavily noised pairs cannot be told apart, so accuracy over all t stays well below 1.
    assert result.history[-1]["accuracy"] > 0.72 > result.history[0]["accuracy"] + 0.05
    assert result.history[-1]["loss_d"] < 1.15 < 1.3 < result.history[0]["loss_d"]


WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from accelerate import Accelerator
    sys.path.insert(0, {tests!r})
    from test_trainer import TinyDisc, models, toy_data
    from mmdisco.training.data import BatchOrder
    from mmdisco.training.distributed import finish_processes
    from mmdisco.seeding import derive_seed
    from mmdisco.training.trainer import TrainConfig, train_discriminator

    acc = Accelerator(cpu=True)
    torch.manual_seed(acc.process_index)  # different inits: rank 0's must be broadcast
    disc = TinyDisc()
    real, fake = toy_data()
    cfg = TrainConfig(batch_size=16, checkpoint_every=3, log_every=3, **{settings!r})
    train_discriminator(disc, *models(), real, fake, cfg, {out!r}, accelerator=acc,
                        progress=False)
    order = BatchOrder(len(real), cfg.batch_size, derive_seed(cfg.seed, 1))
    seen = order.local_batch(0, acc.process_index, acc.num_processes).tolist()
    flat = torch.cat([p.detach().flatten() for p in disc.parameters()]).tolist()
    with open({out!r} + f"/rank{{acc.process_index}}.json", "w") as f:
        json.dump({{"world": acc.num_processes, "seen": seen, "weights": flat}}, f)
    finish_processes()
    """
)


def test_finish_processes_closes_the_group(tmp_path):
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    finish_processes()
    assert not torch.distributed.is_initialized()
    finish_processes()  # nothing to close: does nothing


REFINING = {
    "steps": 3,
    "refine_steps": 3,
    "objective": "infonce",
    "group_size": 4,
    "use_dlsm": False,
    "refine_pool": 6,
    "refine_negatives": 5,
}


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{"steps": 6}, REFINING], ids=["bce", "refinement"])
def test_two_cpu_processes(tmp_path, settings):
    """Two gloo processes train as one: disjoint data, synced weights, one set of checkpoints
    and logs; with the refinement, one reference written by rank 0 and read by both."""
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    script.write_text(WORKER.format(tests=tests, out=str(out), settings=settings))
    # `accelerate launch --cpu` alone expects mpirun for several processes; the torchrun-based
    # launcher (--multi_gpu) spawns them, and Accelerator(cpu=True) makes them gloo CPU ranks.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    cmd += ["2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(port)]
    proc = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])  # disjoint data
    # Synced gradients, same start: the ranks agree (up to rounding: two processes).
    np.testing.assert_allclose(ranks[0]["weights"], ranks[1]["weights"], rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
    ]
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1  # main process only
    assert (out / "refine_reference.safetensors").is_file() == ("refine_steps" in settings)


def test_shuffled_fake_pairing_makes_fakes_independent():
    # Fakes that are exact copies of the real pairs cannot be told apart when kept as pairs;
    # re-pairing them each step makes them independent, which the discriminator detects.
    real, _ = toy_data()
    accuracy = {}
    for pairing in ("fixed", "shuffle"):
        cfg = TrainConfig(
            steps=200, batch_size=64, use_dlsm=False, log_every=100, fake_pairing=pairing
        )
        torch.manual_seed(0)
        result = train_discriminator(TinyDisc(), *models(), real, real, cfg, progress=False)
        accuracy[pairing] = result.history[-1]["accuracy"]
    assert accuracy["fixed"] < 0.58 < 0.65 < accuracy["shuffle"]


class CaptionedModel(GaussianModel):
    """The Gaussian denoiser shifted by a per-caption offset: predictions depend on the prompt."""

    def encode_prompt(self, prompts: list[str]) -> Tensor:
        return torch.tensor([float(len(p)) for p in prompts])

    def predict(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        out = super().predict(x_t, t)
        seen.append(None if cond is None else cond.tolist())
        return out if cond is None else out + cond.view(-1, *([1] * (x_t.ndim - 1)))


seen: list = []


def test_dlsm_uses_each_real_pairs_caption():
    real, fake = toy_data(8)
    captions = ["a" * (i + 1) for i in range(len(real))]
    real = PairData(real.audio, real.video, captions=captions)
    config = TrainConfig(steps=1, batch_size=4, use_d=False, use_dlsm=True, seed=0)
    seen.clear()
    train_discriminator(
        TinyDisc(),
        CaptionedModel("audio", (4,)),
        CaptionedModel("video", (6,)),
        real,
        fake,
        config,
        None,
        progress=False,
    )
    batch = BatchOrder(len(real), 4, derive_seed(config.seed, 1)).local_batch(0)
    expected = [float(len(captions[i])) for i in batch.tolist()]
    assert seen == [expected, expected]  # audio then video, each with the batch's captions


def test_the_trained_discriminator_is_saved_before_the_run_unlocks(tmp_path):
    """A second run waiting on the directory never finds the final folder half written."""
    from mmdisco.io import LOCK_NAME

    class Saved(TinyDisc):
        def save_pretrained(self, directory: Path) -> None:
            self.holder = json.loads((tmp_path / LOCK_NAME).read_text())
            Path(directory).mkdir(parents=True)
            save_file(self.state_dict(), Path(directory) / "model.safetensors")

    disc, (real, fake) = Saved(), toy_data()
    cfg = TrainConfig(steps=2, batch_size=8)
    train_discriminator(
        disc, *models(), real, fake, cfg, tmp_path, progress=False, save_as="discriminator"
    )
    assert disc.holder["pid"] == os.getpid() and not (tmp_path / LOCK_NAME).exists()
    saved = load_file(tmp_path / "discriminator" / "model.safetensors")
    torch.testing.assert_close(saved, disc.state_dict())
