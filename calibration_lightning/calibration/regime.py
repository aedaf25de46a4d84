"""The regime diagnosis: a report of how much miscalibration a confidence-only fix removes (``docs/methods.md``).

It decides nothing (``method=auto`` trains both candidates); ``ece_lower_bound = |accuracy - mean confidence|``
always holds, the ECE being a weighted mean of per-bin gaps whose signed weighted sum is that difference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index, binned_sums
from calibration_lightning.calibration.metrics import bin_statistics, top_label


def recalibrated_ece(val_probs: Tensor, val_labels: Tensor, probs: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    """ECE of ``probs`` after histogram binning fitted on the val split, per original confidence bin:
    ``sum_b n_b / N * |acc_test(b) - acc_val(b)|`` (a bin empty on val keeps its confidences). Re-binning the
    recalibrated values instead would let the errors of different original bins cancel."""
    val_acc, val_count = bin_statistics(val_probs, val_labels, n_bins)
    conf, hit = top_label(probs, labels)
    idx = bin_index(conf, n_bins)
    count = binned_sums(idx, torch.ones_like(conf), n_bins)
    mapped = torch.where(val_count > 0, val_acc * count, binned_sums(idx, conf, n_bins))  # recalibrated sums
    return float((binned_sums(idx, hit, n_bins) - mapped).abs().sum() / max(len(conf), 1))


def sampling_floor(fit_probs: Tensor, fit_labels: Tensor, probs: Tensor, n_bins: int = 10) -> float:
    """The recalibrated ECE a perfectly recalibratable model would still show from finite samples: per bin, the
    expected |difference| of two accuracy estimates, ``sqrt(2/pi) * sqrt(a_b (1 - a_b) (1/n_b + 1/m_b))``,
    weighted by n_b / N (m_b: the bin's fit questions)."""
    acc, fit_count = bin_statistics(fit_probs, fit_labels, n_bins)
    idx = bin_index(probs.max(dim=1).values, n_bins)
    count = binned_sums(idx, torch.ones(len(idx), dtype=acc.dtype), n_bins)
    used = (count > 0) & (fit_count > 0)
    var = acc * (1 - acc) * (1 / count.clamp_min(1) + 1 / fit_count.clamp_min(1))
    per_bin = math.sqrt(2 / math.pi) * var.sqrt() * count / max(len(idx), 1)
    return float(per_bin[used].sum())


def diagnose(
    val_probs: Tensor,
    val_labels: Tensor,
    test_probs: Tensor,
    test_labels: Tensor,
    test_metrics: dict,
    n_bins: int = 10,
    tolerance: float = 0.05,
) -> dict:
    """metrics.json ``regime``: ``calibratable`` when ``recalibrated_ece <= tolerance + sampling_floor``;
    ``test_metrics``: the test split's reported metrics (its accuracy and conf-ECE are not computed again)."""
    accuracy, mean_conf = test_metrics["accuracy"], float(test_probs.max(dim=1).values.mean())
    recalibrated = recalibrated_ece(val_probs, val_labels, test_probs, test_labels, n_bins)
    floor = sampling_floor(val_probs, val_labels, test_probs, n_bins)
    return {
        "accuracy": accuracy,
        "mean_confidence": mean_conf,
        "ece_lower_bound": abs(accuracy - mean_conf),
        "ece": test_metrics["conf_ece"],
        "recalibrated_ece": recalibrated,
        "sampling_floor": floor,
        "tolerance": tolerance,
        "verdict": "calibratable" if recalibrated <= tolerance + floor else "non-calibratable",
        "rule": "calibratable iff the ECE left after histogram binning (fit on val, applied to test) "
        "<= tolerance + sampling_floor",
    }
