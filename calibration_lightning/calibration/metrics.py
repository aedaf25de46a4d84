"""Calibration metrics as pure functions of probabilities.

Every function takes probabilities (rows summing to 1), never logits:
``probs: Tensor[N, K]`` and integer ``labels: Tensor[N]`` in [0, K). Rows of a
dataset with fewer than K choices carry zeros in the unused columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index, binned_sums


def _check(probs: Tensor, labels: Tensor) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must be [N] = [{probs.shape[0]}], got shape {tuple(labels.shape)}")


def _bin_gaps(idx: Tensor, p: Tensor, y: Tensor, total_bins: int) -> tuple[Tensor, Tensor]:
    """Per-bin ``|mean(y) - mean(p)|`` and bin counts, for flat ``idx``, ``p`` and ``y``."""
    count = binned_sums(idx, torch.ones_like(p), total_bins)
    gap = (binned_sums(idx, y, total_bins) - binned_sums(idx, p, total_bins)).abs() / count.clamp_min(1)
    return gap, count


def top_label(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence ``max_k p_k`` and correctness (1.0 / 0.0) of the argmax, each ``[N]``."""
    conf, pred = probs.max(dim=1)
    return conf, (pred == labels).to(conf.dtype)


def _top_label_gaps(probs: Tensor, labels: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    conf, hit = top_label(probs, labels)
    return _bin_gaps(bin_index(conf, n_bins), conf, hit, n_bins)


def bin_statistics(probs: Tensor, labels: Tensor, n_bins: int = 10) -> tuple[Tensor, Tensor]:
    """Per top-label confidence bin: accuracy and count (``[n_bins]`` each; accuracy 0 where empty).

    RCFT's E-step (a_b, N_b) and the regime's histogram binning both read these.
    """
    conf, hit = top_label(probs, labels)
    idx = bin_index(conf, n_bins)
    count = binned_sums(idx, torch.ones_like(conf), n_bins)
    return binned_sums(idx, hit, n_bins) / count.clamp_min(1), count


def confidence_ece(confidence: Tensor, correct: Tensor, n_bins: int = 10) -> Tensor:
    """ECE of arbitrary confidences ``[N]`` against correctness ``[N]`` (e.g. after recalibration)."""
    gap, count = _bin_gaps(bin_index(confidence, n_bins), confidence, correct.to(confidence.dtype), n_bins)
    return (gap * count).sum() / max(len(confidence), 1)


def conf_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Top-label expected calibration error.

    Bins samples by confidence ``max_k p_k``; returns
    ``sum_b |B_b| / N * |acc(B_b) - mean_conf(B_b)|``. Empty bins add nothing.

    Args:
        probs: ``[N, K]`` probabilities.
        labels: ``[N]`` gold class indices.
        n_bins: number of equal-width bins; the last includes 1.0.

    Returns:
        0-dim tensor.
    """
    _check(probs, labels)
    return confidence_ece(*top_label(probs, labels), n_bins)


def max_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Largest |accuracy - mean confidence| over non-empty top-label bins (MCE)."""
    _check(probs, labels)
    gap, count = _top_label_gaps(probs, labels, n_bins)
    return torch.where(count > 0, gap, torch.zeros_like(gap)).max()


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Classwise ECE (Kull et al., 2019).

    For each class j, bins all N samples by ``p_j`` and compares the fraction whose
    gold label is j with the mean ``p_j`` per bin, weighted by ``|B| / N``; the K
    per-class errors are averaged. Arguments and result as ``conf_ece``: ``[N, K]`` probabilities, ``[N]`` gold
    indices, equal-width bins (the last includes 1.0); a 0-dim tensor.
    """
    _check(probs, labels)
    n, k = probs.shape
    # One pass over all N*K (p_j, y == j) pairs: class j owns bins [j*n_bins, (j+1)*n_bins).
    idx = bin_index(probs, n_bins) + torch.arange(k, device=probs.device) * n_bins
    onehot = torch.nn.functional.one_hot(labels, k).to(probs.dtype)
    gap, count = _bin_gaps(idx.flatten(), probs.flatten(), onehot.flatten(), k * n_bins)
    return (gap * count).sum() / max(n, 1) / k


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose argmax equals the label."""
    _check(probs, labels)
    return (probs.argmax(dim=1) == labels).to(probs.dtype).mean()


def brier_score(probs: Tensor, labels: Tensor) -> Tensor:
    """Mean over rows of ``sum_k (p_k - 1[y = k])^2`` (multiclass Brier score, range [0, 2])."""
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(dim=1).mean()


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean ``-log p_y``; probabilities are clamped at ``eps`` so a confident miss stays finite."""
    _check(probs, labels)
    return -probs.gather(1, labels[:, None]).clamp_min(eps).log().mean()


def equal_mass_ece(confidence: Tensor, correct: Tensor, n_bins: int = 10, counts: Tensor | None = None) -> Tensor:
    """ECE over equal-mass bins of ``confidence [N]`` against ``correct [N]``, once or for R resamples at once.

    The samples, sorted by confidence, are cut into ``n_bins`` bins of exactly ``N / n_bins`` samples each;
    a sample on a cut is split between the two bins in proportion (so N need not be a multiple of n_bins).
    Samples with equal confidence form one group whose correctness is their mean, so the value does not depend
    on how ties are ordered. ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``.

    Args:
        confidence: ``[N]`` confidences.
        correct: ``[N]`` 1.0 / 0.0.
        n_bins: number of bins.
        counts: ``[R, N]`` how many times each sample is drawn in each of R resamples (the bootstrap), or None
            for each sample once.

    Returns:
        0-dim tensor (``counts`` None) or ``[R]``.
    """
    conf, hit = confidence.double(), correct.double()
    n = len(conf)
    if n == 0:
        return conf.new_zeros(()) if counts is None else conf.new_zeros(len(counts))
    weights = conf.new_ones(1, n) if counts is None else counts
    if not bool((conf[1:] >= conf[:-1]).all()):  # the bootstrap passes its samples already sorted
        order = conf.argsort(stable=True)
        conf, hit, weights = conf[order], hit[order], weights.index_select(1, order)
    # In the dtype of the counts (float32 in the bootstrap: half the memory traffic of float64); CPU cumsum
    # accumulates float32 in double, so each running sum is exact to float32 rounding.
    upper = weights.cumsum(1)  # sample i covers the sorted positions [upper_i - w_i, upper_i)
    residual = (weights * (hit - conf).to(weights.dtype)).cumsum(1)  # running sum of correct - conf
    # Atoms: runs of equal confidence (one sample each when there are no ties), by first and last sample.
    first = torch.ones(n, dtype=torch.bool, device=conf.device)
    first[1:] = conf[1:] != conf[:-1]
    starts = first.nonzero().squeeze(1)
    ends = torch.cat([starts[1:] - 1, starts.new_tensor([n - 1])])
    atom_upper = upper if len(starts) == n else upper[:, ends]
    total = upper[:, -1:]
    edges = total * torch.linspace(0, 1, n_bins + 1, dtype=upper.dtype, device=conf.device)  # [R, n_bins + 1]
    atom = torch.searchsorted(atom_upper, edges, right=True).clamp_max_(len(starts) - 1)  # the atom at each edge
    first_i, last_i = starts[atom], ends[atom]

    def before_atom(cum: Tensor) -> Tensor:  # running sum up to the atom's first sample, excluded
        return torch.where(first_i > 0, cum.gather(1, (first_i - 1).clamp_min(0)), 0.0)

    lower = before_atom(upper)
    mass = upper.gather(1, last_i) - lower
    if len(starts) == n:
        atom_hit = hit[last_i]
    else:
        hits = (weights * hit.to(weights.dtype)).cumsum(1)
        atom_hit = (hits.gather(1, last_i) - before_atom(hits)) / mass.clamp_min(1e-30)
    # correct - conf summed over the sorted positions [0, edge): whole atoms below, then part of the edge's atom
    below = before_atom(residual).double() + (edges - lower).double() * (atom_hit.double() - conf[last_i])
    ece = below.diff(dim=1).abs().sum(1) / total.squeeze(1).double()
    return ece[0] if counts is None else ece


def adaptive_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Top-label ECE over equal-mass confidence bins (adaptive ECE; ``equal_mass_ece`` says how ties split)."""
    _check(probs, labels)
    conf, hit = top_label(probs, labels)
    return equal_mass_ece(conf, hit, n_bins).to(probs.dtype)


def smooth_ece(probs: Tensor, labels: Tensor) -> Tensor:
    """Smooth ECE (smECE, Blasiok and Nakkiran 2023) of top-label confidence against correctness.

    ``relplot.smECE``: kernel smoothing of the residuals ``conf - correct`` with a reflected Gaussian kernel
    whose bandwidth is chosen as the fixed point sigma = smECE_sigma; defined for any N >= 1 and for
    confidences of exactly 0 and 1. 0 for an empty set.
    """
    _check(probs, labels)
    if labels.numel() == 0:
        return probs.new_zeros(())
    from relplot import smECE  # imports pandas and seaborn: only when the metric is computed

    conf, hit = top_label(probs, labels)
    value = smECE(conf.double().cpu().numpy(), hit.double().cpu().numpy())
    return torch.tensor(float(value), dtype=probs.dtype, device=probs.device)


# Every reported metric, by the name used in logs, metrics.json and tables: (function, takes n_bins).
METRICS = {
    "conf_ece": (conf_ece, True),
    "cw_ece": (classwise_ece, True),
    "accuracy": (accuracy, False),
    "brier": (brier_score, False),
    "nll": (negative_log_likelihood, False),
    "mce": (max_calibration_error, True),
    "adaptive_ece": (adaptive_ece, True),
    "smooth_ece": (smooth_ece, False),
}


def metric(name: str, probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """The metric ``name`` of ``METRICS``."""
    fn, binned = METRICS[name]
    return fn(probs, labels, n_bins) if binned else fn(probs, labels)


def all_metrics(probs: Tensor, labels: Tensor, n_bins: int = 10) -> dict[str, float]:
    """Every reported metric as plain floats, plus the sample count ``n``."""
    return {**{name: float(metric(name, probs, labels, n_bins)) for name in METRICS}, "n": int(labels.numel())}
