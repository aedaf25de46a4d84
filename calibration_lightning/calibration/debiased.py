"""The debiased l2 binned ECE and intervals for its population value (and for the change of that value).

``T = sum_b n_b / N U_b`` (``U_b = (S_b^2 - Q_b) / (n_b (n_b - 1))`` of the residuals ``correct - confidence``)
is unbiased for the squared l2 binned ECE; the intervals invert a bootstrap test over worlds whose ECE is theta
(``ResampledECE``). ``docs/statistics.md`` has the definitions, the references and the reasons.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index
from calibration_lightning.calibration.bootstrap import quantile_interval
from calibration_lightning.calibration.metrics import top_label

STEPS = 24  # bisection steps per interval end: an end to within 2 / 2^24 (1e-7), far below the printed 3 decimals


def slots(probs: Tensor, labels: Tensor, n_bins: int, kind: str) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """Each question's bins, residuals and outcomes for one ECE: ``(index [N, M], residual [N, M], outcome [N, M],
    bins, classes)``.

    ``kind="conf"``: one slot, the top-label bin, ``correct - confidence`` and correct (1.0 / 0.0). ``kind="cw"``:
    K slots, class j's bin of ``p_j`` (bins ``j * n_bins ...``), ``1[y = j] - p_j`` and ``1[y = j]``; the squared
    ECE is averaged over the K classes (``classes``).
    """
    # bins from the probabilities as given (the plug-in metrics' bins: a float32 0.7 is in bin 7 in both), the
    # residuals in float64
    if kind == "conf":
        conf, hit = top_label(probs, labels)
        conf64, hit64 = conf.double(), hit.double()
        return bin_index(conf, n_bins)[:, None], (hit64 - conf64)[:, None], hit64[:, None], n_bins, 1
    k = probs.shape[1]
    onehot = torch.nn.functional.one_hot(labels, k).double()
    index = bin_index(probs, n_bins) + torch.arange(k, device=probs.device) * n_bins
    return index, onehot - probs.double(), onehot, k * n_bins, k


def outcomes_vary(index: Tensor, outcome: Tensor, total_bins: int) -> bool:
    """Whether some bin holds both outcomes (a right and a wrong answer; classwise, a question of the class and one
    of another): without that, the residuals' spread is the probabilities' alone and resampling cannot show
    how the outcomes vary (30 right answers at 0.95-1.0 would get an interval of width 0.01)."""
    count, total, _ = bin_sums(index, outcome, total_bins).unflatten(-1, (3, -1)).unbind(-2)
    return bool(((total > 0) & (total < count)).any())


def bin_features(index: Tensor, residual: Tensor, total_bins: int) -> Tensor:
    """``[N, 3 B]``: each question's count, residual and squared residual in each of its bins, so that
    ``counts [R, N] @ features`` gives every resample's per-bin ``n, S, Q`` in one product."""
    out = torch.zeros(index.shape[0], 3 * total_bins, dtype=residual.dtype, device=residual.device)
    out.scatter_add_(1, index, torch.ones_like(residual))
    out.scatter_add_(1, index + total_bins, residual)
    return out.scatter_add_(1, index + 2 * total_bins, residual * residual)


def bin_sums(index: Tensor, residual: Tensor, total_bins: int) -> Tensor:
    """``[3 B]`` (float64): the per-bin ``n, S, Q`` of all questions (``bin_features(...).sum(0)``)."""
    flat, r = index.flatten(), residual.double().flatten()
    out = torch.zeros(3 * total_bins, dtype=torch.float64, device=residual.device)
    out.index_add_(0, flat, torch.ones_like(r))
    out.index_add_(0, flat + total_bins, r)
    return out.index_add_(0, flat + 2 * total_bins, r * r)


def _moments(sums: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin from ``[..., 3 B]`` sums: count n, mean m and ``v`` = sample variance / n (0 below 2)."""
    count, total, squares = sums.double().unflatten(-1, (3, -1)).unbind(-2)
    mean = total / count.clamp_min(1)
    var = ((squares - total * mean) / (count * (count - 1)).clamp_min(1)).clamp_min(0)
    return count, mean, torch.where(count >= 2, var, 0.0)


def debiased_ece(probs: Tensor, labels: Tensor, n_bins: int = 10, kind: str = "conf") -> float:
    """The debiased l2 binned ECE ``sqrt(max(T, 0))`` of ``probs [N, K]``, ``labels [N]`` (``kind`` "conf" or
    "cw"); 0 for N = 0."""
    index, residual, _, total_bins, classes = slots(probs, labels, n_bins, kind)
    if len(labels) == 0:
        return 0.0
    count, mean, var = _moments(bin_sums(index, residual, total_bins))
    square = torch.where(count >= 2, count * (mean * mean - var), 0.0).sum(-1) / (len(labels) * classes)  # T
    return max(float(square), 0.0) ** 0.5


def deviation_features(index: Tensor, residual: Tensor, total_bins: int) -> tuple[Tensor, Tensor]:
    """``(sums [3 B], features [N, 3 B])``: the per-bin ``n, S, Q`` of all questions (float64) and each question's
    count, deviation from its bin's mean residual and squared deviation in each of its bins (float32), the
    columns ``ResampledECE`` multiplies by the resamples' counts."""
    sums = bin_sums(index, residual, total_bins)
    count, mean, _ = _moments(sums)
    return sums, bin_features(index, (residual.double() - mean[index]).float(), total_bins)


class ResampledECE:
    """One ECE of one set of predictions and its R resamples: ``T*`` of every world.

    World(theta): each bin's residuals shifted to the mean ``theta u_b`` (u: the observed gaps at unit l2
    norm), their deviations from it scaled by ``f_b = sqrt(n_b / (n_b - 1))`` so that their spread is the
    unbiased estimate of the bin's, not the ``(n_b - 1) / n_b`` smaller one of resampling as they are. A
    resample's U-statistic runs over the ordered pairs of its draws (a question drawn twice pairs with its
    copy: draws from a world are independent, so ``T*`` is unbiased for theta^2); with the resample's per-bin
    mean deviation e_b and its variance v_b, ``U*_b = f_b^2 (e_b^2 - v_b) + 2 f_b theta u_b e_b + theta^2 u_b^2``,
    a quadratic in theta. ``sums [3 B]`` and ``resampled [R, 3 B]``: ``deviation_features``' sums and ``counts @
    features``; ``classes``: 1 for conf-ECE, K for cw-ECE; ``varies``: ``outcomes_vary`` (False: no interval).
    """

    def __init__(self, sums: Tensor, resampled: Tensor, n: int, classes: int, varies: bool = True) -> None:
        count, mean, var = _moments(sums)
        weight = count / (n * classes)
        self.square = float(torch.where(count >= 2, weight * (mean * mean - var), 0.0).sum())  # T
        norm = float((weight * mean * mean).sum()) ** 0.5
        u = mean / norm if norm > 0 else (count > 0).double()  # equal gaps where every observed gap is 0
        drawn, e, v = _moments(resampled)  # e: a resample's mean deviation; v: its variance / draws
        f2 = count / (count - 1).clamp_min(1)
        w = torch.where(drawn >= 2, drawn / (n * classes), 0.0)
        self.a, self.b, self.c = (w * f2 * (e * e - v)).sum(1), (w * u * f2.sqrt() * e).sum(1), (w * u * u).sum(1)
        # Nothing to resample: no bin holds both outcomes (and so no spread of outcomes within any bin).
        self.degenerate = not varies

    @property
    def estimate(self) -> float:
        """The debiased l2 binned ECE ``sqrt(max(T, 0))``."""
        return max(self.square, 0.0) ** 0.5

    def world(self, theta: float) -> Tensor:
        """``T*`` of each resample of world(theta), ``[R]``."""
        return self.a + (2 * self.b + self.c * theta) * theta


def accepted_range(
    draws: Callable[[float], Tensor], observed: float, low: float, high: float, level: float
) -> list[float]:
    """``[lo, hi]``: the parameters x in ``[low, high]`` whose ``draws(x)`` (R values of the statistic, rising
    with x) hold ``observed`` within their central ``level`` (``quantile_interval``), by bisection at each end."""

    def bisect(inside: Callable[[float], bool], accepted: float, rejected: float) -> float:
        for _ in range(STEPS):
            middle = (accepted + rejected) / 2
            accepted, rejected = (middle, rejected) if inside(middle) else (accepted, middle)
        return accepted

    def below(x: float) -> bool:  # the statistic's lower quantile at x is at most the observed value
        return quantile_interval(draws(x), level)[0] <= observed

    def above(x: float) -> bool:
        return quantile_interval(draws(x), level)[1] >= observed

    lo = low if above(low) else bisect(above, high, low)
    hi = high if below(high) else bisect(below, low, high)
    return [lo, hi]


def ece_interval(ece: ResampledECE, level: float) -> list[float]:
    """``[lo, hi]`` for the population l2 binned ECE: the thetas whose world holds ``max(T, 0)`` in the central
    ``level`` of its ``T*`` (a T below 0 is read as 0: fewer misses than chance widens nothing away)."""
    lo, hi = accepted_range(ece.world, max(ece.square, 0.0), 0.0, 1.0, level)
    return [min(lo, ece.estimate), max(hi, ece.estimate)]


def _root(x: Tensor) -> Tensor:
    return x.clamp_min(0).sqrt()


def paired_worlds(before: ResampledECE, after: ResampledECE) -> Callable[[float], Tensor]:
    """``D*`` of each resample, ``[R]``, in the paired world of a change delta, for ``change_interval``.

    The paired world of delta moves one phase from the estimates: for a change between 0 and the observed D,
    the phase with the larger estimate (so delta = 0, the test of no change, sets both at the smaller
    estimate); beyond D, the one with the smaller estimate (down to 0); the other way, the one with the larger
    estimate (``docs/statistics.md`` says why the smaller estimate for "no change").
    """
    d = after.estimate - before.estimate
    high, low = max(before.estimate, after.estimate), min(before.estimate, after.estimate)
    sign = 1.0 if d >= 0 else -1.0  # +1: after is the phase with the larger estimate

    def draws(delta: float) -> Tensor:
        x = sign * delta  # theta of the phase with the larger estimate minus the other's
        up = max(low + x, x, 0.0) if x <= abs(d) else max(high, x)
        up, down = min(up, 1.0), min(up - x, 1.0)
        theta_a, theta_b = (up, down) if sign > 0 else (down, up)
        return _root(after.world(theta_a)) - _root(before.world(theta_b))

    return draws


def change_interval(before: ResampledECE, after: ResampledECE, level: float) -> list[float]:
    """``[lo, hi]`` for the change of the population l2 binned ECE after - before (the same questions, the same
    resamples): the changes delta whose paired world (``paired_worlds``) holds ``D = sqrt(T_a+) - sqrt(T_b+)``
    in the central ``level`` of its ``D*``; it excludes 0 exactly when the paired test of no change rejects."""
    d = after.estimate - before.estimate
    lo, hi = accepted_range(paired_worlds(before, after), d, -1.0, 1.0, level)
    return [min(lo, d), max(hi, d)]
