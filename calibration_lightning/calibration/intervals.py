"""Intervals of one set's metrics and of their changes after - before, all from one paired bootstrap.

What each is for: ``bootstrap.INTERVALS`` and ``docs/statistics.md``. An interval that cannot be estimated is None
with its reason (``reason``): too few questions or resamples, or no spread for the bootstrap to resample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from calibration_lightning.calibration.bootstrap import MIN_QUESTIONS, MIN_TAIL, quantile_interval, resampled_sums
from calibration_lightning.calibration.debiased import (
    ResampledECE,
    change_interval,
    deviation_features,
    ece_interval,
    outcomes_vary,
    slots,
)
from calibration_lightning.calibration.metrics import brier_terms, nll_terms, top_label

MEANS = ("accuracy", "brier", "nll")
DEBIASED = {"conf_ece_debiased": "conf", "cw_ece_debiased": "cw"}
NO_INTERVAL = {
    "conf_ece": "the paper's plug-in l1 ECE, biased upward near calibration: no interval is for its own population "
    "value (conf_ece_debiased has one)",
    "cw_ece": "the paper's plug-in l1 classwise ECE, biased upward near calibration: no interval is for its own "
    "population value (cw_ece_debiased has one)",
    "mce": "a maximum over bins, biased upward: no interval",
    "adaptive_ece": "a plug-in ECE over equal-mass bins, biased upward near calibration: no interval",
    "smooth_ece": "relplot's smECE costs 5-50 ms per value: not resampled",
}


@dataclass
class Resampled:
    """One set of predictions and its R resamples: what every interval of it and of its changes needs."""

    terms: Tensor  # [N, 3] each question's correctness, Brier and NLL terms (float64), columns in MEANS' order
    means: Tensor  # [R, 3] their means in each resample
    eces: dict[str, ResampledECE]  # by DEBIASED's names
    residuals: dict[str, tuple[Tensor, Tensor]]  # each ECE's (bin index, residual) per question

    @property
    def n(self) -> int:
        return len(self.terms)


def resample(sets: list[tuple[Tensor, Tensor]], n_bins: int, resamples: int, seed: int) -> list[Resampled]:
    """The same ``resamples`` seeded resamples of the questions of each checked ``(probs [N, K], labels [N])``
    (every set holds the same N questions in the same order)."""
    n = len(sets[0][1])
    if any(len(labels) != n or len(probs) != n for probs, labels in sets):
        raise ValueError(f"paired sets must hold the same {n} questions, got {[len(lb) for _, lb in sets]}")
    prepared, features = [], []
    for probs, labels in sets:
        probs, labels = probs.detach().cpu(), labels.detach().long().cpu()
        p64 = probs.double()
        terms = torch.stack([top_label(p64, labels)[1], brier_terms(p64, labels), nll_terms(p64, labels)], 1)
        slot = {name: slots(probs, labels, n_bins, kind) for name, kind in DEBIASED.items()}  # bins as given
        deviations = {name: deviation_features(s[0], s[1], s[3]) for name, s in slot.items()}
        prepared.append((terms, slot, deviations))
        features.append(torch.cat([terms, *(f for _, f in deviations.values())], 1))
    out = []
    for (terms, slot, deviations), sums in zip(prepared, resampled_sums(features, resamples, seed)):
        eces, at = {}, terms.shape[1]
        for name, (full, f) in deviations.items():
            index, _, outcome, total_bins, classes = slot[name]
            varies = outcomes_vary(index, outcome, total_bins)
            eces[name] = ResampledECE(full, sums[:, at : at + f.shape[1]], n, classes, varies)
            at += f.shape[1]
        pairs = {name: s[:2] for name, s in slot.items()}
        out.append(Resampled(terms, sums[:, : terms.shape[1]].double() / n, eces, pairs))
    return out


def reason(n: int, resamples: int, level: float) -> str | None:
    """Why no interval can be estimated from ``n`` questions and ``resamples`` at ``level``; None if one can."""
    if n < MIN_QUESTIONS:
        return f"{n} question(s): a bootstrap interval needs at least {MIN_QUESTIONS}"
    if resamples * (1 - level) / 2 < MIN_TAIL:
        return f"{resamples} resamples leave fewer than {MIN_TAIL} beyond each end of a {level:g} interval"
    return None


NO_SPREAD = (
    "no bin holds both outcomes (a right and a wrong answer; classwise, the class and another): no spread to resample"
)


def phase_intervals(r: Resampled, level: float) -> tuple[dict, dict]:
    """``({metric: [lo, hi] or None}, {metric: reason})`` for every metric of ``MEANS`` and ``DEBIASED``."""
    common = reason(r.n, len(r.means), level)
    out, why = {}, {}
    for j, name in enumerate(MEANS):
        column = r.terms[:, j]
        why[name] = common or (f"all {r.n} questions have the same {name} term: no spread to resample"
                               if bool((column == column[0]).all()) else None)  # fmt: skip
        out[name] = None if why[name] else quantile_interval(r.means[:, j], level)
    for name, ece in r.eces.items():
        why[name] = common or (NO_SPREAD if ece.degenerate else None)
        out[name] = None if why[name] else ece_interval(ece, level)
    return out, {k: v for k, v in why.items() if v}


def ece_change(before: Resampled, after: Resampled, name: str, level: float) -> tuple[list[float] | None, str | None]:
    """The interval of the change of the debiased ECE ``name`` after - before, or None and the reason."""
    b, a = before.eces[name], after.eces[name]
    same = all(torch.equal(x, y) for x, y in zip(before.residuals[name], after.residuals[name]))
    phase = "before" if b.degenerate else "after" if a.degenerate else None
    why = reason(before.n, len(before.means), level) or (
        f"{phase}: {NO_SPREAD}" if phase else "before and after are the same predictions" if same else None
    )
    return (None, why) if why else (change_interval(b, a, level), None)


def change_intervals(before: Resampled, after: Resampled, level: float) -> tuple[dict, dict]:
    """``({metric: [lo, hi] or None}, {metric: reason})`` for the change after - before of every metric of
    ``MEANS`` and ``DEBIASED`` (the two sets resampled together by ``resample``)."""
    common = reason(before.n, len(before.means), level)
    out, why = {}, {}
    for j, name in enumerate(MEANS):
        diff = after.terms[:, j] - before.terms[:, j]
        same = bool((diff == diff[0]).all())
        why[name] = common or (
            f"every question's {name} term changes by the same amount: no spread to resample" if same else None
        )
        out[name] = None if why[name] else quantile_interval(after.means[:, j] - before.means[:, j], level)
    for name in DEBIASED:
        out[name], why[name] = ece_change(before, after, name, level)
    return out, {k: v for k, v in why.items() if v}
