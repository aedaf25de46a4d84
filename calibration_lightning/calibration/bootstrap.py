"""Bootstrap intervals over questions: every metric for R resamples at once.

A resample draws N questions with replacement (a seeded ``[R, N]`` index matrix); what any metric needs from it
is how often each question was drawn, ``counts [R, N]``. Every binned sum is then one product
``counts @ per_question_features`` (each question's contribution to each bin), so R resamples cost one matrix
product, and the equal-mass ECE takes ``counts`` directly (``metrics.equal_mass_ece``). Before and after are
scored on the same resamples, so their difference is paired. Intervals are percentile intervals (the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the R values, linearly interpolated).

smECE is not resampled: relplot computes one value of 14,042 questions in 5-10 ms on an idle core, so 1,000
resamples before and after would take 10-20 s (``bench/bootstrap_bench.py``); it gets its point values only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index
from calibration_lightning.calibration.metrics import METRICS, equal_mass_ece, metric, top_label

# The metrics that get intervals (every metric of METRICS but smooth_ece).
RESAMPLED = ("conf_ece", "cw_ece", "accuracy", "brier", "nll", "mce", "adaptive_ece")
CHUNK_ELEMENTS = 2_000_000  # resamples are drawn and scored in chunks of about this many R x N entries


def _features(probs: Tensor, labels: Tensor, n_bins: int) -> Tensor:
    """``[N, 2 B + K B + 3]``: each question's contribution to every sum the metrics need.

    Columns: top-label bin counts (B), top-label ``correct - conf`` per bin (B), ``1[y = j] - p_j`` per class
    and class bin (K B), then correctness, Brier term and NLL term.
    """
    n, k = probs.shape
    conf, hit = top_label(probs, labels)
    rows = torch.arange(n)
    top = torch.zeros(n, 2 * n_bins, dtype=probs.dtype)
    b = bin_index(conf, n_bins)
    top[rows, b] = 1.0
    top[rows, n_bins + b] = hit - conf
    onehot = torch.nn.functional.one_hot(labels, k).to(probs.dtype)
    classwise = torch.zeros(n, k * n_bins, dtype=probs.dtype)
    classwise.scatter_(1, bin_index(probs, n_bins) + torch.arange(k) * n_bins, onehot - probs)
    brier = ((probs - onehot) ** 2).sum(dim=1)
    nll = -probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12).log()
    return torch.cat([top, classwise, torch.stack([hit, brier, nll], dim=1)], dim=1)


def _scores(probs: Tensor, labels: Tensor, features: Tensor, counts: Tensor, n_bins: int) -> dict[str, Tensor]:
    """Every metric of ``RESAMPLED`` for each resample (``counts [R, N]``), each ``[R]``."""
    n, k = probs.shape
    sums = counts @ features  # [R, F]
    bin_count, bin_gap = sums[:, :n_bins], sums[:, n_bins : 2 * n_bins].abs()
    classwise = sums[:, 2 * n_bins : (2 + k) * n_bins].abs()
    hit, brier, nll = (sums[:, -3:] / n).unbind(1)
    conf, correct = top_label(probs, labels)
    gap = torch.where(bin_count > 0, bin_gap / bin_count.clamp_min(1), 0.0)
    return {
        "conf_ece": bin_gap.sum(1) / n,
        "cw_ece": classwise.sum(1) / n / k,
        "accuracy": hit,
        "brier": brier,
        "nll": nll,
        "mce": gap.max(1).values,
        "adaptive_ece": equal_mass_ece(conf, correct, n_bins, counts).to(sums.dtype),
    }


def resampled_metrics(
    sets: list[tuple[Tensor, Tensor]], n_bins: int, n_resamples: int = 1000, seed: int = 0
) -> list[dict[str, Tensor]]:
    """Every metric of ``RESAMPLED`` on the same R resamples of the questions of each ``(probs, labels)``.

    All sets must hold the same N questions in the same order (e.g. one test split before and after training):
    resample r draws the same questions from each, which is what makes a difference paired.

    Returns:
        One ``{metric: Tensor[R]}`` per set.
    """
    n = len(sets[0][1])
    if any(len(labels) != n or len(probs) != n for probs, labels in sets):
        raise ValueError(f"paired sets must hold the same {n} questions, got {[len(lb) for _, lb in sets]}")
    if n == 0 or n_resamples < 1:
        raise ValueError(f"the bootstrap needs questions and resamples, got N={n}, R={n_resamples}")
    # Questions in the order of the first set's confidence: its equal-mass ECE then needs no reordering.
    order = sets[0][0].detach().float().cpu().max(dim=1).values.argsort(stable=True)
    prepared = []
    for probs, labels in sets:
        probs, labels = probs.detach().float().cpu()[order], labels.detach().long().cpu()[order]
        prepared.append((probs, labels, _features(probs, labels, n_bins)))
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    parts: list[list[dict[str, Tensor]]] = [[] for _ in sets]
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        drawn = torch.randint(n, (r, n), generator=generator)  # [r, N] question indices
        counts = torch.zeros(r, n).scatter_add_(1, drawn, torch.ones(r, n))
        for out, (probs, labels, features) in zip(parts, prepared):
            out.append(_scores(probs, labels, features, counts, n_bins))
    return [{name: torch.cat([p[name] for p in out]) for name in RESAMPLED} for out in parts]


def _interval(values: Tensor, level: float) -> list[float]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(values.double(), q).tolist()
    return [lo, hi]


def bootstrap_intervals(
    probs: Tensor, labels: Tensor, n_bins: int, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap interval ``[lo, hi]`` of every metric of ``RESAMPLED`` (resampling questions)."""
    (values,) = resampled_metrics([(probs, labels)], n_bins, n_resamples, seed)
    return {name: _interval(v, level) for name, v in values.items()}


def paired_bootstrap(
    probs_before: Tensor,
    probs_after: Tensor,
    labels: Tensor,
    n_bins: int,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Intervals before, after and of the difference, all from one set of resamples.

    Returns:
        ``{"before": {metric: [lo, hi]}, "after": {metric: [lo, hi]}, "improvement": {metric: {"difference":
        after - before (point values), "ci95": [lo, hi], "excludes_zero": bool}}}``; the improvement also holds
        smooth_ece's point difference, with ``ci95`` None.
    """
    before, after = resampled_metrics([(probs_before, labels), (probs_after, labels)], n_bins, n_resamples, seed)
    improvement = {}
    for name in METRICS:
        difference = float(metric(name, probs_after, labels, n_bins) - metric(name, probs_before, labels, n_bins))
        ci = _interval(after[name] - before[name], level) if name in before else None
        improvement[name] = {
            "difference": difference,
            "ci95": ci,
            "excludes_zero": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
        }
    return {
        "before": {name: _interval(v, level) for name, v in before.items()},
        "after": {name: _interval(v, level) for name, v in after.items()},
        "improvement": improvement,
    }
