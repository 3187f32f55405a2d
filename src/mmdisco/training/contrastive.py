"""The contrastive objective: each real pair scored against fake clips of its own caption.

MMDisCo guides with ``r = p(a, v | c) / (p_theta(a | c) p_theta(v | c))``. Symmetric InfoNCE
with generated negatives learns ``log r`` up to a constant per caption (constants have no
input-gradient): each real audio scores its own video against fake videos, each real video
its own audio against fake audios (:func:`info_nce_generated`). Unlike L_D's binary
cross-entropy it never has to push the logits of mismatched pairs towards minus infinity on
their own: the softmax only compares them with the real pair's.

A step's pairs are cut into groups of ``group_size`` real pairs and as many fake clips. A
group shares one noise level (both modalities, each on its own schedule) and, with captions,
one caption: its fakes were generated from that caption and its real pairs carry it
(:class:`CaptionGroups`), so a negative differs from the real pair in how audio and video go
together, not in what the caption asked for. Without captions the groups are the batch's
pairs in order. Discriminators with a ``cross_logits`` method (the shared-latent
discriminator) encode each clip of a group once; any other is called on every pair it needs,
``group_size * (2 * group_size + 1)`` calls per group.

The refinement (:func:`refinement_term`) keeps the groups but gives each a larger pool of
candidate fakes and scores each real pair against the few of them that a frozen copy of the
network confuses with it (:func:`hard_negative_info_nce`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdisco.errors import InputError
from mmdisco.guidance import DiscriminatorFn


def info_nce_generated(own: Tensor, audio_vs_fakes: Tensor, fakes_vs_video: Tensor) -> Tensor:
    """Symmetric InfoNCE with generated negatives from ``own`` ``(n,)`` = ``h(a_i, v_i)``,
    ``audio_vs_fakes`` ``(n, m)`` = ``h(a_i, fake v_j)`` and ``fakes_vs_video`` ``(n, m)`` =
    ``h(fake a_j, v_i)``. The first direction's optimum is ``log p(v | a) / p_theta(v) +
    c(a)``, the second's ``log p(a | v) / p_theta(a) + c'(v)``; the one ``h`` that is both is
    ``log p(a, v) / (p_theta(a) p_theta(v)) + const``, MMDisCo's ratio, base models' errors
    included."""
    by_audio = torch.cat([own[:, None], audio_vs_fakes], dim=1)
    by_video = torch.cat([own[:, None], fakes_vs_video], dim=1)
    target = torch.zeros(len(own), dtype=torch.long, device=own.device)
    return 0.5 * (F.cross_entropy(by_audio, target) + F.cross_entropy(by_video, target))


def cross_blocks(logits: Tensor, n_real: int) -> tuple[Tensor, Tensor, Tensor]:
    """The three inputs of :func:`info_nce_generated` from ``h`` of every pair of ``n_real``
    real clips followed by fake clips (audio along the rows, video along the columns)."""
    n = n_real
    return logits[:n, :n].diagonal(), logits[:n, n:], logits[n:, :n].T


def hard_negative_info_nce(
    blocks: tuple[Tensor, Tensor, Tensor],
    reference: tuple[Tensor, Tensor, Tensor],
    negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Symmetric InfoNCE of ``h - h_ref`` whose negatives are the candidates the reference
    discriminator ``h_ref`` confuses with each real pair.

    ``blocks`` are ``h``'s ``(own, audio_vs_candidates, candidates_vs_video)`` of ``n`` real
    pairs and ``m`` candidate clips, shaped as :func:`group_logits` / :func:`cross_blocks`
    give them (``(n,)``, ``(n, m)``, ``(n, m)``); ``reference`` the same of ``h_ref`` (no
    gradient). Each real audio ``a_i`` draws ``negatives`` videos from the candidates with
    probabilities ``softmax_j h_ref(a_i, v_j)`` (with replacement), each real video its audios
    likewise, and the real pair is scored against them with the logit ``h - h_ref``.

    Negatives drawn from ``p(v) exp(h_ref(a, v)) / Z(a)`` make the first direction's optimum
    ``h - h_ref = log p(v | a) / p(v) - h_ref + c(a)``, the second's the same with ``c'(v)``,
    so the one ``h`` that is both is ``log r + const``: the ratio of :func:`info_nce_generated`
    (candidates from the base models) or of the data (candidates from other real pairs). What
    changes is which negatives teach it. Where the clean ratio is very sharp, random negatives
    are all told apart at once and the loss stops asking for the steep ``h`` the ratio has;
    negatives drawn where ``h_ref`` cannot tell them from the real pair are exactly those near
    it, and the loss measures ``h``'s error there. The draws are importance resampling among
    the ``m`` candidates: the proposal is exact as ``m`` grows; with few candidates or a very
    peaked ``h_ref`` the same few are drawn many times."""
    own, *crossed = blocks
    ref_own, *ref_crossed = reference
    n = len(own)
    target = torch.zeros(n, dtype=torch.long, device=own.device)
    loss = own.new_zeros(())
    for h, h_ref in zip(crossed, ref_crossed, strict=True):
        drawn = torch.multinomial(
            torch.softmax(h_ref, dim=1), negatives, replacement=True, generator=generator
        )
        residual = (h - h_ref).gather(1, drawn)
        scores = torch.cat([(own - ref_own)[:, None], residual], dim=1)
        loss = loss + 0.5 * F.cross_entropy(scores, target)
    return loss


def top1_margins(own: Tensor, audio_vs_fakes: Tensor, fakes_vs_video: Tensor) -> Tensor:
    """Each direction's own logit minus its best negative, ``(2n,)``: positive where the real
    pair wins (the contrastive objective's accuracy)."""
    return torch.cat([own - audio_vs_fakes.amax(1), own - fakes_vs_video.amax(1)])


def group_logits(
    disc: DiscriminatorFn,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    log_snr: tuple[Tensor, Tensor],
    cond: Mapping[str, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """``h(a_i, v_i)``, ``h(a_i, fake v_j)`` and ``h(fake a_j, v_i)`` of one group whose clips
    all sit at the log-SNRs ``log_snr`` (audio, video; 0-d). ``cond`` holds the real pairs'
    per-pair inputs ``(n, ...)``; every pair of row ``i`` gets row ``i``'s (one caption)."""
    (a, v), (fa, fv) = real, fake
    n, m = len(a), len(fa)
    cross = getattr(disc, "cross_logits", None)
    if cross is not None and not cond:
        logits = cross(torch.cat([a, fa]), torch.cat([v, fv]), *log_snr)
        return cross_blocks(logits, n)
    snr_a, snr_v = log_snr

    def call(audio: Tensor, video: Tensor, rows: Tensor) -> Tensor:
        k = len(audio)
        kw = {key: value[rows] for key, value in cond.items()}
        return disc(audio, video, snr_a.expand(k), snr_v.expand(k), **kw)

    rows = torch.arange(n, device=a.device)
    own = call(a, v, rows)
    per_row = rows.repeat_interleave(m)  # (i, j) pairs, i-major
    fakes = torch.arange(m, device=a.device).repeat(n)
    audio_vs_fakes = call(a[per_row], fv[fakes], per_row).reshape(n, m)
    fakes_vs_video = call(fa[fakes], v[per_row], per_row).reshape(n, m)
    return own, audio_vs_fakes, fakes_vs_video


@dataclass(frozen=True)
class CaptionGroups:
    """Where each caption's real pairs and fake clips are (row indices), so that a group's
    real pairs and negatives share its caption."""

    real_rows: dict[str, Tensor]
    fake_rows: dict[str, Tensor]
    fake_captions: tuple[str, ...]

    @classmethod
    def of(
        cls, real_captions: list[str] | None, fake_captions: list[str] | None
    ) -> CaptionGroups | None:
        """The index of captioned pairs; None when neither side has captions. Fakes of a
        caption that no real pair has are refused (they would be a group without positives)."""
        if real_captions is None and fake_captions is None:
            return None
        if real_captions is None or fake_captions is None:
            which = "fakes" if fake_captions is None else "real pairs"
            raise InputError(
                f"the contrastive objective groups pairs by caption, but the {which} have "
                "none; generate the fakes from the real pairs' captions",
                "fakes" if fake_captions is None else "real",
            )
        real_rows, fake_rows = _rows_by_caption(real_captions), _rows_by_caption(fake_captions)
        missing = sorted(set(fake_rows) - set(real_rows))
        if missing:
            raise InputError(
                f"{len(missing)} caption(s) of the fakes belong to no real pair, e.g. "
                f"{missing[0]!r}; generate the fakes from the real pairs' captions",
                "fakes",
            )
        return cls(real_rows, fake_rows, tuple(fake_captions))

    def coverage_warning(self) -> str | None:
        """What the groups will lack, or None: fakes that are the only fake of their caption
        (a group they anchor repeats that clip as every negative) and real pairs whose caption
        has no fake (never in a group), when either is more than a quarter of its side."""
        n_fake = len(self.fake_captions)
        n_real = sum(len(rows) for rows in self.real_rows.values())
        lone = sum(1 for rows in self.fake_rows.values() if len(rows) == 1)
        unused = sum(len(r) for c, r in self.real_rows.items() if c not in self.fake_rows)
        problems = []
        if 4 * lone > n_fake:
            problems.append(
                f"{lone} of {n_fake} fakes are the only fake of their caption, so each group "
                "they anchor repeats one clip as all its negatives"
            )
        if 4 * unused > n_real:
            problems.append(
                f"{unused} of {n_real} real pairs have a caption no fake has, so they are "
                "never trained on"
            )
        if not problems:
            return None
        return (
            "; ".join(problems)
            + ". The contrastive objective groups pairs by caption: generate several fakes of "
            "each caption (experiment config: fakes.per_caption), or train the paper's loss "
            "(objective 'bce'), which needs no caption groups"
        )

    def regroup(
        self,
        fake_index: Tensor,
        group_size: int,
        generator: torch.Generator,
        fakes_per_group: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Real and fake rows for ``len(fake_index) // group_size`` groups: group ``g`` takes
        the caption of fake ``fake_index[g * group_size]`` (its anchor), the anchor and
        ``fakes_per_group - 1`` (default ``group_size - 1``) more fakes of that caption, and
        ``group_size`` real pairs of it, drawn with replacement."""
        reals, fakes = [], []
        more_fakes = (fakes_per_group or group_size) - 1
        for anchor in fake_index[::group_size].tolist():
            caption = self.fake_captions[anchor]
            pool_real, pool_fake = self.real_rows[caption], self.fake_rows[caption]
            pick = torch.randint(len(pool_fake), (more_fakes,), generator=generator)
            fakes.append(torch.cat([torch.tensor([anchor]), pool_fake[pick]]))
            pick = torch.randint(len(pool_real), (group_size,), generator=generator)
            reals.append(pool_real[pick])
        return torch.cat(reals), torch.cat(fakes)


def _rows_by_caption(captions: list[str]) -> dict[str, Tensor]:
    rows: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        rows.setdefault(caption, []).append(i)
    return {c: torch.tensor(r) for c, r in rows.items()}


def group_fractions(
    n: int,
    group_size: int,
    noise_range: tuple[float, float],
    shared: bool,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Per-pair noise fractions (audio, video) that are constant within each group of
    ``group_size`` consecutive pairs: uniform on ``noise_range``; the two modalities share
    them when ``shared``."""
    lo, hi = noise_range

    def draw() -> Tensor:
        u = lo + (hi - lo) * torch.rand(n // group_size, generator=generator, device=device)
        return u.repeat_interleave(group_size)

    u_a = draw()
    return u_a, (u_a if shared else draw())


def check_groups(batch: int, group_size: int, what: str) -> None:
    """Refuse a batch that does not split into whole groups."""
    if batch % group_size:
        raise InputError(
            f"{what} of {batch} pairs does not split into groups of {group_size}", "group_size"
        )


def contrastive_term(
    disc: DiscriminatorFn,
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    log_snr: tuple[Tensor, Tensor],
    group_size: int,
    cond: Mapping[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """The mean of :func:`info_nce_generated` over consecutive groups of ``group_size`` noised
    real pairs and fake clips (the log-SNRs ``(n,)`` are constant within a group), and every
    row's :func:`top1_margins` (detached). The batch must split into whole groups
    (:func:`check_groups`, which :func:`~mmdisco.training.losses.mmdisco_loss` runs first)."""
    losses, margins = [], []
    for group in _groups(real, fake, log_snr, group_size, cond):
        blocks = group_logits(disc, *group)
        losses.append(info_nce_generated(*blocks))
        margins.append(top1_margins(*blocks).detach())
    return torch.stack(losses).mean(), torch.cat(margins)


Group = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor], dict]


def _groups(
    real: tuple[Tensor, Tensor],
    fake: tuple[Tensor, Tensor],
    log_snr: tuple[Tensor, Tensor],
    group_size: int,
    cond: Mapping[str, Tensor],
) -> Iterator[Group]:
    """:func:`group_logits`' inputs for each group: ``group_size`` consecutive real pairs
    with their per-pair inputs, an equal share of the fake clips, the group's log-SNRs."""
    groups = len(real[0]) // group_size
    share = len(fake[0]) // groups
    for g in range(groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        fakes = slice(g * share, (g + 1) * share)
        yield (
            (real[0][rows], real[1][rows]),
            (fake[0][fakes], fake[1][fakes]),
            (log_snr[0][g * group_size], log_snr[1][g * group_size]),
            {key: value[rows] for key, value in cond.items()},
        )


def refinement_term(
    disc: DiscriminatorFn,
    reference: DiscriminatorFn,
    real: tuple[Tensor, Tensor],
    candidates: tuple[Tensor, Tensor],
    log_snr: tuple[Tensor, Tensor],
    group_size: int,
    negatives: int,
    cond: Mapping[str, Tensor],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """The mean of :func:`hard_negative_info_nce` over consecutive groups: ``group_size``
    noised real pairs and as many groups' worth of candidate clips (``len(candidates) /
    groups`` each, at the group's log-SNRs, constant within it), the frozen ``reference``
    choosing each real clip's ``negatives``. Also every row's :func:`top1_margins` of ``h``
    against all of its group's candidates (detached)."""
    losses, margins = [], []
    for group in _groups(real, candidates, log_snr, group_size, cond):
        blocks = group_logits(disc, *group)
        with torch.no_grad():
            reference_blocks = group_logits(reference, *group)
        losses.append(hard_negative_info_nce(blocks, reference_blocks, negatives, generator))
        margins.append(top1_margins(*blocks).detach())
    return torch.stack(losses).mean(), torch.cat(margins)
