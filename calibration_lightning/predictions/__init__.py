"""Score any tool's predictions: the block metrics.json holds for a phase, with intervals.

The one computation of a phase's block (a run's metrics.json is made by it; ``__main__`` scores prediction
files). metrics.json ``schema_version`` 2: ``docs/statistics.md``.
"""

from __future__ import annotations

from torch import Tensor

from calibration_lightning.calibration.bootstrap import MIN_RESAMPLES, resamples_allowed, single_thread
from calibration_lightning.calibration.debiased import debiased_ece
from calibration_lightning.calibration.intervals import (
    DEBIASED,
    NO_INTERVAL,
    change_intervals,
    ece_change,
    phase_intervals,
    resample,
)
from calibration_lightning.calibration.metrics import all_metrics, as_inputs

SCHEMA_VERSION = 2  # 1: ci95 whatever the level, the plug-in ECEs beside intervals for the l2 value


def interval_key(level: float) -> str:
    """The key of the intervals at ``level``: "ci95" for 0.95, "ci90" for 0.9, "ci97.5" for 0.975."""
    return f"ci{round(100 * level, 6):g}"


@single_thread()
def phase_metrics(probs, labels, n_bins: int = 10) -> dict:
    """Every point value of one phase, each computed once: the metrics of ``METRICS`` (the plug-in ECEs among
    them), the debiased l2 ECEs ``conf_ece_debiased`` and ``cw_ece_debiased``, and ``n``."""
    probs, labels = as_inputs(probs, labels)
    metrics = all_metrics(probs, labels, n_bins)
    n = metrics.pop("n")
    debiased = {name: debiased_ece(probs, labels, n_bins, kind) for name, kind in DEBIASED.items()}
    return {**metrics, **debiased, "n": n}


def _checked(probs, labels, name: str) -> tuple[Tensor, Tensor]:
    probs, labels = as_inputs(probs, labels, name)
    if len(labels) == 0:
        raise ValueError(f"{name} holds no question (N = 0): no metric is defined")
    return probs, labels


def _options(resamples: int, level: float) -> None:
    if not resamples_allowed(resamples):
        raise ValueError(
            f"resamples={resamples}: must be 0 (no intervals) or >= {MIN_RESAMPLES} (fewer leave the ends of a 95% "
            "interval to a handful of draws)"
        )
    if not 0 < level < 1:
        raise ValueError(f"level={level}: must be in (0, 1), e.g. 0.95")


def _holding(ci: list[float] | None, value: float) -> list[float] | None:
    """The interval widened, if need be, to hold the value printed beside it (a guard: the bootstrap's ends
    fall on one side of their own estimate only in degenerate draws)."""
    return None if ci is None else [min(ci[0], value), max(ci[1], value)]


def _with_intervals(block: dict, key: str, intervals: tuple[dict, dict]) -> None:
    ci, why = intervals
    block[key] = {m: _holding(c, block[m]) for m, c in ci.items()}
    if why:
        block[f"{key}_null"] = why


def _improvement(before: dict, after: dict, key: str, change: tuple[dict, dict] | None) -> dict:
    """``{metric: {"difference", key, "excludes_zero"}}`` (and ``<key>_null`` with the reason of a null)."""
    ci, why = change or ({}, {})
    out = {}
    for m, value in before.items():
        if m == "n" or not isinstance(value, float):
            continue
        d = after[m] - value
        interval = _holding(ci.get(m), d)
        entry = {"difference": d, key: interval, "excludes_zero": None if interval is None else not (
            interval[0] <= 0 <= interval[1])}  # fmt: skip
        if interval is None:
            entry[f"{key}_null"] = NO_INTERVAL.get(m) or why.get(m) or "intervals off (resamples = 0)"
        out[m] = entry
    return out


@single_thread()
def paired_block(
    before_probs, after_probs, labels, points: tuple[dict, dict], *, n_bins: int = 10, resamples: int = 1000,
    level: float = 0.95, seed: int = 0
) -> dict:  # fmt: skip
    """``{"before": block, "after": block, "improvement": {metric: {"difference", interval_key(level),
    "excludes_zero"}}}`` from one paired bootstrap, for point values already computed (``points``:
    ``phase_metrics`` of before and of after; none is recomputed)."""
    _options(resamples, level)
    after_probs, labels = _checked(after_probs, labels, "probs")
    before_probs, _ = _checked(before_probs, labels, "before")
    if before_probs.shape != after_probs.shape:
        raise ValueError(
            f"before must have the shape of probs {tuple(after_probs.shape)}, got {tuple(before_probs.shape)}"
        )
    key, blocks, change = interval_key(level), {"before": dict(points[0]), "after": dict(points[1])}, None
    if resamples > 0:
        sets = resample([(before_probs, labels), (after_probs, labels)], n_bins, resamples, seed)
        for phase, r in zip(blocks, sets):
            _with_intervals(blocks[phase], key, phase_intervals(r, level))
        change = change_intervals(*sets, level)
    return {**blocks, "improvement": _improvement(blocks["before"], blocks["after"], key, change)}


@single_thread()
def evaluate_pair(
    before, after, labels, *, n_bins: int = 10, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """One set before and after a change: ``paired_block``'s ``{"before", "after", "improvement"}``, each block as
    ``evaluate_predictions`` returns it (the same values: the resamples are the same)."""
    after, labels = _checked(after, labels, "probs")
    before, _ = _checked(before, labels, "before")
    metrics = [phase_metrics(p, labels, n_bins) for p in (before, after)]
    options = {"n_bins": n_bins, "resamples": resamples, "level": level, "seed": seed}
    return paired_block(before, after, labels, tuple(metrics), **options)


@single_thread()
def evaluate_predictions(
    probs, labels, *, n_bins: int = 10, resamples: int = 1000, level: float = 0.95, seed: int = 0, before=None
) -> dict:
    """Every metric of one set of predictions with its interval, as a run's metrics.json holds them per phase.

    Args:
        probs: ``[N, K]`` probabilities over each question's options (rows sum to 1; zeros past a row's own
            options) or ``[N]`` probabilities of class 1 (binary), a torch tensor or a numpy array.
        labels: ``[N]`` gold option indices (0/1 for a binary ``probs``).
        n_bins: equal-width bins of every binned metric.
        resamples: bootstrap resamples of the questions: 0 (no intervals) or at least ``MIN_RESAMPLES``.
        level: the intervals' coverage level.
        seed: the resamples' seed; the same seed and N draw the same questions whatever is scored.
        before: ``[N, K]`` probabilities of the same questions before a change (e.g. before training).

    Returns:
        ``{metric: value, ..., "n": N, interval_key(level): {metric: [lo, hi] or None}, "<key>_null":
        {metric: reason}}`` (intervals when ``resamples`` > 0; ``calibration.bootstrap.INTERVALS`` says what
        each is for), plus ``"improvement"`` as ``paired_block`` gives it when ``before`` is given.
    """
    options = {"n_bins": n_bins, "resamples": resamples, "level": level, "seed": seed}
    if before is not None:
        pair = evaluate_pair(before, probs, labels, **options)
        return {**pair["after"], "improvement": pair["improvement"]}
    _options(resamples, level)
    probs, labels = _checked(probs, labels, "probs")
    block = phase_metrics(probs, labels, n_bins)
    if resamples > 0:
        (r,) = resample([(probs, labels)], n_bins, resamples, seed)
        _with_intervals(block, interval_key(level), phase_intervals(r, level))
    return block


@single_thread()
def compare_candidates(
    probs_by_name: dict, labels, lowest: str, *, n_bins: int = 10, resamples: int = 1000, level: float = 0.95,
    seed: int = 0
) -> dict:  # fmt: skip
    """method=auto's tie test: each candidate's debiased l2 conf-ECE against ``lowest``'s (the lowest
    ``conf_ece_debiased``), by the paired test of metrics.json's conf_ece_debiased change.

    Returns ``{name: {"above_lowest": its conf_ece_debiased - lowest's, interval_key(level): [lo, hi] or None,
    "tied": bool}}``: tied when the interval holds 0 or is None (``<key>_null`` then says why); ``lowest`` is tied
    with itself; with ``resamples`` 0 only ``lowest`` is tied.
    """
    _options(resamples, level)
    names = list(probs_by_name)
    if lowest not in probs_by_name:
        raise ValueError(f"lowest={lowest!r} is not one of the candidates {names}")
    checked = [_checked(probs_by_name[name], labels, name) for name in names]
    sets = resample(checked, n_bins, resamples, seed) if resamples > 0 else None
    key, base = interval_key(level), names.index(lowest)
    lowest_ece = debiased_ece(checked[base][0], checked[base][1], n_bins)
    out = {}
    for i, (name, (probs, y)) in enumerate(zip(names, checked)):
        above = debiased_ece(probs, y, n_bins) - lowest_ece
        entry = {"above_lowest": above, key: None, "tied": name == lowest}
        if sets is not None and name != lowest:
            ci, why = ece_change(sets[base], sets[i], "conf_ece_debiased", level)
            entry[key] = _holding(ci, above)
            entry["tied"] = ci is None or entry[key][0] <= 0 <= entry[key][1]
            if why:
                entry[f"{key}_null"] = why
        out[name] = entry
    return out
