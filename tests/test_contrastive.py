"""The contrastive objective of the real-model trainer: groups, captions, logits, training."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator
from mmdisco.errors import InputError
from mmdisco.seeding import derive_seed
from mmdisco.training.contrastive import CaptionGroups, group_logits
from mmdisco.training.data import BatchOrder, PairData
from mmdisco.training.losses import LossConfig, mmdisco_loss
from mmdisco.training.trainer import TrainConfig, micro_batches, train_discriminator
from test_trainer import TinyDisc, models, toy_data

pytestmark = pytest.mark.usefixtures("one_thread")

CONV = SharedLatentConfig(
    audio_shape=(2, 12, 3),  # (channels, time, frequency), like a mel latent
    video_shape=(3, 4, 6, 6),
    num_codes=6,
    width=8,
    encoder="conv",
    head="aligned",
    audio_time_axis=1,
)


def _clips(n: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *CONV.audio_shape, generator=gen), torch.randn(
        n, *CONV.video_shape, generator=gen
    )


def test_pairs_called_one_by_one_give_the_cross_logits() -> None:
    """A discriminator without ``cross_logits`` is called on every pair; the logits must be
    those the shared-latent discriminator computes by encoding each clip once."""
    torch.manual_seed(0)
    model = SharedLatentDiscriminator(CONV)
    real, fake = _clips(3, 1), _clips(4, 2)
    snr = (torch.tensor(1.5), torch.tensor(-0.5))

    def plain(audio: Tensor, video: Tensor, snr_a: Tensor, snr_v: Tensor) -> Tensor:
        return model(audio, video, snr_a, snr_v)

    fast = group_logits(model, real, fake, snr, {})
    slow = group_logits(plain, real, fake, snr, {})
    for x, y, shape in zip(fast, slow, [(3,), (3, 4), (3, 4)], strict=True):
        assert x.shape == shape
        assert torch.allclose(x, y, atol=1e-5)
    # row i, column j of h(a_i, fake v_j) is exactly that pair
    assert torch.allclose(
        fast[1][2, 1], model(real[0][2:3], fake[1][1:2], snr[0], snr[1])[0], atol=1e-5
    )


def test_audio_time_axis_reads_time_where_it_is() -> None:
    """The same weights on a (C, T, F) latent told time is axis 1 and on its (C, F, T)
    transpose told time is last give the same logits."""
    torch.manual_seed(0)
    model = SharedLatentDiscriminator(CONV)
    last = SharedLatentDiscriminator(
        dataclasses.replace(CONV, audio_shape=(2, 3, 12), audio_time_axis=-1)
    )
    last.load_state_dict(model.state_dict())
    audio, video = _clips(3, 3)
    snr = torch.tensor([0.0, 1.0, 2.0])
    want = model(audio, video, snr, snr)
    assert torch.allclose(last(audio.transpose(2, 3), video, snr, snr), want, atol=1e-5)
    with pytest.raises(ValueError, match="audio_time_axis 3 is not an axis"):
        dataclasses.replace(CONV, audio_time_axis=3)


def test_groups_share_their_anchors_caption() -> None:
    real = ["dog", "cat", "dog", "bird", "cat", "dog"]
    fake = ["cat", "dog", "dog", "bird", "cat", "cat", "dog", "bird"]
    groups = CaptionGroups.of(real, fake)
    assert groups is not None
    gen = torch.Generator().manual_seed(0)
    anchors = torch.tensor([0, 5, 3, 1, 7, 2])  # every third is an anchor
    i_real, i_fake = groups.regroup(anchors, 3, gen)
    assert len(i_real) == len(i_fake) == 6
    assert i_fake[0] == 0 and i_fake[3] == 1
    for g, caption in enumerate(["cat", "dog"]):
        assert {real[i] for i in i_real[3 * g : 3 * g + 3].tolist()} == {caption}
        assert {fake[i] for i in i_fake[3 * g : 3 * g + 3].tolist()} == {caption}
    assert CaptionGroups.of(None, None) is None


@pytest.mark.parametrize(
    ("real", "fake", "message"),
    [
        (["a", "b"], None, "the fakes have none"),
        (None, ["a"], "the real pairs have none"),
        (["a", "b"], ["a", "c"], "1 caption\\(s\\) of the fakes belong to no real pair, e.g. 'c'"),
    ],
)
def test_captions_the_groups_cannot_use_are_refused(real, fake, message) -> None:
    with pytest.raises(InputError, match=message):
        CaptionGroups.of(real, fake)


def test_groups_that_lack_fakes_are_named() -> None:
    classes = ["dog", "cat"] * 4  # class labels: every caption has many fakes
    assert CaptionGroups.of(classes, classes).coverage_warning() is None
    unique = [f"clip {i}" for i in range(8)]  # free-form captions, one fake each
    message = CaptionGroups.of(unique, unique).coverage_warning()
    assert message is not None and message.startswith("8 of 8 fakes are the only fake")
    few = CaptionGroups.of(unique, unique[:2] * 3)  # 6 fakes of 2 captions: 6 real pairs unused
    assert few.coverage_warning().startswith("6 of 8 real pairs have a caption no fake has")


def test_training_on_one_fake_per_caption_warns() -> None:
    real, fake = toy_data(32)
    names = [f"clip {i}" for i in range(32)]
    real = PairData(real.audio, real.video, captions=names)
    fake = PairData(fake.audio, fake.video, captions=names)
    cfg = TrainConfig(steps=1, batch_size=16, objective="infonce", group_size=4, use_dlsm=False)
    with pytest.warns(UserWarning, match="32 of 32 fakes are the only fake of their caption"):
        train_discriminator(TinyDisc(), *models(), real, fake, cfg, progress=False)


class Recorder(TinyDisc):
    """TinyDisc that records the log-SNRs of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, audio, video, t_audio, t_video):
        self.calls.append((t_audio.detach().clone(), t_video.detach().clone()))
        return super().forward(audio, video, t_audio, t_video)


def test_the_objective_scores_each_group_at_one_noise_level() -> None:
    torch.manual_seed(0)
    disc = Recorder().eval()
    real, fake = toy_data(8)
    audio_model, video_model = models()
    config = LossConfig(use_dlsm=False, objective="infonce", group_size=4)
    out = mmdisco_loss(
        disc,
        real.audio,
        real.video,
        fake.audio,
        fake.video,
        audio_model.schedule,
        video_model.schedule,
        config,
        generator=torch.Generator().manual_seed(1),
    )
    # two groups, each: own pairs, then audio x fake video, then fake audio x video
    assert [len(c[0]) for c in disc.calls] == [4, 16, 16] * 2
    levels = [torch.cat([c[0] for c in disc.calls[3 * g : 3 * g + 3]]) for g in range(2)]
    for lv in levels:
        assert torch.all(lv == lv[0])
    assert levels[0][0] != levels[1][0]
    # the loss is the mean of the groups' InfoNCE on the logits the discriminator gave
    assert out.logits_real.shape == (16,) and out.logits_fake.shape == (0,)
    assert 0.0 <= out.accuracy <= 1.0
    assert out.d.item() == pytest.approx(out.total.item())
    assert out.d.item() > 0


def test_a_group_size_that_does_not_divide_the_batch_is_refused(tmp_path) -> None:
    real, fake = toy_data(64)
    cfg = TrainConfig(steps=1, batch_size=16, grad_accum=2, objective="infonce", group_size=3)
    with pytest.raises(InputError, match=r"micro-batch .* of 8 pairs does not split into groups"):
        train_discriminator(TinyDisc(), *models(), real, fake, cfg, progress=False)
    with pytest.raises(InputError, match="clean_prob"):
        TrainConfig(objective="infonce", clean_prob=0.1)


def _captioned(n: int = 96) -> tuple[PairData, PairData]:
    real, fake = toy_data(n)
    names = ["low", "mid", "high"]
    real_captions = [names[i % 3] for i in range(n)]
    fake_captions = [names[(i * 7) % 3] for i in range(n)]
    return PairData(real.audio, real.video, captions=real_captions), PairData(
        fake.audio, fake.video, captions=fake_captions
    )


def test_each_micro_batch_groups_pairs_of_one_caption() -> None:
    real, fake = _captioned()
    cfg = TrainConfig(steps=2, batch_size=16, grad_accum=2, objective="infonce", group_size=4)
    orders = tuple(BatchOrder(len(real), 16, derive_seed(0, k)) for k in (1, 2, 3))
    groups = CaptionGroups.of(real.captions, fake.captions)
    for step in range(2):
        parts = micro_batches(
            real, fake, orders, cfg, step, 0, 1, torch.device("cpu"), None, groups
        )
        assert len(parts) == 2
        for r, f, _ in parts:
            assert len(r) == len(f) == 8
            for g in range(2):
                group = slice(4 * g, 4 * g + 4)
                assert {*r.captions[group], *f.captions[group]} == {r.captions[4 * g]}


def test_contrastive_training_resumes_exactly(tmp_path) -> None:
    real, fake = _captioned()
    cfg = TrainConfig(
        steps=8,
        batch_size=16,
        objective="infonce",
        group_size=8,
        optimizer="adamw",
        weight_decay=0.1,
        use_dlsm=False,
        checkpoint_every=4,
        log_every=2,
    )

    def run(out: Path, stop_after: int | None = None, seed: int = 0) -> TinyDisc:
        torch.manual_seed(seed)
        disc = TinyDisc()
        train_discriminator(
            disc, *models(), real, fake, cfg, out, progress=False, stop_after=stop_after
        )
        return disc

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=4)
    resumed = run(tmp_path / "b", seed=7)
    for (k, x), y in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), k
    state = load_file(tmp_path / "b" / "checkpoints" / "step-00000008" / "optimizer.safetensors")
    assert state  # AdamW's two parameter groups round-trip through the checkpoint


def test_contrastive_training_learns_which_video_goes_with_the_audio() -> None:
    """Real video repeats the audio; a fake video is independent: after training, the own
    video beats all 15 fake videos of its group far above chance (1 / 16)."""
    real, fake = toy_data(512)
    cfg = TrainConfig(
        steps=200,
        batch_size=64,
        objective="infonce",
        group_size=16,
        use_dlsm=False,
        noise_range=(0.0, 0.3),
        lr=3e-3,
        log_every=50,
    )
    torch.manual_seed(0)
    result = train_discriminator(TinyDisc(), *models(), real, fake, cfg, progress=False)
    assert result.history[0]["accuracy"] < 0.35
    assert result.history[-1]["accuracy"] > 0.8
    assert result.history[-1]["loss_d"] < 0.3 * result.history[0]["loss_d"]


def test_mmdisco_train_runs_the_contrastive_recipe_by_default(tmp_path) -> None:
    """``mmdisco train`` trains the shared-latent network with the contrastive recipe; the
    paper's discriminator and objective are one option away."""
    from typer.testing import CliRunner

    from mmdisco.cli import app
    from mmdisco.discriminator import Discriminator, load_discriminator

    def invoke(*args: object) -> None:
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    fakes = tmp_path / "fakes"
    invoke("generate-fakes", "--out", fakes, "--n", 8, "--shard-size", 8, "--steps", 2)
    common = ("--fakes", fakes, "--n-real", 16, "--steps", 2, "--batch-size", 8)
    invoke("train", *common, "--out", tmp_path / "default")
    disc = load_discriminator(tmp_path / "default" / "discriminator")
    assert isinstance(disc, SharedLatentDiscriminator) and disc.config.head == "aligned"
    saved = TrainConfig.from_dict(
        json.loads((tmp_path / "default" / "train_config.json").read_text())
    )
    assert saved == TrainConfig.contrastive(steps=2, batch_size=8, group_size=8)
    invoke("train", *common, "--out", tmp_path / "paper", "--recipe", "paper")
    paper = load_discriminator(tmp_path / "paper" / "discriminator")
    assert isinstance(getattr(paper, "disc", paper), Discriminator)  # maybe behind pooling
    saved = json.loads((tmp_path / "paper" / "train_config.json").read_text())
    assert (saved["objective"], saved["use_dlsm"], saved["optimizer"]) == ("bce", True, "adam")


def test_fakes_per_caption_repeats_each_distinct_caption() -> None:
    from mmdisco.config import ConfigError, experiment_from_dict
    from mmdisco.experiment import fake_prompts

    captions = ["a dog", "a cat", "a dog", "rain"]
    assert fake_prompts(captions, None) == captions  # the real pairs' own, cycled
    assert fake_prompts(captions, 2) == ["a dog", "a dog", "a cat", "a cat", "rain", "rain"]
    data = {
        "name": "x",
        "audio": {"adapter": "audioldm", "path": "a"},
        "video": {"adapter": "animatediff", "path": "v"},
        "data": {"source": "clips.jsonl", "cache_dir": "cache"},
        "fakes": {"per_caption": 4},
    }
    assert experiment_from_dict(data).fakes.per_caption == 4
    with pytest.raises(ConfigError, match="per_caption"):
        experiment_from_dict({**data, "fakes": {"per_caption": 0}})


def test_hard_negative_info_nce_against_itself_is_log_of_the_group_size() -> None:
    from mmdisco.training.contrastive import cross_blocks, hard_negative_info_nce

    blocks = cross_blocks(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)), 2)
    gen = torch.Generator().manual_seed(1)
    loss = hard_negative_info_nce(blocks, blocks, negatives=7, generator=gen)
    assert loss.item() == pytest.approx(math.log(8), rel=1e-6)  # h - h_ref = 0 everywhere


def test_hard_negatives_are_drawn_where_the_reference_confuses_them() -> None:
    """A reference that puts all its mass on one candidate draws only that one: the loss is
    then the two-way cross-entropy against it, computed by hand."""
    from mmdisco.training.contrastive import cross_blocks, hard_negative_info_nce

    # rows: real audio 0, candidate audios 1, 2; columns: real video 0, candidate videos 1, 2
    logits = torch.tensor([[1.0, 3.0, -2.0], [0.5, 9.0, 9.0], [2.0, 9.0, 9.0]])
    reference = torch.tensor([[0.0, -50.0, 50.0], [50.0, 0.0, 0.0], [-50.0, 0.0, 0.0]])
    residual = logits - reference  # h - h_ref: own 1.0, video 2: -52.0, audio 1: 0.5 - 50
    k = 3

    def two_way(own: float, negative: float) -> float:
        return -own + math.log(math.exp(own) + k * math.exp(negative))

    expected = 0.5 * two_way(1.0, residual[0, 2].item()) + 0.5 * two_way(1.0, residual[1, 0].item())
    blocks, ref_blocks = cross_blocks(logits, 1), cross_blocks(reference, 1)
    loss = hard_negative_info_nce(blocks, ref_blocks, k, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _refining(**changes: object) -> TrainConfig:
    settings = {
        "steps": 4,
        "refine_steps": 4,
        "refine_pool": 6,
        "refine_negatives": 5,
        "batch_size": 16,
        "objective": "infonce",
        "group_size": 8,
        "optimizer": "adamw",
        "use_dlsm": False,
        "checkpoint_every": 3,
        "log_every": 1,
    }
    return TrainConfig(**{**settings, **changes})


def test_refinement_groups_hold_a_pool_of_candidates_of_their_caption() -> None:
    real, fake = _captioned()
    cfg = _refining(grad_accum=2, group_size=4)
    orders = tuple(BatchOrder(len(real), 16, derive_seed(0, k)) for k in (1, 2, 3))
    groups = CaptionGroups.of(real.captions, fake.captions)
    parts = micro_batches(
        real, fake, orders, cfg, 5, 0, 1, torch.device("cpu"), None, groups, refining=True
    )
    for r, f, _ in parts:
        assert (len(r), len(f)) == (8, 12)  # 2 groups of 4 real pairs and 6 candidates
        for g in range(2):
            captions = {*r.captions[4 * g : 4 * g + 4], *f.captions[6 * g : 6 * g + 6]}
            assert captions == {r.captions[4 * g]}
    uncaptioned = PairData(fake.audio, fake.video)
    (r, f, _), *_ = micro_batches(
        real, uncaptioned, orders, cfg, 5, 0, 1, torch.device("cpu"), refining=True
    )
    assert (len(r), len(f)) == (8, 12)


def test_refinement_starts_from_its_own_reference(tmp_path) -> None:
    """At the refinement's first step the frozen reference is the network itself, so
    ``h - h_ref`` is zero for every pair and the loss is exactly log(negatives + 1); the
    reference is written next to the checkpoints, equal to the last first-phase weights."""
    real, fake = _captioned()
    torch.manual_seed(0)
    disc = TinyDisc()
    disc.net[2].p = 0.0  # no dropout: the network in training equals its frozen copy
    cfg = _refining(keep_checkpoints=8)
    result = train_discriminator(disc, *models(), real, fake, cfg, tmp_path, progress=False)
    losses = [record["loss_d"] for record in result.history]
    assert len(losses) == 8
    assert losses[4] == pytest.approx(math.log(6), rel=1e-5)
    assert all(abs(x - math.log(6)) > 1e-3 for x in losses[:4])  # the first phase's loss
    assert [r["lr"] for r in result.history[4:6]] == pytest.approx(
        [3e-4, 3e-4 * 0.5 * (1 + 0.5**0.5)]
    )
    reference = load_file(tmp_path / "refine_reference.safetensors")
    step4 = load_file(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")
    for key, value in step4.items():
        assert torch.equal(reference[key], value), key
    moved = [not torch.allclose(reference[k], v) for k, v in disc.state_dict().items()]
    assert all(moved)  # the refinement trained the network, not its frozen copy
    adam = load_file(tmp_path / "checkpoints" / "step-00000006" / "optimizer.safetensors")
    assert adam["state.0.step"].item() == 2  # the moments restarted with the refinement


@pytest.mark.parametrize("stop_after", [4, 6])
def test_refinement_resumes_exactly(tmp_path, stop_after: int) -> None:
    """Stopped at the switch (step 4) or within the refinement (6), a resumed run ends with
    the weights of an uninterrupted one (the reference read back from its file)."""
    real, fake = _captioned()

    def run(out: Path, stop: int | None = None, seed: int = 0) -> TinyDisc:
        torch.manual_seed(seed)
        disc = TinyDisc()
        train_discriminator(
            disc, *models(), real, fake, _refining(), out, progress=False, stop_after=stop
        )
        return disc

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop=stop_after)
    resumed = run(tmp_path / "b", seed=7)
    for (k, x), y in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), k


def test_a_finished_run_can_be_refined_later(tmp_path) -> None:
    """``refine_steps`` may grow on resume: a run trained without the refinement goes on
    into it from its last checkpoint, as if it had been asked for from the start."""
    real, fake = _captioned()

    def run(out: Path, cfg: TrainConfig) -> TinyDisc:
        torch.manual_seed(0)
        disc = TinyDisc()
        train_discriminator(disc, *models(), real, fake, cfg, out, progress=False)
        return disc

    straight = run(tmp_path / "a", _refining())
    run(tmp_path / "b", _refining(refine_steps=0))
    later = run(tmp_path / "b", _refining())
    for x, y in zip(straight.parameters(), later.parameters(), strict=True):
        assert torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objective": "bce"}, "refine_steps: refines the contrastive objective"),
        ({"use_dlsm": True}, "refine_steps: the refinement trains the contrastive term alone"),
        ({"refine_pool": 0}, "refine_pool"),
        ({"refine_negatives": 0}, "refine_negatives"),
        ({"refine_lr": 0.0}, "refine_lr"),
        ({"refine_steps": -1}, "refine_steps"),
    ],
)
def test_refinement_settings_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _refining(**changes)


def test_captions_with_fewer_fakes_than_the_pool_warn() -> None:
    real, fake = _captioned()  # 32 fakes per caption
    with pytest.warns(UserWarning, match="3 of 3 captions have fewer fakes than refine_pool=64"):
        train_discriminator(
            TinyDisc(),
            *models(),
            real,
            fake,
            _refining(refine_pool=64),
            progress=False,
            stop_after=1,
        )
