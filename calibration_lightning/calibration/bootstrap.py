"""Bootstrap intervals over questions: every metric for R resamples at once.

A resample draws N questions with replacement (a seeded ``[R, N]`` index matrix of the questions in their own
order: the same seed and N give the same resamples whatever else is scored); what any metric needs from it
is how often each question was drawn, ``counts [R, N]``. Every binned sum is then one product
``counts @ per_question_features`` (each question's contribution to each bin), so R resamples cost one matrix
product, and the equal-mass ECE takes ``counts`` directly (``metrics.equal_mass_ece``). Before and after are
scored on the same resamples, so their difference is paired.

Two kinds of interval (``INTERVALS``):

- conf-ECE and cw-ECE: an interval for the population **l2** binned ECE from the debiased estimator and a
  bootstrap of a shrunk world (``calibration/debiased.py``, where the quantity and the method are defined).
  The plug-in binned ECE is biased upward near calibration and its percentile interval misses 0 (coverage
  0.00 at N = 240); this one covers at its level near 0 and far from it (``bench/coverage_bench.py``).
  The change after - before gets an interval for the change of that population value.
- accuracy, Brier, NLL (means), MCE and adaptive ECE: percentile intervals (the ``(1 - level) / 2`` and
  ``(1 + level) / 2`` quantiles of the R values, linearly interpolated) of the plug-in value; the same for
  their paired differences.

smECE is not resampled: relplot computes one value of 14,042 questions in 5-10 ms on an idle core, so 1,000
resamples before and after would take 10-20 s (``bench/bootstrap_bench.py``); it gets its point values only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index
from calibration_lightning.calibration.debiased import DebiasedECE, change_interval, interval
from calibration_lightning.calibration.metrics import METRICS, equal_mass_ece, top_label

DEBIASED = {"conf_ece": "conf", "cw_ece": "cw"}  # metric -> kind of DebiasedECE
PERCENTILE = ("accuracy", "brier", "nll", "mce", "adaptive_ece")
# The metrics that get intervals (every metric of METRICS but smooth_ece), in METRICS' order.
RESAMPLED = tuple(m for m in METRICS if m in DEBIASED or m in PERCENTILE)
INTERVALS = (
    "conf_ece, cw_ece: population l2 binned ECE (debiased estimator, shrunk-world bootstrap); "
    "accuracy, brier, nll, mce, adaptive_ece: percentile bootstrap"
)
CHUNK_ELEMENTS = 2_000_000  # resamples are drawn and scored in chunks of about this many R x N entries


def _features(probs: Tensor, labels: Tensor, n_bins: int) -> Tensor:
    """``[N, 2 B + 3]``: each question's contribution to every sum the percentile metrics need.

    Columns: top-label bin counts (B), top-label ``correct - conf`` per bin (B), then correctness, Brier term
    and NLL term.
    """
    n, k = probs.shape
    conf, hit = top_label(probs, labels)
    rows = torch.arange(n)
    top = torch.zeros(n, 2 * n_bins, dtype=probs.dtype)
    b = bin_index(conf, n_bins)
    top[rows, b] = 1.0
    top[rows, n_bins + b] = hit - conf
    onehot = torch.nn.functional.one_hot(labels, k).to(probs.dtype)
    brier = ((probs - onehot) ** 2).sum(dim=1)
    nll = -probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12).log()
    return torch.cat([top, torch.stack([hit, brier, nll], dim=1)], dim=1)


def _scores(probs: Tensor, labels: Tensor, sums: Tensor, counts: Tensor, n_bins: int) -> dict[str, Tensor]:
    """Every metric of ``PERCENTILE`` for each resample (``counts [R, N]``, ``sums = counts @ _features``),
    each ``[R]``."""
    n = probs.shape[0]
    bin_count, bin_gap = sums[:, :n_bins], sums[:, n_bins : 2 * n_bins].abs()
    hit, brier, nll = (sums[:, -3:] / n).unbind(1)
    conf, correct = top_label(probs, labels)
    gap = torch.where(bin_count > 0, bin_gap / bin_count.clamp_min(1), 0.0)
    return {
        "accuracy": hit,
        "brier": brier,
        "nll": nll,
        "mce": gap.max(1).values,
        "adaptive_ece": equal_mass_ece(conf, correct, n_bins, counts).to(sums.dtype),
    }


def resampled_metrics(
    sets: list[tuple[Tensor, Tensor]], n_bins: int, n_resamples: int = 1000, seed: int = 0
) -> list[tuple[dict[str, Tensor], dict[str, DebiasedECE]]]:
    """Every metric of ``RESAMPLED`` on the same R resamples of the questions of each ``(probs, labels)``.

    All sets must hold the same N questions in the same order (e.g. one test split before and after training):
    resample r draws the same questions from each, which is what makes a difference paired.

    Returns:
        Per set: ``{metric: Tensor[R]}`` (for conf_ece and cw_ece the debiased squared ECE ``T*`` of the
        resamples of their shrunk world) and ``{metric: DebiasedECE}`` for conf_ece and cw_ece.
    """
    n = len(sets[0][1])
    if any(len(labels) != n or len(probs) != n for probs, labels in sets):
        raise ValueError(f"paired sets must hold the same {n} questions, got {[len(lb) for _, lb in sets]}")
    if n == 0 or n_resamples < 1:
        raise ValueError(f"the bootstrap needs questions and resamples, got N={n}, R={n_resamples}")
    # Questions in the order of the first set's confidence: its equal-mass ECE then needs no reordering. The
    # draws are made in the questions' own order and mapped, so they do not depend on which set comes first.
    order = sets[0][0].detach().float().cpu().max(dim=1).values.argsort(stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    prepared = []
    for probs, labels in sets:
        probs, labels = probs.detach().float().cpu()[order], labels.detach().long().cpu()[order]
        debiased = {name: DebiasedECE(probs, labels, n_bins, kind) for name, kind in DEBIASED.items()}
        features = torch.cat([_features(probs, labels, n_bins), *(d.features for d in debiased.values())], dim=1)
        prepared.append((probs, labels, features, debiased))
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    parts: list[list[dict[str, Tensor]]] = [[] for _ in sets]
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        drawn = rank[torch.randint(n, (r, n), generator=generator)]  # [r, N] question positions
        counts = torch.zeros(r, n).scatter_add_(1, drawn, torch.ones(r, n))
        for out, (probs, labels, features, debiased) in zip(parts, prepared):
            sums = counts @ features
            values = _scores(probs, labels, sums[:, : 2 * n_bins + 3], counts, n_bins)
            at = 2 * n_bins + 3
            for name, d in debiased.items():
                width = d.features.shape[1]
                values[name] = d.resampled(sums[:, at : at + width])
                at += width
            out.append(values)
    return [
        ({name: torch.cat([p[name] for p in out]) for name in RESAMPLED}, prep[3]) for out, prep in zip(parts, prepared)
    ]


def resampled_conf_ece(sets: list[tuple[Tensor, Tensor]], n_bins: int, n_resamples: int, seed: int) -> list[Tensor]:
    """The plug-in conf-ECE of each ``(probs, labels)`` on the same ``n_resamples`` resamples of its N questions
    (paired: resample r draws the same questions from every set; a generator seeded with ``seed``), each
    ``[R]``: ``sum_b |sum_{i in b} (correct_i - conf_i)| / N`` from per-question counts, as ``conf_ece``."""
    n = len(sets[0][1])
    if any(len(labels) != n or len(probs) != n for probs, labels in sets):
        raise ValueError(f"paired sets must hold the same {n} questions, got {[len(lb) for _, lb in sets]}")
    drawn = torch.randint(n, (n_resamples, n), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(n_resamples, n, dtype=torch.float64).scatter_add_(
        1, drawn, torch.ones(n_resamples, n, dtype=torch.float64)
    )
    out = []
    for probs, labels in sets:
        features = _features(probs.detach().double().cpu(), labels.detach().long().cpu(), n_bins)
        out.append((counts @ features[:, n_bins : 2 * n_bins]).abs().sum(dim=1) / n)
    return out


def _interval(values: Tensor, level: float) -> list[float]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(values.double(), q).tolist()
    return [lo, hi]


def _phase_intervals(values: dict[str, Tensor], debiased: dict[str, DebiasedECE], level: float) -> dict:
    return {
        name: interval(debiased[name], v, level) if name in debiased else _interval(v, level)
        for name, v in values.items()
    }


def debiased_estimates(probs: Tensor, labels: Tensor, n_bins: int) -> dict[str, float]:
    """``{"conf_ece_debiased", "cw_ece_debiased"}``: the debiased estimates of the population l2 binned ECEs."""
    return {f"{name}_debiased": DebiasedECE(probs, labels, n_bins, kind).estimate for name, kind in DEBIASED.items()}


def bootstrap_intervals(
    probs: Tensor, labels: Tensor, n_bins: int, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Interval ``[lo, hi]`` of every metric of ``RESAMPLED`` (resampling questions; ``INTERVALS`` says which
    kind each metric gets)."""
    ((values, debiased),) = resampled_metrics([(probs, labels)], n_bins, n_resamples, seed)
    return _phase_intervals(values, debiased, level)


def paired_intervals(
    probs_before: Tensor,
    probs_after: Tensor,
    labels: Tensor,
    n_bins: int,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Intervals before, after and of the change after - before, all from one set of resamples.

    Returns:
        ``{"before": {metric: [lo, hi]}, "after": {metric: [lo, hi]}, "improvement": {metric: {"ci95": [lo,
        hi], "excludes_zero": bool}}}`` for every metric of ``RESAMPLED``, and ``conf_ece_debiased`` /
        ``cw_ece_debiased`` in the improvement with the interval of conf_ece / cw_ece (both are for the
        change of the population l2 binned ECE) and their ``difference`` (after - before, debiased).
    """
    sets = [(probs_before, labels), (probs_after, labels)]
    (before, debiased_before), (after, debiased_after) = resampled_metrics(sets, n_bins, n_resamples, seed)
    improvement = {}
    for name in RESAMPLED:
        if name in DEBIASED:
            change = change_interval(debiased_before[name], debiased_after[name], before[name], after[name], level)
            improvement[f"{name}_debiased"] = change
            improvement[name] = {k: change[k] for k in ("ci95", "excludes_zero")}
        else:
            ci = _interval(after[name] - before[name], level)
            improvement[name] = {"ci95": ci, "excludes_zero": bool(ci[0] > 0 or ci[1] < 0)}
    return {
        "before": _phase_intervals(before, debiased_before, level),
        "after": _phase_intervals(after, debiased_after, level),
        "improvement": improvement,
    }
