"""Debiased binned calibration error and bootstrap intervals for its population value.

The population quantity. With the paper's equal-width bins b (top-label confidence for conf-ECE; each class's
probability p_j for classwise ECE), let ``P(b)`` be the chance a question falls in bin b and ``delta_b =
E[correct - confidence | b]`` the bin's gap. The paper reports the plug-in l1 value ``sum_b n_b / N |gap_b|``;
its population counterpart ``sum_b P(b) |delta_b|`` has no unbiased estimator (``|.|`` is not smooth at 0), and
the plug-in is biased upward by about ``sqrt(2 / pi) sum_b P(b) sd_b / sqrt(n_b)`` near calibration, 0.05 on
240 questions. The intervals here are for the **l2 binned ECE** ``sqrt(sum_b P(b) delta_b^2)`` (classwise: the
mean over classes inside the root), the quantity of Sun, Chaudhari, Barnett and Dobriban 2024 ("A Confidence
Interval for the l2 Expected Calibration Error"). It equals the l1 value when every bin has the same |gap| and
is never below it (Jensen), so an interval's upper end also bounds the l1 population value from above.

The estimator. Within bin b, with residuals ``r_i = correct_i - confidence_i``, the U-statistic
``U_b = (S_b^2 - Q_b) / (n_b (n_b - 1))`` (``S_b`` = sum of r, ``Q_b`` = sum of r^2) is unbiased for
``delta_b^2``: the plug-in ``(S_b / n_b)^2`` minus its sampling variance (Broecker 2012, Ferro and Fricker 2012,
Kumar et al. 2019). ``T = sum_b n_b / N U_b`` estimates the squared l2 ECE without bias; it can be negative, and
``sqrt(max(T, 0))`` is the reported debiased estimate.

The interval: a pivot bootstrap from a shrunk world. Resampling the questions as they are draws from a world
whose squared ECE is the plug-in value, too large by the very bias being removed, and near calibration such a
world is not calibrated, so the spread of ``T*`` there is not that of ``T`` (the issue the plain bootstrap
fails on). Each bin's residuals are therefore shifted by a constant, ``r' = r - (1 - lambda_b) mean_b(r)``,
``lambda_b = sqrt(max(U_b, 0)) / |mean_b(r)|``, so that the world's squared gap is ``max(U_b, 0)`` (within-bin
spread unchanged), the world's squared ECE ``theta' = sum_b n_b / N max(U_b, 0)``. The R resamples of that
world give ``T* - theta'``, which stands in for ``T - theta``; the interval for theta is ``[T - q_hi, T - q_lo]``
(q = its (1 -+ level) / 2 quantiles), truncated at 0 and square-rooted. A change (after - before, the same
questions) uses the same resamples of both worlds and the pivot ``D* - D'`` on the root scale, ``D =
sqrt(T_after+) - sqrt(T_before+)``. Coverage on populations of known ECE: ``bench/coverage_bench.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index
from calibration_lightning.calibration.metrics import top_label


def slots(probs: Tensor, labels: Tensor, n_bins: int, kind: str) -> tuple[Tensor, Tensor, int, int]:
    """Each question's bins and residuals for one ECE: ``(index [N, M], residual [N, M], bins, classes)``.

    ``kind="conf"``: one slot, the top-label bin and ``correct - confidence``. ``kind="cw"``: K slots, class
    j's bin of ``p_j`` (bins ``j * n_bins ...``) and ``1[y = j] - p_j``; the squared ECE is averaged over the K
    classes (``classes``).
    """
    if kind == "conf":
        conf, hit = top_label(probs, labels)
        return bin_index(conf, n_bins)[:, None], (hit - conf)[:, None], n_bins, 1
    k = probs.shape[1]
    onehot = torch.nn.functional.one_hot(labels, k).to(probs.dtype)
    index = bin_index(probs, n_bins) + torch.arange(k, device=probs.device) * n_bins
    return index, onehot - probs, k * n_bins, k


def bin_features(index: Tensor, residual: Tensor, total_bins: int) -> Tensor:
    """``[N, 3 B]``: each question's count, residual and squared residual in each of its bins.

    ``counts [R, N] @ features`` then gives every resample's per-bin ``n, S, Q`` in one product.
    """
    n = index.shape[0]
    out = torch.zeros(n, 3 * total_bins, dtype=residual.dtype, device=residual.device)
    out.scatter_add_(1, index, torch.ones_like(residual))
    out.scatter_add_(1, index + total_bins, residual)
    out.scatter_add_(1, index + 2 * total_bins, residual * residual)
    return out


def bin_sums(index: Tensor, residual: Tensor, total_bins: int) -> Tensor:
    """``[3 B]`` (float64): the per-bin ``n, S, Q`` of all questions, ``bin_features(...).sum(0)`` without the
    ``[N, 3 B]`` matrix."""
    flat, r = index.flatten(), residual.double().flatten()
    out = torch.zeros(3 * total_bins, dtype=torch.float64, device=residual.device)
    out.index_add_(0, flat, torch.ones_like(r))
    out.index_add_(0, flat + total_bins, r)
    return out.index_add_(0, flat + 2 * total_bins, r * r)


def squared_gaps(sums: Tensor) -> tuple[Tensor, Tensor]:
    """Per bin, from ``sums [..., 3 B]`` (n, S, Q): the unbiased squared gap ``U_b`` (0 below 2 questions) and n."""
    count, total, squares = sums.double().unflatten(-1, (3, -1)).unbind(-2)
    u = (total * total - squares) / (count * (count - 1)).clamp_min(1)
    return torch.where(count >= 2, u, 0.0), count


def debiased_square(sums: Tensor, n: int, classes: int = 1) -> Tensor:
    """``T = sum_b n_b / N U_b / classes``: unbiased for the squared l2 binned ECE, ``[...]`` from ``[..., 3 B]``."""
    u, count = squared_gaps(sums)
    return (count * u).sum(-1) / n / classes


def shrunk_world(index: Tensor, residual: Tensor, total_bins: int) -> tuple[Tensor, float]:
    """Residuals shifted within each bin so that each bin's squared gap is ``max(U_b, 0)``; returns the shifted
    residuals (as ``residual``) and the world's squared ECE ``sum_b n_b / N max(U_b, 0)`` (before dividing by
    the number of classes)."""
    sums = bin_sums(index, residual, total_bins)
    u, count = squared_gaps(sums)
    mean = sums[total_bins : 2 * total_bins] / count.clamp_min(1)
    keep = torch.where(mean != 0, u.clamp_min(0).sqrt() / mean.abs().clamp_min(1e-300), 0.0).clamp_max(1.0)
    shift = (1 - keep) * mean  # [B]
    world = (count * u.clamp_min(0)).sum() / len(residual)
    return (residual.double() - shift[index]).to(residual.dtype), float(world)


class DebiasedECE:
    """One ECE (``kind`` "conf" or "cw") of one set of predictions: its debiased estimate and the features of
    its shrunk world, ready for ``counts @ features``."""

    def __init__(self, probs: Tensor, labels: Tensor, n_bins: int, kind: str) -> None:
        index, residual, self.total_bins, self.classes = slots(probs, labels, n_bins, kind)
        self.n = len(labels)
        full = bin_sums(index, residual, self.total_bins)
        self.square = float(debiased_square(full, self.n, self.classes))  # T
        self.offset = stabilizing_offset(full, self.n, self.classes)
        shifted, world = shrunk_world(index, residual, self.total_bins)
        self.world_square = world / self.classes  # theta'
        self.features = bin_features(index, shifted, self.total_bins)

    @property
    def estimate(self) -> float:
        """The debiased l2 binned ECE ``sqrt(max(T, 0))``."""
        return max(self.square, 0.0) ** 0.5

    def resampled(self, sums: Tensor) -> Tensor:
        """``T*`` of each resample from its per-bin sums ``[R, 3 B]`` (``counts @ self.features``)."""
        return debiased_square(sums, self.n, self.classes)

    def population_draws(self, resampled: Tensor, offset: float | None = None) -> Tensor:
        """The bootstrap's stand-ins for the population l2 ECE, one per resample ``[R]``.

        On the scale ``h(x) = sqrt(x + offset)`` the resample's error ``h(T*) - h(theta')`` stands in for
        ``h(T) - h(theta)``, so ``h(theta) ~ h(T+) - (h(T*) - h(theta'))``, kept >= h(0) and mapped back.
        ``T+ = max(T, 0)``: a T below 0 (fewer misses than chance would give a calibrated model) widens the
        upper end to that of T = 0 rather than shrinking the interval to [0, 0].
        """
        c = self.offset if offset is None else offset
        h = lambda x: (torch.as_tensor(x, dtype=torch.float64) + c).clamp_min(0).sqrt()  # noqa: E731
        floor = h(0.0)
        stand_in = torch.maximum(h(max(self.square, 0.0)) - (h(resampled) - h(self.world_square)), floor)
        return ((stand_in - floor) * (stand_in + floor)).sqrt()  # exactly 0 at the floor


def stabilizing_offset(sums: Tensor, n: int, classes: int) -> float:
    """``c / a`` where ``Var(T) ~ a theta + c``: ``sqrt(T + c / a)`` has about the same spread at every theta.

    ``a = 4 / (N K^2) sum_b n_b / N sd_b^2`` (the linear part, gaps of the same size in every bin) and
    ``c = 2 / (N K^2)^2 ... = 2 / (N K)^2 sum_b n_b sd_b^4 / (n_b - 1)`` (the part left at calibration), with
    ``sd_b^2`` the bin's residual variance.
    """
    count, total, squares = sums.double().unflatten(-1, (3, -1)).unbind(-2)
    ok = count >= 2
    var = torch.where(ok, (squares - total * total / count.clamp_min(1)) / (count - 1).clamp_min(1), 0.0)
    a = 4 / (n * classes**2) * (count * var).sum() / n
    c = 2 / (n * classes) ** 2 * torch.where(ok, count * var * var / (count - 1).clamp_min(1), 0.0).sum()
    return float(c / a) if a > 0 else 0.0


def _quantiles(values: Tensor, level: float) -> tuple[float, float]:
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(values.double(), q).tolist()
    return lo, hi


def interval(ece: DebiasedECE, resampled: Tensor, level: float) -> list[float]:
    """Interval ``[lo, hi]`` for the population l2 binned ECE from the resamples' ``T*`` of ``ece``'s world."""
    return list(_quantiles(ece.population_draws(resampled), level))


def change_interval(
    before: DebiasedECE, after: DebiasedECE, resampled_before: Tensor, resampled_after: Tensor, level: float
) -> dict:
    """The change of the population l2 binned ECE, after - before, from resamples of the same questions.

    The union of two intervals. (1) Stand-ins: each resample's population stand-ins after and before
    (``population_draws``, both phases on one offset, their mean), differenced; on the ``h`` scale this is the
    paired test of "no change", which holds its level even when both phases are calibrated. (2) The basic
    pivot of ``D = sqrt(T_after+) - sqrt(T_before+)`` against ``D* - D'``, which keeps the upward bias of a
    phase at ECE 0 (its estimate cannot go below 0) that the stand-ins of (1) lose at the boundary. Either
    alone misses more than the level at one end of ``bench/coverage_bench.py``; their union covers at both.

    Returns:
        ``{"difference": debiased after - before, "ci95": [lo, hi], "excludes_zero": bool}``.
    """
    offset = (before.offset + after.offset) / 2
    draws = after.population_draws(resampled_after, offset) - before.population_draws(resampled_before, offset)
    lo, hi = _quantiles(draws, level)

    def root(x: Tensor | float) -> Tensor:
        return torch.as_tensor(x, dtype=torch.float64).clamp_min(0).sqrt()

    d = after.estimate - before.estimate
    world = float(root(after.world_square) - root(before.world_square))
    q_lo, q_hi = _quantiles(root(resampled_after) - root(resampled_before) - world, level)
    lo, hi = min(lo, d - q_hi), max(hi, d - q_lo)
    return {"difference": d, "ci95": [lo, hi], "excludes_zero": bool(lo > 0 or hi < 0)}
