"""Reviewer's independent checks of evaluate_predictions: point values against a numpy reference, and coverage
of the conf-ECE interval on populations of known ECE (accuracy = confidence - g in every bin)."""

from __future__ import annotations

import numpy as np
import pytest

from calibration_lightning import evaluate_predictions


def _population(rng, n, g, k=4, low=0.35, high=0.95):
    c = rng.uniform(low, high, n)
    correct = rng.random(n) < c - g
    top = rng.integers(k, size=n)
    probs = np.repeat(((1 - c) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), top] = c
    return probs, np.where(correct, top, (top + rng.integers(1, k, size=n)) % k)


def _reference(probs, labels, n_bins=10):
    """conf-ECE (plug-in l1) and the debiased l2 estimate: sqrt(max(0, sum_b n_b / N U_b)), U_b = 0 if n_b < 2."""
    conf = probs.max(1)
    r = (probs.argmax(1) == labels) - conf
    b = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    n_b, s, q = (np.bincount(b, w, n_bins) for w in (np.ones_like(r), r, r * r))
    ok = n_b >= 2
    t = (n_b[ok] * (s[ok] ** 2 - q[ok]) / (n_b[ok] * (n_b[ok] - 1))).sum() / len(r)
    return np.abs(s).sum() / len(r), max(t, 0.0) ** 0.5


@pytest.mark.parametrize("n", [7, 40, 240])
def test_point_values_match_numpy_reference(n):
    # n = 7 puts most questions alone in their bin (U_b undefined there: contributes 0)
    rng = np.random.default_rng(n)
    probs, labels = _population(rng, n, 0.1, low=0.3, high=0.99)
    out = evaluate_predictions(probs, labels, resamples=0)
    plug, debiased = _reference(probs, labels)
    assert out["conf_ece"] == pytest.approx(plug, abs=1e-6)
    assert out["conf_ece_debiased"] == pytest.approx(debiased, abs=1e-6)
    assert out["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels), abs=1e-7)


@pytest.mark.parametrize("g", [0.0, 0.03, 0.15])
def test_conf_ece_interval_covers_known_population_ece(g):
    rng = np.random.default_rng(int(g * 100) + 1)
    reps, covered, widths = 20, 0, []
    for rep in range(reps):
        probs, labels = _population(rng, 240, g)
        lo, hi = evaluate_predictions(probs, labels, resamples=150, seed=rep)["ci95"]["conf_ece"]
        covered += lo <= g <= hi
        widths.append(hi - lo)
    assert covered / reps >= 0.85  # measured 0.96-0.99 over 150 repetitions of 300 resamples (bench/coverage_cases.py)
    assert np.mean(widths) <= 0.18


def test_paired_change_covers_and_holds_level():
    rng = np.random.default_rng(5)
    reps, n, k = 20, 240, 4
    covered = false_alarms = 0
    for rep in range(reps):
        # one accuracy a per question; before says a + 0.15 (gap 0.15), after says a (calibrated)
        a = rng.uniform(0.3, 0.8, n)
        top = rng.integers(k, size=n)
        labels = np.where(rng.random(n) < a, top, (top + rng.integers(1, k, size=n)) % k)

        def probs(c, n=n, top=top):
            p = np.repeat(((1 - c) / (k - 1))[:, None], k, axis=1)
            p[np.arange(n), top] = c
            return p

        change = evaluate_predictions(probs(a), labels, before=probs(a + 0.15), resamples=150, seed=rep)
        lo, hi = change["improvement"]["conf_ece"]["ci95"]
        covered += lo <= -0.15 <= hi
        # nothing changed: a second calibrated model of independently drawn confidence, the same labels
        c2 = rng.uniform(0.3, 0.8, n)
        top2 = np.where(rng.random(n) < c2, labels, (labels + rng.integers(1, k, size=n)) % k)
        p2 = np.repeat(((1 - c2) / (k - 1))[:, None], k, axis=1)
        p2[np.arange(n), top2] = c2
        null = evaluate_predictions(p2, labels, before=probs(a), resamples=150, seed=rep)
        false_alarms += null["improvement"]["conf_ece"]["excludes_zero"]
    assert covered / reps >= 0.85
    assert false_alarms / reps <= 0.10
