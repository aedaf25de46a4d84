"""``method=auto``'s rule: which of several candidates, each trained from the same initial adapters, is kept."""

from __future__ import annotations

import math
from fractions import Fraction

from calibration_lightning.calibration.confidence import set_probabilities
from calibration_lightning.predictions import compare_candidates
from calibration_lightning.schema import BootstrapConf

RULE = (
    "train each candidate from the same initial adapters; a candidate is eligible unless its validation "
    "accuracy is below the best's by more than regime.accuracy_tolerance plus method.accuracy_z standard "
    "errors of the paired difference (the same validation questions, exact counts); among the eligible, the one "
    "with the lowest validation conf-ECE (debiased l2) and every one whose conf-ECE is above it within the noise "
    "(the paired interval of the difference, the test of metrics.json's conf_ece_debiased change over "
    "bootstrap.resamples resamples of the validation questions at bootstrap.level, holds 0) are tied; among the "
    "tied, keep the lowest validation NLL (ties: the first listed)"
)


def paired_difference(best: list[bool], other: list[bool]) -> tuple[int, float]:
    """Correct answers of ``best`` minus those of ``other`` on the same questions, and the standard error of that
    count (McNemar-type, from the discordant pairs: ``sqrt(b + c - (b - c)^2 / n)``)."""
    if len(best) != len(other):
        raise ValueError("candidates must be scored on the same validation questions")
    b = sum(x and not y for x, y in zip(best, other))
    c = sum(y and not x for x, y in zip(best, other))
    n = len(best)
    return b - c, math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) if n else 0.0


def eligible(correct: dict[str, list[bool]], tolerance: float, z: float) -> tuple[list[str], dict]:
    """The candidates whose validation accuracy is within ``tolerance`` (exact counts: a loss of d of n
    questions is within when ``d <= tolerance * n``, as a Fraction) plus ``z`` paired standard errors of the most
    accurate one (the first listed among ties); and each candidate's ``{"correct", "n", "behind_best", "se"}``."""
    counts = {name: sum(c) for name, c in correct.items()}
    leader = max(counts, key=lambda name: counts[name])
    n = len(correct[leader])
    allowed = Fraction(str(tolerance)) * n
    paired, names = {}, []
    for name in correct:
        behind, se = paired_difference(correct[leader], correct[name])
        paired[name] = {"correct": counts[name], "n": n, "behind_best": behind, "se": round(se, 4)}
        if behind <= allowed or behind - allowed <= z * se:
            names.append(name)
    return names, paired


def choose_method(val: dict[str, dict], tolerance: float, z: float, n_bins: int, bootstrap: BootstrapConf) -> dict:
    """Apply ``RULE`` to each candidate's validation scores (``{name: Scored}`` with their ``metrics``, the same
    questions in the same order); returns metrics.json's ``auto`` block."""
    if not val:
        raise ValueError("no candidate to choose from")
    metrics = {name: s["metrics"] for name, s in val.items()}
    probs = {name: set_probabilities(s["letter_logits"], s["n_choices"]) for name, s in val.items()}
    labels = next(iter(val.values()))["labels"]
    correct = {name: (p.argmax(dim=-1) == labels).tolist() for name, p in probs.items()}
    names, paired = eligible(correct, tolerance, z)
    lowest = min(names, key=lambda name: metrics[name]["conf_ece_debiased"])
    calibration, tied = {}, [lowest]
    if bootstrap.resamples > 0 and len(names) > 1:
        options = {"n_bins": n_bins, "resamples": bootstrap.resamples, "level": bootstrap.level, "seed": bootstrap.seed}
        calibration = compare_candidates({n: probs[n] for n in names}, labels, lowest, **options)
        tied = [name for name in names if calibration[name]["tied"]]
    chosen = min(tied, key=lambda name: metrics[name]["nll"]) if len(tied) > 1 else lowest
    return dict(candidates=metrics, paired=paired, eligible=names, calibration=calibration, tied=tied, chosen=chosen,
                rule=RULE, accuracy_tolerance=tolerance, accuracy_z=z)  # fmt: skip
