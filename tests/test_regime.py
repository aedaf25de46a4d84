"""The regime diagnosis: its always-valid bound, histogram binning, and both verdicts."""

import pytest
import torch

from calibration_lightning.calibration.metrics import bin_statistics, conf_ece
from calibration_lightning.calibration.regime import diagnose as _diagnose


def diagnose(val_p, val_y, test_p, test_y, n_bins=10, tolerance=0.05):
    """The diagnosis with the test split's reported accuracy and conf-ECE, computed here independently."""
    accuracy = float((test_p.argmax(1) == test_y).double().mean())
    reported = {"accuracy": accuracy, "conf_ece": float(conf_ece(test_p, test_y, n_bins))}
    return _diagnose(val_p, val_y, test_p, test_y, reported, n_bins, tolerance)


def _rows(conf, correct, k=4):
    """Rows whose top option (index 0) has probability ``conf``; label 0 when ``correct`` else 1."""
    probs = torch.tensor([[c] + [(1 - c) / (k - 1)] * (k - 1) for c in conf])
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


def test_lower_bound_and_histogram_binning_by_hand():
    probs, labels = _rows([0.95, 0.95, 0.65, 0.65], [True, False, True, True])
    d = diagnose(probs, labels, probs, labels, n_bins=10, tolerance=0.05)
    assert d["accuracy"] == pytest.approx(0.75) and d["mean_confidence"] == pytest.approx(0.8)
    assert d["ece_lower_bound"] == pytest.approx(0.05) and d["ece"] >= d["ece_lower_bound"] - 1e-9
    # bin 9 (0.95) holds 1 of 2 correct, bin 6 (0.65) 2 of 2: binning maps confidences to 0.5 and 1.0
    accuracy, count = bin_statistics(probs, labels)
    assert (accuracy[9], count[9], accuracy[6], count[6]) == (0.5, 2, 1.0, 2) and count.sum() == 4
    assert d["recalibrated_ece"] == pytest.approx(0.0, abs=1e-9)


def test_verdicts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 4, generator=g) * 2
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    over = torch.softmax(logits * 3, -1)  # overconfident, but a monotone map of confidence fixes it
    d = diagnose(over[:10000], labels[:10000], over[10000:], labels[10000:])
    assert d["ece"] > 0.1 and d["verdict"] == "calibratable"
    # on held-out data the same confidences mean the opposite: no recalibration fitted on val can help
    val_p, val_y = _rows([0.95] * 500, [True] * 500)
    test_p, test_y = _rows([0.95] * 500, [False] * 500)
    d = diagnose(val_p, val_y, test_p, test_y)
    assert d["recalibrated_ece"] == pytest.approx(1.0) and d["verdict"] == "non-calibratable"


def test_recalibrated_ece_is_per_original_bin():
    """Val accuracies 0.52 / 0.58 in bins 5 and 6, test 0.42 / 0.68: binning errs by 0.10 in each bin.

    Re-binning the recalibrated values (0.52 and 0.58 fall in bins 5 and 5) would let the two errors cancel.
    """
    val_p, val_y = _rows([0.55] * 50 + [0.65] * 50, [True] * 26 + [False] * 24 + [True] * 29 + [False] * 21)
    test_p, test_y = _rows([0.55] * 50 + [0.65] * 50, [True] * 21 + [False] * 29 + [True] * 34 + [False] * 16)
    d = diagnose(val_p, val_y, test_p, test_y)
    assert d["recalibrated_ece"] == pytest.approx(0.10, abs=1e-6)


def test_a_bin_empty_on_val_keeps_its_confidences():
    val_p, val_y = _rows([0.95] * 10, [True] * 9 + [False])
    test_p, test_y = _rows([0.95] * 10 + [0.45] * 10, [True] * 9 + [False] + [True] * 2 + [False] * 8)
    d = diagnose(val_p, val_y, test_p, test_y)
    # bin 9: 0.9 vs test 0.9 -> 0; bin 4 (not on val): confidence 0.45 vs accuracy 0.2 -> 0.25 on half the rows
    assert d["recalibrated_ece"] == pytest.approx(0.125, abs=1e-6)
