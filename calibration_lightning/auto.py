"""``method=auto``'s rule: which of several candidates, each trained from the same initial adapters, is kept."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from calibration_lightning.calibration.confidence import set_probabilities
from calibration_lightning.schema import BootstrapConf

RULE = (
    "train each candidate from the same initial adapters; a candidate is eligible unless its validation "
    "accuracy is below the best's by more than regime.accuracy_tolerance plus method.accuracy_z standard "
    "errors of the paired difference (the same validation questions, exact counts); among the eligible, the one "
    "with the lowest validation conf-ECE and every one whose conf-ECE is above it within the noise (the paired "
    "bootstrap interval of the difference, over bootstrap.resamples resamples of the validation questions at "
    "bootstrap.level, reaches 0) are tied; among the tied, keep the lowest validation NLL (ties: the first listed)"
)


def paired_difference(best: list[bool], other: list[bool]) -> tuple[int, float]:
    """Correct answers of ``best`` minus those of ``other`` on the same questions, and the standard error
    of that count (from the discordant pairs: ``sqrt(b + c - (b - c)^2 / n)``, the paired, McNemar-type
    variance of a sum of per-question differences)."""
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
    """Apply ``RULE`` to each candidate's validation scores (``{name: Scored}``: letter logits, labels, n_choices
    and their ``metrics``, the same questions in the same order).

    Returns:
        ``{"candidates": {name: metrics}, "paired": {...}, "eligible": [...], "calibration": {name: {"above_lowest",
        "ci", "tied"}}, "tied": [...], "chosen": name, "rule": RULE, "accuracy_tolerance", "accuracy_z"}``
        (metrics.json ``auto``).
    """
    if not val:
        raise ValueError("no candidate to choose from")
    metrics = {name: s["metrics"] for name, s in val.items()}
    probs = {name: set_probabilities(s["letter_logits"], s["n_choices"]) for name, s in val.items()}
    labels = next(iter(val.values()))["labels"]
    correct = {name: (p.argmax(dim=-1) == labels).tolist() for name, p in probs.items()}
    names, paired = eligible(correct, tolerance, z)
    lowest = min(names, key=lambda name: metrics[name]["conf_ece"])
    calibration, tied = {}, [lowest]
    if bootstrap.resamples > 0 and len(names) > 1:
        ece = {name: metrics[name]["conf_ece"] for name in names}
        calibration = calibration_ties({n: probs[n] for n in names}, labels, ece, lowest, n_bins, bootstrap)
        tied = [name for name in names if calibration[name]["tied"]]
    chosen = min(tied, key=lambda name: metrics[name]["nll"]) if len(tied) > 1 else lowest
    return {
        "candidates": metrics,
        "paired": paired,
        "eligible": names,
        "calibration": calibration,
        "tied": tied,
        "chosen": chosen,
        "rule": RULE,
        "accuracy_tolerance": tolerance,
        "accuracy_z": z,
    }


def calibration_ties(probs: dict, labels, ece: dict, lowest: str, n_bins: int, bootstrap: BootstrapConf) -> dict:
    """Per candidate: its validation conf-ECE minus ``lowest``'s (``above_lowest``), the paired bootstrap percentile
    interval of that difference (``ci``: the same resamples of the questions for every candidate) and whether the
    candidate is ``tied`` with ``lowest`` (the interval reaches 0; ``lowest`` is tied with itself)."""
    from calibration_lightning.calibration.bootstrap import resampled_conf_ece

    names = list(probs)
    sets = [(probs[n], labels) for n in names]
    resampled = dict(zip(names, resampled_conf_ece(sets, n_bins, bootstrap.resamples, bootstrap.seed)))
    level = bootstrap.level
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    result = {}
    for name in names:
        lo, hi = torch.quantile(resampled[name] - resampled[lowest], quantiles).tolist()
        above = round(ece[name] - ece[lowest], 6)
        result[name] = {"above_lowest": above, "ci": [round(lo, 6), round(hi, 6)], "tied": lo <= 0}
    return result
