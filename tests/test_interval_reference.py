"""Independent checks of evaluate_predictions: point values against a numpy reference and against
``uncertainty-calibration`` (Kumar, Liang and Ma 2019), intervals against a brute-force numpy reimplementation of
their definition on the same resamples, and every printed value inside its printed interval in the shape of the
default model's "before" (nearly every answer "A")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration_lightning import evaluate_predictions
from calibration_lightning.calibration import intervals
from calibration_lightning.calibration.bootstrap import quantile_interval
from calibration_lightning.calibration.debiased import ece_interval


def _population(rng, n, g, k=4, low=0.35, high=0.95):
    c = rng.uniform(low, high, n)
    correct = rng.random(n) < c - g
    top = rng.integers(k, size=n)
    probs = np.repeat(((1 - c) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), top] = c
    return probs, np.where(correct, top, (top + rng.integers(1, k, size=n)) % k)


def _bins(values, n_bins=10):
    return np.clip(np.floor(values * n_bins).astype(int), 0, n_bins - 1)


def _reference(probs, labels, n_bins=10):
    """conf-ECE (plug-in l1) and the debiased l2 estimate: sqrt(max(0, sum_b n_b / N U_b)), U_b = 0 if n_b < 2."""
    conf = probs.max(1)
    r = (probs.argmax(1) == labels) - conf
    n_b, s, q = (np.bincount(_bins(conf), w, n_bins) for w in (np.ones_like(r), r, r * r))
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


def test_debiased_estimates_equal_uncertainty_calibrations_on_the_same_bins():
    """Three probability rows repeated: every class's probabilities (and the top-label confidence) take one value
    per equal-width bin, so the package's discrete bins are ours; labels from a flatter distribution (the model is
    overconfident) so that every class's squared error is positive (the package clamps each class at 0)."""
    calibration = pytest.importorskip("calibration")
    rows = np.array([[0.65, 0.15, 0.12, 0.08], [0.25, 0.55, 0.02, 0.18], [0.05, 0.28, 0.45, 0.22]])
    rng = np.random.default_rng(0)
    probs = rows[np.repeat(np.arange(3), 100)]
    flat = np.sqrt(probs) / np.sqrt(probs).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in flat])
    out = evaluate_predictions(probs, labels, resamples=0)
    assert out["conf_ece_debiased"] == pytest.approx(
        calibration.get_calibration_error(probs, labels, p=2, debias=True, mode="top-label"), abs=1e-9
    )
    assert out["cw_ece_debiased"] == pytest.approx(
        calibration.get_calibration_error(probs, labels, p=2, debias=True, mode="marginal"), abs=1e-9
    )


def test_on_varying_confidences_the_estimates_differ_by_the_confidence_spread_term():
    """Within a bin of varying confidence, uncertainty-calibration subtracts the label variance / (n - 1); the
    U-statistic here subtracts the residual variance / (n - 1), which adds var(c) - 2 cov(y, c) (it is unbiased
    for the squared mean residual where the package's is not). Their lower-level function on our bins."""
    from calibration.utils import unbiased_square_ce

    rng = np.random.default_rng(1)
    probs, labels = _population(rng, 300, 0.08)
    conf, hit = probs.max(1), (probs.argmax(1) == labels).astype(float)
    b = _bins(conf)
    binned = [np.stack([conf[b == j], hit[b == j]], 1) for j in range(10) if (b == j).any()]
    correction = 0.0
    for data in binned:
        if len(data) >= 2:
            c, y = data[:, 0], data[:, 1]
            extra = c.var() - 2 * np.mean((c - c.mean()) * (y - y.mean()))
            correction += len(data) / len(conf) * extra / (len(data) - 1)
    ours = evaluate_predictions(probs, labels, resamples=0)["conf_ece_debiased"] ** 2
    assert ours == pytest.approx(unbiased_square_ce(binned) - correction, abs=1e-12)


def test_the_interval_equals_a_brute_force_inversion_on_the_same_resamples():
    """The package's conf-ECE interval against its definition computed here in numpy: the thetas whose world
    (each bin's residuals r - m_b scaled by sqrt(n_b / (n_b - 1)), plus theta u_b) holds max(T, 0) inside the
    central 95% of the resamples' T*, each T* a pairwise U-statistic of the drawn list, on a grid of step 0.002."""
    rng = np.random.default_rng(3)
    probs, labels = _population(rng, 60, 0.1)
    n, resamples = 60, 300
    ((r,),) = [intervals.resample([(torch.tensor(probs), torch.tensor(labels))], 10, resamples, seed=4)]
    lo, hi = ece_interval(r.eces["conf_ece_debiased"], 0.95)
    drawn = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(4)).numpy()
    conf = probs.max(1)
    res, b = (probs.argmax(1) == labels) - conf, _bins(conf)
    count = np.bincount(b, minlength=10)
    mean = np.bincount(b, res, 10) / np.maximum(count, 1)
    u = mean / np.sqrt((count / n * mean**2).sum())
    scale = np.sqrt(count / np.maximum(count - 1, 1))

    def square(x, bins):  # T of each row's list of residuals x [R, n] in its bins [R, n]
        flat = (bins + 10 * np.arange(len(bins))[:, None]).ravel()
        k, s, q = (np.bincount(flat, w.ravel(), 10 * len(bins)).reshape(-1, 10) for w in (np.ones_like(x), x, x * x))
        return (k * np.where(k >= 2, (s * s - q) / np.maximum(k * (k - 1), 1), 0)).sum(1) / n

    observed = max(square(res[None], b[None])[0], 0.0)
    accepted = []
    for theta in np.arange(0, 0.6, 0.002):
        world = scale[b] * (res - mean[b]) + theta * u[b]
        q_lo, q_hi = np.quantile(square(world[drawn], b[drawn]), [0.025, 0.975])
        if q_lo <= observed <= q_hi:
            accepted.append(theta)
    assert lo == pytest.approx(min(accepted), abs=0.0025) and hi == pytest.approx(max(accepted), abs=0.0025)


def test_a_percentile_interval_is_numpys_on_the_same_resamples():
    rng = np.random.default_rng(5)
    probs, labels = _population(rng, 80, 0.05)
    out = evaluate_predictions(probs, labels, resamples=400, seed=6)
    drawn = torch.randint(80, (400, 80), generator=torch.Generator().manual_seed(6)).numpy()
    hits = (probs.argmax(1) == labels).astype(float)
    expected = np.quantile(hits[drawn].mean(1), [0.025, 0.975])
    assert out["ci95"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert quantile_interval(torch.tensor(hits[drawn].mean(1)), 0.95) == pytest.approx(expected, abs=1e-12)


def _collapsed(rng, n=240):
    """The default model before training: nearly every answer "A" at 0.35-0.75, accuracy about 0.25."""
    c = rng.uniform(0.35, 0.75, n)
    top = np.where(rng.random(n) < 0.95, 0, rng.integers(1, 4, n))
    probs = np.repeat(((1 - c) / 3)[:, None], 4, axis=1)
    probs[np.arange(n), top] = c
    return probs, rng.integers(0, 4, n)


def test_every_printed_value_lies_inside_its_printed_interval_in_the_collapsed_shape():
    rng = np.random.default_rng(7)
    for rep in range(6):
        before, labels = _collapsed(rng)
        after = np.exp(np.log(before) / 3)
        after /= after.sum(1, keepdims=True)  # temperature 3: calibrated at about the same accuracy
        out = evaluate_predictions(after, labels, before=before, seed=rep)
        for name, ci in out["ci95"].items():
            assert ci[0] <= out[name] <= ci[1], (rep, name)
        for name, d in out["improvement"].items():
            if d["ci95"] is not None:
                assert d["ci95"][0] <= d["difference"] <= d["ci95"][1], (rep, name)
        assert set(out["ci95"]) == {"accuracy", "brier", "nll", "conf_ece_debiased", "cw_ece_debiased"}
