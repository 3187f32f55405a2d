"""Training a network discriminator on the continuous world (tiny world, few steps)."""

import math

import pytest
import torch

from mmdisco.discriminator.shared_latent import SharedLatentConfig, SharedLatentDiscriminator
from mmdisco.training.contrastive import (
    cross_blocks,
    hard_negative_info_nce,
    info_nce_generated,
)
from mmdisco.training.optim import weight_decay_groups
from mmdisco.world.continuous import ContinuousWorldConfig
from mmdisco.world.continuous_ratio import ContinuousWorldTerms
from mmdisco.world.continuous_training import (
    ContinuousTrainConfig,
    _group_loss,
    dlsm_bank,
    ema_update,
    exact_eps,
    info_nce,
    refine_with_hard_negatives,
    sample_log_snr,
    train_continuous_discriminator,
    training_data,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ContinuousWorldConfig(
    num_classes=2,
    shades_per_class=2,
    num_frames=5,
    time_steps_per_frame=2,
    min_event_spacing=1.0,
    n_bands=8,
    decays=(1.0, 2.0),
)

# A small training set, batch and learning rate with which a tiny network learns the pairing
# in a few hundred steps (the tests below add their objective and length).
LEARNS = {
    "num_real": 256,
    "num_fake": 256,
    "batch_size": 32,
    "lr": 5e-3,
    "all_pairs_groups": 2,
    "log_snr_range": (1.0, 4.0),
    "weight_decay": 0.0,
}


def test_exact_eps_is_the_noise_at_pure_noise() -> None:
    terms = ContinuousWorldTerms(SMALL)
    x = torch.randn(3, *SMALL.audio_shape)
    eps = exact_eps(terms, x, torch.full((3,), -30.0), "audio")
    assert torch.allclose(eps, x, atol=1e-5)  # p_t is N(0, I): -sigma * score = x


def test_bank_and_all_pairs_training_learn_the_pairing() -> None:
    terms = ContinuousWorldTerms(SMALL)
    cfg = ContinuousTrainConfig(
        **LEARNS,
        steps=300,
        dlsm_rows=16,
        bank_noisings=1,
        dlsm_weight=0.1,
        objective="bce",
    )
    real, fake = training_data(SMALL, cfg)
    bank = dlsm_bank(terms, *real, cfg)
    assert bank.residual_video.shape == real[1].shape and bank.log_snr.shape == (256,)
    torch.manual_seed(0)
    net = SharedLatentConfig(SMALL.audio_shape, SMALL.video_shape, width=32, head="bilinear")
    log = train_continuous_discriminator(SharedLatentDiscriminator(net), real, fake, bank, cfg)
    # 2 log 2 = 1.386 is the loss of a discriminator that learnt nothing
    assert sum(row["l_d"] for row in log[-2:]) / 2 < 1.2


def _tiny_model(width: int = 16) -> SharedLatentDiscriminator:
    torch.manual_seed(0)
    net = SharedLatentConfig(SMALL.audio_shape, SMALL.video_shape, width=width, head="bilinear")
    return SharedLatentDiscriminator(net)


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_info_nce_matches_a_hand_computed_value() -> None:
    logits = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
    row_0 = -2.0 + math.log(math.exp(2.0) + 1.0)  # audio 0 over videos 0, 1
    row_1 = 1.0 + math.log(math.exp(1.0) + math.exp(-1.0))  # audio 1: its video is column 1
    col_0 = -2.0 + math.log(math.exp(2.0) + math.exp(1.0))  # video 0 over audios 0, 1
    col_1 = 1.0 + math.log(1.0 + math.exp(-1.0))
    expected = 0.5 * ((row_0 + row_1) / 2 + (col_0 + col_1) / 2)
    assert info_nce(logits).item() == pytest.approx(expected, rel=1e-6)
    # adding a constant per row and per column changes one direction's loss, not log r's
    assert info_nce(logits + 3.0).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_generated_matches_a_hand_computed_value() -> None:
    # rows: real audio 0, fake audio; columns: real video 0, fake videos 1, 2
    logits = torch.tensor([[2.0, 0.5, -1.0], [1.0, 7.0, 7.0]])
    by_audio = -2.0 + math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0))
    by_video = -2.0 + math.log(math.exp(2.0) + math.exp(1.0))  # the fake audio is row 1
    expected = 0.5 * (by_audio + by_video)
    assert info_nce_generated(*cross_blocks(logits, 1)).item() == pytest.approx(expected, rel=1e-6)
    # fake-with-fake logits (7.0) are not used
    logits[1, 1:] = -3.0
    assert info_nce_generated(*cross_blocks(logits, 1)).item() == pytest.approx(expected, rel=1e-6)


def _learnt_table(
    negatives: str,
    joint: torch.Tensor,
    fake: torch.Tensor,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """A free table ``h[a, v]`` trained by symmetric InfoNCE on a discrete world: real pairs
    from ``joint``, fake audio and video from the rows of ``fake`` (imperfect base models).
    With a ``reference`` table: :func:`hard_negative_info_nce` against it, 31 negatives per
    real clip resampled from the 256 candidates (the other real pairs' clips, or the fakes)."""
    gen = torch.Generator().manual_seed(0)
    table = torch.zeros(joint.shape, requires_grad=True)
    opt = torch.optim.Adam([table], lr=0.05)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 600)
    k = joint.shape[0]
    for _ in range(600):
        pair = torch.multinomial(joint.flatten(), 256, replacement=True, generator=gen)
        a, v = pair // k, pair % k
        fa = torch.multinomial(fake[0], 256, replacement=True, generator=gen)
        fv = torch.multinomial(fake[1], 256, replacement=True, generator=gen)
        if reference is not None:
            if negatives == "real":  # other real pairs' clips
                other = torch.multinomial(joint.flatten(), 256, replacement=True, generator=gen)
                fa, fv = other // k, other % k
            audio, video = torch.cat([a, fa]), torch.cat([v, fv])
            rows, cols = audio[:, None], video[None]
            blocks = cross_blocks(table[rows, cols], 256)
            loss = hard_negative_info_nce(blocks, cross_blocks(reference[rows, cols], 256), 31, gen)
        elif negatives == "real":
            loss = info_nce(table[a][:, v])
        else:
            logits = table[torch.cat([a, fa])][:, torch.cat([v, fv])]
            loss = info_nce_generated(*cross_blocks(logits, 256))
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return table.detach()


def test_info_nce_with_generated_negatives_learns_mmdiscos_ratio() -> None:
    joint = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.20, 0.03], [0.05, 0.05, 0.25]])
    fake = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])  # p_theta(a), p_theta(v)
    mmdisco = joint.log() - fake[0].log()[:, None] - fake[1].log()[None]
    data = joint.log() - joint.sum(1).log()[:, None] - joint.sum(0).log()[None]

    def centred(h: torch.Tensor) -> torch.Tensor:
        return h - h.mean()

    assert (centred(mmdisco) - centred(data)).abs().max() > 0.5  # the two targets differ
    generated = _learnt_table("fake", joint, fake)
    assert torch.allclose(centred(generated), centred(mmdisco), atol=0.15)
    real = _learnt_table("real", joint, fake)
    assert torch.allclose(centred(real), centred(data), atol=0.15)


def test_ema_update_is_the_exponential_average() -> None:
    average = [torch.zeros(3)]
    values = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.0, 5.0])]
    for v in values:
        ema_update(average, [v], decay=0.9)
    manual = 0.9 * 0.1 * values[0] + 0.1 * values[1]  # 0.9^2 * 0 + ...
    assert torch.allclose(average[0], manual, atol=1e-7)


def test_training_with_ema_ends_at_the_average_of_the_iterates() -> None:
    real, fake = training_data(SMALL, ContinuousTrainConfig(num_real=64, num_fake=64))
    base = {"num_real": 64, "num_fake": 64, "batch_size": 8, "all_pairs_groups": 2}
    start = _params(_tiny_model())
    iterates = []
    for steps in (1, 2):  # step 0 runs at the full learning rate whatever the length
        model = _tiny_model()
        cfg = ContinuousTrainConfig(**base, steps=steps, dlsm_weight=0.0)
        train_continuous_discriminator(model, real, fake, None, cfg)
        iterates.append(_params(model))
    model = _tiny_model()
    cfg = ContinuousTrainConfig(**base, steps=2, dlsm_weight=0.0, ema_decay=0.8)
    train_continuous_discriminator(model, real, fake, None, cfg)
    for p, p0, p1, p2 in zip(model.parameters(), start, *iterates, strict=True):
        manual = 0.8**2 * p0 + 0.8 * 0.2 * p1 + 0.2 * p2
        assert torch.allclose(p.detach(), manual, atol=1e-6)


def test_fresh_data_is_deterministic_for_a_seed_and_reads_no_training_set() -> None:
    empty = (torch.zeros(0, *SMALL.audio_shape), torch.zeros(0, *SMALL.video_shape))
    runs = []
    for seed in (3, 3, 4):
        cfg = ContinuousTrainConfig(
            steps=3, batch_size=8, all_pairs_groups=2, fresh_data=True, seed=seed
        )
        model = _tiny_model()
        log = train_continuous_discriminator(model, empty, empty, None, cfg, world=SMALL)
        runs.append((log[-1]["l_d"], _params(model)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert runs[0][0] != pytest.approx(runs[2][0], rel=1e-4)
    with pytest.raises(ValueError, match="fresh_data needs the world"):
        train_continuous_discriminator(_tiny_model(), empty, empty, None, cfg)


def test_hard_negatives_from_a_wrong_reference_still_learn_the_ratio() -> None:
    """Negatives drawn where a reference table confuses them (here a wrong one: the ratio
    reversed) teach ``h`` the same optimum as InfoNCE's: MMDisCo's ratio with fake
    candidates, the data's with real ones."""
    joint = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.20, 0.03], [0.05, 0.05, 0.25]])
    fake = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    mmdisco = joint.log() - fake[0].log()[:, None] - fake[1].log()[None]
    data = joint.log() - joint.sum(1).log()[:, None] - joint.sum(0).log()[None]

    def centred(h: torch.Tensor) -> torch.Tensor:
        return h - h.mean()

    for negatives, target in (("fake", mmdisco), ("real", data)):
        reference = -target  # draws the negatives the true ratio finds least likely
        learnt = _learnt_table(negatives, joint, fake, reference)
        assert torch.allclose(centred(learnt), centred(target), atol=0.15), negatives


def test_info_nce_training_learns_the_pairing() -> None:
    cfg = ContinuousTrainConfig(**LEARNS, steps=150, objective="infonce", noise_sampling="log_snr")
    real, fake = training_data(SMALL, cfg)
    log = train_continuous_discriminator(_tiny_model(32), real, fake, None, cfg)
    # log 16 = 2.77 is the loss of a discriminator that learnt nothing (16 pairs per group)
    assert sum(row["l_d"] for row in log[-2:]) / 2 < 2.0


@pytest.mark.parametrize("negatives", ["real", "fake"])
def test_refinement_starts_at_log_of_the_group_size_and_learns(negatives: str) -> None:
    """The refinement's first loss is ``log(draws + 1)`` whatever the network (it scores the
    difference from its own frozen copy), and after training it is below that."""
    cfg = ContinuousTrainConfig(
        **LEARNS,
        steps=150,
        negatives=negatives,
        refine_steps=150,
        refine_lr=2e-3,
        refine_anchors=16,
        refine_pool=64,
        refine_draws=15,
    )
    real, fake = training_data(SMALL, cfg)
    model = _tiny_model(32)
    log = train_continuous_discriminator(model, real, fake, None, cfg)
    refine = [row["l_refine"] for row in log if "refine_step" in row]
    assert refine[0] == pytest.approx(math.log(16), rel=1e-6)
    assert sum(refine[1:]) / len(refine[1:]) < math.log(16) - 0.15  # steps 50, 100, 149
    assert len([row for row in log if "step" in row]) == 4  # the first phase ran in full


@pytest.mark.parametrize(
    ("negatives", "message"),
    [
        ("real", "refine_pool = 32 \\+ 224 real pairs, but there are 16"),
        ("fake", "refine_pool 224 need as many real pairs and fake clips; there are 16 and 16"),
    ],
)
def test_refinement_refuses_a_pool_larger_than_the_data(negatives: str, message: str) -> None:
    cfg = ContinuousTrainConfig(
        num_real=16, num_fake=16, negatives=negatives, refine_steps=1, refine_pool=224
    )
    real, fake = training_data(SMALL, cfg)
    with pytest.raises(ValueError, match=message):
        refine_with_hard_negatives(_tiny_model(), real, fake, cfg)


def test_dlsm_switches_on_at_dlsm_start() -> None:
    terms = ContinuousWorldTerms(SMALL)
    cfg = ContinuousTrainConfig(
        num_real=32,
        num_fake=32,
        steps=21,
        batch_size=8,
        all_pairs_groups=2,
        dlsm_rows=4,
        bank_noisings=1,
        dlsm_weight=1.0,
        dlsm_start=0.5,
    )
    real, fake = training_data(SMALL, cfg)
    bank = dlsm_bank(terms, *real, cfg)
    log = train_continuous_discriminator(_tiny_model(), real, fake, bank, cfg)
    by_step = {row["step"]: row["l_dlsm"] for row in log}
    assert by_step[0] == 0.0 and by_step[20] > 0.0  # on from step 10.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"objective": "mse"}, "objective must be"),
        ({"objective": "infonce", "all_pairs_groups": 0}, "needs all_pairs_groups"),
        ({"all_pairs_groups": 8, "batch_size": 8}, "fewer than 2 pairs"),
        ({"noise_sampling": "edm"}, "noise_sampling must be"),
        ({"negatives": "both"}, "negatives must be"),
        (
            {"grad_penalty": 1.0, "all_pairs_groups": 0, "objective": "bce"},
            "grad_penalty needs all_pairs_groups",
        ),
        ({"objective": "bce", "refine_steps": 10}, "refine_steps needs objective 'infonce'"),
        ({"refine_pool": 0}, "refine_pool must be a positive count"),
        ({"refine_draws": 0}, "refine_draws must be a positive count"),
        ({"refine_steps": -1}, "refine_steps must be >= 0"),
    ],
)
def test_config_rejects_bad_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContinuousTrainConfig(**fields)


def test_noise_sampling_uniform_in_time_stays_in_range_and_is_uniform_in_time() -> None:
    cfg = ContinuousTrainConfig(log_snr_range=(-7.0, 5.0), noise_sampling="time")
    lam = sample_log_snr(20_000, cfg, torch.Generator().manual_seed(0), torch.float64)
    assert lam.min() >= -7.0 - 1e-9 and lam.max() <= 5.0 + 1e-9
    t = 2 / math.pi * torch.atan(torch.exp(-lam / 2))  # back to the cosine schedule's time
    t_lo, t_hi = (2 / math.pi * math.atan(math.exp(-e / 2)) for e in (5.0, -7.0))
    quartiles = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    expected = torch.tensor([t_lo + q * (t_hi - t_lo) for q in (0.25, 0.5, 0.75)])
    assert torch.allclose(quartiles, expected.double(), atol=0.01)
    cfg = ContinuousTrainConfig(log_snr_range=(-7.0, 5.0), noise_sampling="log_snr")
    uniform = sample_log_snr(20_000, cfg, torch.Generator().manual_seed(0))
    assert uniform.median().item() == pytest.approx(-1.0, abs=0.1)


class _Linear(torch.nn.Module):
    """``h(a, v) = <c, a> + <d, v>``: its input-gradient is ``(c, d)`` everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.linspace(-1, 1, math.prod(SMALL.audio_shape)))
        self.d = torch.nn.Parameter(torch.linspace(0, 2, math.prod(SMALL.video_shape)))

    def forward(self, a: torch.Tensor, v: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return a.flatten(1) @ self.c + v.flatten(1) @ self.d

    def cross_logits(self, a: torch.Tensor, v: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return (a.flatten(1) @ self.c)[:, None] + (v.flatten(1) @ self.d)[None]


@pytest.mark.parametrize(
    ("objective", "negatives"), [("bce", "fake"), ("infonce", "fake"), ("infonce", "real")]
)
def test_grad_penalty_adds_sigma_squared_times_the_gradient_norm(
    objective: str, negatives: str
) -> None:
    real, fake = training_data(SMALL, ContinuousTrainConfig(num_real=4, num_fake=4))
    clean = (*real, *fake)
    lam = torch.tensor(0.7)
    losses = []
    for weight in (0.0, 0.5):
        cfg = ContinuousTrainConfig(
            batch_size=4,
            all_pairs_groups=1,
            objective=objective,
            negatives=negatives,
            grad_penalty=weight,
        )
        gen = torch.Generator().manual_seed(0)
        losses.append(_group_loss(_Linear(), clean, lam, cfg, gen).item())
    model = _Linear()
    squared_norm = model.c.pow(2).sum() + model.d.pow(2).sum()
    expected = 0.5 * torch.sigmoid(-lam) * squared_norm
    assert losses[1] - losses[0] == pytest.approx(expected.item(), rel=1e-4)


def test_weight_decay_shrinks_layer_weights_only() -> None:
    """With a zero learning rate for the loss (every gradient zeroed), one AdamW step shrinks
    exactly the linear and convolution weights; the learnt code scales and biases keep their
    values, unless every parameter is asked to decay."""
    model = SharedLatentDiscriminator(
        SharedLatentConfig(
            SMALL.audio_shape, SMALL.video_shape, width=8, encoder="conv", head="aligned"
        )
    )
    for decay_all in (False, True):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.AdamW(weight_decay_groups(model, 0.5, decay_all), lr=0.1)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for name, p in model.named_parameters():
            layer_weight = name.endswith("weight") and p.ndim >= 2
            shrunk = before[name] * (1 - 0.1 * 0.5)
            expected = shrunk if (layer_weight or decay_all) else before[name]
            assert torch.allclose(p.detach(), expected), name
            p.data.copy_(before[name])
    names = {n for n, _ in model.named_parameters()}
    assert "audio_encoder.scale.sharpness" in names  # a 2-D parameter that must not decay
