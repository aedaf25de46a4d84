"""Resampling the questions: R resamples at once, paired across sets, and the one quantile rule of every interval.

A resample is how often each question was drawn, ``counts [R, N]`` (seeded: the same seed and N give the same
resamples whatever is scored), so a statistic built from per-question sums costs one product ``counts @ features``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

# Below 200 resamples the ends of a 95% interval rest on fewer than 5 draws each (200 x 0.025); 0 turns
# intervals off. The config check and ``evaluate_predictions`` refuse 1-199.
MIN_RESAMPLES = 200
MIN_TAIL = 5  # resamples beyond each end of an interval: fewer (a high level on few resamples) gives no interval
# With fewer questions the resamples take too few distinct values (126 distinct resamples of 5 questions) for
# the bootstrap's spread to stand for the sampling spread.
MIN_QUESTIONS = 10
# What each interval is for (metrics.json "bootstrap.interval"; calibration/intervals.py computes them).
INTERVALS = (
    "conf_ece_debiased, cw_ece_debiased: population l2 binned ECE (bootstrap test inversion), their change the "
    "change of it (excludes_zero: the paired test of no change); accuracy, brier, nll: population mean "
    "(percentile bootstrap), their change paired; conf_ece, cw_ece (the paper's plug-in l1), mce, adaptive_ece, "
    "smooth_ece: no interval"
)
CHUNK_ELEMENTS = 2_000_000  # resamples are drawn and multiplied in chunks of about this many R x N counts


def quantile_interval(values: Tensor, level: float) -> list[float]:
    """``[lo, hi]``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``values`` (linear
    interpolation between order statistics, torch's default)."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(values.double(), q).tolist()
    return [lo, hi]


def resamples_allowed(resamples: int) -> bool:
    """0 (no intervals) or at least ``MIN_RESAMPLES``: the one rule (the config check and the CLI word it)."""
    return resamples == 0 or resamples >= MIN_RESAMPLES


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside: a second thread gains little here on an idle machine and, on a busy one,
    waits for its descheduled peer (``bench/bootstrap_bench.py``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resampled_sums(features: list[Tensor], n_resamples: int, seed: int) -> list[Tensor]:
    """``counts @ f`` for each ``f [N, F_i]`` of ``features`` (float32), with the same seeded ``counts [R, N]``
    for every one of them: ``[R, F_i]`` each."""
    n = features[0].shape[0]
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    parts: list[list[Tensor]] = [[] for _ in features]
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        drawn = torch.randint(n, (r, n), generator=generator)
        counts = torch.zeros(r, n).scatter_add_(1, drawn, torch.ones(r, n))
        for out, f in zip(parts, features):
            out.append(counts @ f.float())
    return [torch.cat(p) for p in parts]
