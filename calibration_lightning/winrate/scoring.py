"""Pure functions: from pairwise judgments in both orders to a win rate, its interval and the position bias."""

from __future__ import annotations

import torch
from torch import Tensor


def pair_outcomes(p_first_when_candidate_first: Tensor, p_first_when_candidate_second: Tensor) -> Tensor:
    """Per prompt (``[N]`` P("A is better") with the candidate, then the reference, shown as A): 1 if the judge
    prefers the candidate in both orders, 0 if the reference in both, 0.5 otherwise (a judge that always picks one
    position is inconsistent under the swap: every pair is a tie)."""
    first = p_first_when_candidate_first > 0.5
    second = p_first_when_candidate_second < 0.5  # candidate (shown second) preferred
    return (first.float() + second.float()) / 2


def soft_preference(p_first_when_candidate_first: Tensor, p_first_when_candidate_second: Tensor) -> Tensor:
    """Per prompt: the candidate's preference probability averaged over both orders (position bias cancels)."""
    return (p_first_when_candidate_first + (1 - p_first_when_candidate_second)) / 2


def position_bias(p_first_when_candidate_first: Tensor, p_first_when_candidate_second: Tensor) -> float:
    """Mean P(first position wins) over every judgment minus 0.5: 0 for an unbiased judge, +0.5 for one that
    always picks the first answer, -0.5 for one that always picks the second."""
    return float(torch.cat([p_first_when_candidate_first, p_first_when_candidate_second]).mean() - 0.5)


def bootstrap_interval(
    values: Tensor, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling prompts)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_resamples, n), generator=g)
    means = values.double()[idx].mean(dim=1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def summarize(p_cand_first: Tensor, p_cand_second: Tensor, identical: Tensor, judge: str, seed: int = 0) -> dict:
    """The win-rate block of metrics.json. Pairs whose two answers are the same text count as ties."""
    tie = torch.full_like(p_cand_first, 0.5)
    outcomes = torch.where(identical, tie, pair_outcomes(p_cand_first, p_cand_second))
    soft = torch.where(identical, tie, soft_preference(p_cand_first, p_cand_second))
    judged = ~identical
    lo, hi = bootstrap_interval(outcomes, seed=seed)
    return {
        "win_rate": float(outcomes.mean()) if len(outcomes) else float("nan"),
        "ci95": [lo, hi],
        "soft_win_rate": float(soft.mean()) if len(soft) else float("nan"),
        "n": int(len(outcomes)),
        "n_identical": int(identical.sum()),
        "judge": judge,
        "position_bias": position_bias(p_cand_first[judged], p_cand_second[judged]) if judged.any() else 0.0,
    }
