"""Calibration metrics as pure functions of probabilities (never logits), torch tensors or numpy arrays.

``probs [N, K]`` (rows summing to 1; zeros past a row's own options) with ``labels [N]`` in [0, K), or a binary
``probs [N]`` (of class 1) with 0/1 labels; ``as_inputs`` checks them, one ``ValueError`` line for anything else.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index, binned_sums

NLL_FLOOR = 1e-12


def _tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        array = np.ascontiguousarray(np.asarray(x))  # a copy only for a negative or odd stride
    except ValueError as error:  # ragged rows
        raise ValueError(f"{name} must be a tensor or an array of numbers: {error}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a tensor or an array of numbers, got dtype {array.dtype}")
    return torch.from_numpy(array)


def as_inputs(probs, labels, name: str = "probs") -> tuple[Tensor, Tensor]:
    """``(probs [N, K] float, labels [N] long)`` from a tensor or array pair, checked (``name``: what ``probs`` is
    called in an error message)."""
    probs, labels = _tensor(probs, name), _tensor(labels, "labels")
    if probs.ndim not in (1, 2) or (probs.ndim == 2 and probs.shape[1] < 2):
        raise ValueError(f"{name} must be [N, K] probabilities (K >= 2) or [N] of class 1, got {tuple(probs.shape)}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(f"labels must be [N] = [{len(probs)}] like {name}, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integer class indices (or bool), got {labels.dtype}")
    if not probs.dtype.is_floating_point or probs.dtype.itemsize < 4:
        probs = probs.float()
    labels = labels.long()
    if probs.ndim == 1:
        probs = torch.stack([1 - probs, probs], dim=1)
    k = probs.shape[1]
    if len(labels) and not bool(((labels >= 0) & (labels < k)).all()):
        raise ValueError(f"labels must be in [0, {k}), got {labels.min().item()}..{labels.max().item()}")
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()) or bool((probs > 1 + 1e-6).any()):
        raise ValueError(f"{name} must be probabilities in [0, 1] (finite)")
    if len(probs) and not bool(((probs.double().sum(1) - 1).abs() <= 1e-3).all()):
        raise ValueError(f"{name}: every row must sum to 1 (probabilities, not logits)")
    return probs, labels


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
    probs, labels = as_inputs(probs, labels)
    conf, hit = top_label(probs, labels)
    return _bin_gaps(bin_index(conf, n_bins), conf, hit, n_bins)


def bin_statistics(probs: Tensor, labels: Tensor, n_bins: int = 10) -> tuple[Tensor, Tensor]:
    """Per top-label confidence bin: accuracy and count (``[n_bins]`` each; accuracy 0 where empty)."""
    conf, hit = top_label(probs, labels)
    idx = bin_index(conf, n_bins)
    count = binned_sums(idx, torch.ones_like(conf), n_bins)
    return binned_sums(idx, hit, n_bins) / count.clamp_min(1), count


def conf_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Top-label ECE over equal-width confidence bins (the last includes 1.0), 0-dim:
    ``sum_b |B_b| / N * |acc(B_b) - mean_conf(B_b)|``."""
    gap, count = _top_label_gaps(probs, labels, n_bins)
    return (gap * count).sum() / max(len(labels), 1)


def max_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Largest |accuracy - mean confidence| over non-empty top-label bins (MCE)."""
    gap, count = _top_label_gaps(probs, labels, n_bins)
    return torch.where(count > 0, gap, torch.zeros_like(gap)).max()


def classwise_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Classwise ECE (Kull et al., 2019): per class j, the ECE of ``p_j`` against ``1[y = j]`` over all N samples
    (bins as ``conf_ece``), averaged over the K classes."""
    probs, labels = as_inputs(probs, labels)
    n, k = probs.shape
    # One pass over all N*K (p_j, y == j) pairs: class j owns bins [j*n_bins, (j+1)*n_bins).
    idx = bin_index(probs, n_bins) + torch.arange(k, device=probs.device) * n_bins
    onehot = torch.nn.functional.one_hot(labels, k).to(probs.dtype)
    gap, count = _bin_gaps(idx.flatten(), probs.flatten(), onehot.flatten(), k * n_bins)
    return (gap * count).sum() / max(n, 1) / k


def accuracy(probs: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose argmax equals the label."""
    probs, labels = as_inputs(probs, labels)
    return (probs.argmax(dim=1) == labels).to(probs.dtype).mean()


def brier_score(probs: Tensor, labels: Tensor) -> Tensor:
    """Mean over rows of ``sum_k (p_k - 1[y = k])^2`` (multiclass Brier score, range [0, 2])."""
    return brier_terms(probs, labels).mean()


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> Tensor:
    """Mean ``-log p_y`` (``nll_terms``)."""
    return nll_terms(probs, labels).mean()


def brier_terms(probs: Tensor, labels: Tensor) -> Tensor:
    """Each question's ``sum_k (p_k - 1[y = k])^2``, ``[N]``: the one Brier formula (the metric, the bootstrap
    and the learning-rate search average it)."""
    probs, labels = as_inputs(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(dim=1)


def nll_terms(probs: Tensor, labels: Tensor) -> Tensor:
    """Each question's ``-log p_y``, ``[N]``, with ``p_y`` clamped at ``NLL_FLOOR`` so that a confident miss
    stays finite: the one NLL formula (metric, bootstrap, learning-rate search)."""
    probs, labels = as_inputs(probs, labels)
    return -probs.gather(1, labels[:, None]).squeeze(1).clamp_min(NLL_FLOOR).log()


def equal_mass_ece(confidence: Tensor, correct: Tensor, n_bins: int = 10) -> Tensor:
    """ECE over equal-mass bins of ``confidence [N]`` against ``correct [N]`` (float64, 0-dim): bins of exactly
    N / n_bins sorted samples, a sample on a cut split between two bins in proportion, and samples of equal
    confidence one group of their mean correctness, so ties never depend on order."""
    order = confidence.double().argsort(stable=True)
    conf, hit = confidence.double()[order], correct.double()[order]
    n = len(conf)
    if n == 0:
        return conf.new_zeros(())
    first = torch.ones(n, dtype=torch.bool, device=conf.device)
    first[1:] = conf[1:] != conf[:-1]
    starts = first.nonzero().squeeze(1)  # atoms: runs of equal confidence, [start, end)
    ends = torch.cat([starts[1:], starts.new_tensor([n])])
    zero = conf.new_zeros(1)
    residual, hits = torch.cat([zero, (hit - conf).cumsum(0)]), torch.cat([zero, hit.cumsum(0)])
    edges = n * torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=conf.device)
    atom = torch.searchsorted(ends.double(), edges, right=True).clamp_max_(len(starts) - 1)  # the atom at each edge
    lo, hi = starts[atom], ends[atom]
    # correct - conf summed over the sorted positions [0, edge): whole atoms below, then part of the edge's atom
    below = residual[lo] + (edges - lo) * ((hits[hi] - hits[lo]) / (hi - lo) - conf[lo])
    return below.diff().abs().sum() / n


def adaptive_ece(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Top-label ECE over equal-mass confidence bins (adaptive ECE; ``equal_mass_ece`` says how ties split)."""
    probs, labels = as_inputs(probs, labels)
    conf, hit = top_label(probs, labels)
    return equal_mass_ece(conf, hit, n_bins).to(probs.dtype)


def smooth_ece(probs: Tensor, labels: Tensor) -> Tensor:
    """Smooth ECE (``relplot.smECE``, Blasiok and Nakkiran 2023) of top-label confidence against correctness; 0 for
    an empty set."""
    probs, labels = as_inputs(probs, labels)
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
    probs, labels = as_inputs(probs, labels)
    return {**{name: float(metric(name, probs, labels, n_bins)) for name in METRICS}, "n": int(labels.numel())}
