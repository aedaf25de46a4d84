"""Coverage of the debiased conf-ECE intervals and the paired test's level and power, on populations whose ECE
is known (the issue's "done when"; ``bench/coverage_bench.py`` runs the full table).

Populations of 240 questions with 4 options whose accuracy is confidence - g in every bin: the top-label
confidence c is uniform on [low, high], the top option is right with probability c - g, so the population conf-ECE
is g under any binning (l1 and l2 alike). Two models answer the same questions, their correctness coupled through
one uniform per question. About 20 s.
"""

import pytest
import torch

from calibration_lightning.calibration.debiased import debiased_ece
from calibration_lightning.calibration.metrics import brier_terms, nll_terms, top_label
from calibration_lightning.predictions import paired_block


def _models(n, k, gaps, generator, low=None, high=1.0):
    labels = torch.randint(k, (n,), generator=generator)
    wrong = (labels + torch.randint(1, k, (n,), generator=generator)) % k
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    models = []
    for g in gaps:
        lo = 1 / k + g if low is None else low
        conf = lo + (high - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        probs = ((1 - conf) / (k - 1))[:, None].repeat(1, k)
        probs[torch.arange(n), torch.where(u < conf - g, labels, wrong)] = conf
        models.append(probs)
    return models, labels


def _points(probs, labels):
    """The point values paired_block needs (a run passes phase_metrics, which also holds smECE and the rest)."""
    means = {
        "accuracy": top_label(probs, labels)[1],
        "brier": brier_terms(probs, labels),
        "nll": nll_terms(probs, labels),
    }
    return {**{k: float(v.mean()) for k, v in means.items()}, "conf_ece_debiased": debiased_ece(probs, labels),
            "cw_ece_debiased": debiased_ece(probs, labels, kind="cw")}  # fmt: skip


def _run(case, reps, generator):
    """Per repetition: (before's interval, after's interval, the change's interval, excludes_zero)."""
    gaps, low, high = case
    out = []
    for rep in range(reps):
        models, labels = _models(240, 4, gaps, generator, low, high)
        block = paired_block(*models, labels, tuple(_points(m, labels) for m in models), resamples=1000, seed=rep)
        change = block["improvement"]["conf_ece_debiased"]
        out.append(
            (
                *(block[p]["ci95"]["conf_ece_debiased"] for p in ("before", "after")),
                change["ci95"],
                change["excludes_zero"],
            )
        )
    return out


def _covers(ci, value):
    return ci[0] - 1e-9 <= value <= ci[1] + 1e-9


@pytest.mark.slow
def test_intervals_cover_where_runs_land_and_the_paired_test_spends_its_level():
    g = torch.Generator().manual_seed(2024)
    fixed = _run(((0.15, 0.0), None, 1.0), 70, g)  # a miscalibrated model calibrated: 0.15 -> 0
    same = _run(((0.03, 0.03), None, 1.0), 70, g)  # no change, both near calibration
    one_bin = _run(((0.05, 0.05), 0.71, 0.79), 40, g)  # every confidence in one bin, gap 0.05 (no change)
    phases = [_covers(b, 0.15) and _covers(a, 0.0) for b, a, _, _ in fixed]
    phases += [_covers(b, 0.03) and _covers(a, 0.03) for b, a, _, _ in same]
    phases += [_covers(b, 0.05) and _covers(a, 0.05) for b, a, _, _ in one_bin]
    both_covered = sum(phases) / len(phases)  # both phases at once: about 0.93 expected at 0.96-0.97 each
    change_covered = sum(_covers(c, -0.15) for _, _, c, _ in fixed) / len(fixed)
    power = sum(e for *_, e in fixed) / len(fixed)
    false_positive = sum(e for *_, e in same + one_bin) / len(same + one_bin)
    # measured here: 0.94, 0.93, 0.81, 0.018; a broken method misses one of these (the issue's: one-bin coverage
    # 0.72, a test firing in 0-2% of null samples with 62% power)
    assert both_covered >= 0.86, both_covered
    assert change_covered >= 0.85, change_covered
    assert power >= 0.6, power
    assert false_positive <= 0.11, false_positive
