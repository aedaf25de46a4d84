"""Independent coverage check of evaluate_predictions' debiased conf-ECE / cw-ECE intervals (reviewer's script).

Populations are drawn by a generator whose population binned ECE is computed here, from a 2e6-question draw with
an unbiased within-bin U-statistic (numpy only), so nothing of the package is reused for the reference. The
"collapsed" cell checks that every printed value (each metric and each change) lies inside its printed interval.
Usage: python bench/coverage_cases.py CELL [CELL ...] [--reps R] [--resamples B]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from calibration_lightning import evaluate_predictions

torch.set_num_threads(1)


def draw(rng, n, k, conf, gap):
    """conf(rng, n) -> top-label confidences; accuracy in the question's situation is conf - gap(conf)."""
    c = conf(rng, n)
    correct = rng.random(n) < c - gap(c)
    top = rng.integers(k, size=n)
    probs = np.repeat(((1 - c) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), top] = c
    other = (top + rng.integers(1, k, size=n)) % k
    labels = np.where(correct, top, other)
    return probs, labels


def binned(values, resid, n_bins=10):
    """Per bin (equal width, last closed): count, sum r, sum r^2."""
    b = np.clip(np.floor(values * n_bins).astype(int), 0, n_bins - 1)
    return (np.bincount(b, minlength=n_bins), np.bincount(b, resid, n_bins), np.bincount(b, resid**2, n_bins))


def ref_l1_l2(probs, labels, kind="conf", n_bins=10):
    """(plug-in l1, debiased-squared l2 U-stat, sqrt) computed in plain numpy."""
    n, k = probs.shape
    if kind == "conf":
        cols = [(probs.max(1), (probs.argmax(1) == labels).astype(float))]
    else:
        cols = [(probs[:, j], (labels == j).astype(float)) for j in range(k)]
    l1 = t = 0.0
    for p, y in cols:
        cnt, s, q = binned(p, y - p, n_bins)
        l1 += np.abs(s).sum() / n
        ok = cnt >= 2
        t += (cnt[ok] * (s[ok] ** 2 - q[ok]) / (cnt[ok] * (cnt[ok] - 1))).sum() / n
    return l1 / len(cols), t / len(cols)


def population(gen, kind):
    rng = np.random.default_rng(12345)
    p, y = gen(rng, 2_000_000)
    c, _ = ref_l1_l2(p, y, kind)
    # population l1: sum_b P(b)|delta_b| -- at 2e6 the plug-in bias is < 1e-3
    _, t = ref_l1_l2(p, y, kind)
    return c, max(t, 0) ** 0.5


def U(a, b):
    return lambda rng, n: rng.uniform(a, b, n)


def const(g):
    return lambda c: np.full_like(c, g)


CELLS = {
    # name: (N, K, conf sampler, gap function)
    "g0": (240, 4, U(0.35, 0.95), const(0.0)),
    "g03": (240, 4, U(0.35, 0.95), const(0.03)),
    "g15": (240, 4, U(0.35, 0.95), const(0.15)),
    "onebin_g0": (240, 4, U(0.71, 0.79), const(0.0)),
    "onebin_g05": (240, 4, U(0.71, 0.79), const(0.05)),
    "strong": (240, 4, U(0.85, 1.0), const(0.05)),
    "k2_g0": (240, 2, U(0.5, 0.99), const(0.0)),
    "k2_g1": (240, 2, U(0.6, 0.99), const(0.1)),
    "k26_g0": (240, 26, U(0.1, 0.9), const(0.0)),
    "k26_g1": (240, 26, U(0.15, 0.9), const(0.1)),
    "n30_g0": (30, 4, U(0.35, 0.95), const(0.0)),
    "n30_g15": (30, 4, U(0.35, 0.95), const(0.15)),
    "n50_g0": (50, 4, U(0.35, 0.95), const(0.0)),
    "n50_g03": (50, 4, U(0.35, 0.95), const(0.03)),
    "n50_g15": (50, 4, U(0.35, 0.95), const(0.15)),
    "c99_n30": (30, 4, lambda rng, n: np.full(n, 0.99), const(0.0)),
    "c99_n240": (240, 4, lambda rng, n: np.full(n, 0.99), const(0.0)),
    "hi_n240": (240, 4, U(0.95, 1.0), const(0.0)),
    "hi_n50": (50, 4, U(0.95, 1.0), const(0.0)),
    "n30_k26": (30, 26, U(0.1, 0.9), const(0.0)),
    # gap 0 below 0.6, 0.2 from 0.6: l1 = 0.2 P, l2 = 0.2 sqrt(P)
    "step": (240, 4, U(0.35, 0.95), lambda c: np.where(c >= 0.6, 0.2, 0.0)),
    # gap 0.1 in bins <0.6 is large in one small bin only
    "spike": (240, 4, U(0.35, 0.95), lambda c: np.where((c >= 0.9), 0.3, 0.0)),
    # overconfident in 0.4-0.6, underconfident in 0.7-0.9 (opposite signs)
    "opposite": (
        240,
        4,
        lambda rng, n: np.where(rng.random(n) < 0.5, rng.uniform(0.4, 0.6, n), rng.uniform(0.7, 0.9, n)),
        lambda c: np.where(c < 0.65, 0.08, -0.08),
    ),
}


def run_cell(name, reps, resamples):
    n, k, conf, gap = CELLS[name]
    gen = lambda rng, m: draw(rng, m, k, conf, gap)  # noqa: E731
    l1, l2 = population(gen, "conf")
    _, cw2 = population(gen, "cw")
    rng = np.random.default_rng(sum(map(ord, name)))
    cov = cov_l1 = cov_cw = excl_own = nulls = 0
    widths, cw_widths = [], []
    max_ref_err = 0.0
    for r in range(reps):
        p, y = draw(rng, n, k, conf, gap)
        out = evaluate_predictions(p, y, resamples=resamples, seed=r)
        ci, d = out["ci95"]["conf_ece_debiased"], out["conf_ece_debiased"]
        cw_ci = out["ci95"]["cw_ece_debiased"]
        pl1, t = ref_l1_l2(p, y)
        max_ref_err = max(max_ref_err, abs(pl1 - out["conf_ece"]), abs(max(t, 0) ** 0.5 - d))
        if ci is None or cw_ci is None:
            nulls += 1
            continue
        lo, hi = ci
        cov += lo <= l2 <= hi
        cov_l1 += lo <= l1 <= hi
        widths.append(hi - lo)
        excl_own += not (lo <= d <= hi)
        cov_cw += cw_ci[0] <= cw2 <= cw_ci[1]
        cw_widths.append(cw_ci[1] - cw_ci[0])
    done = max(reps - nulls, 1)
    print(
        f"{name:12s} N={n:4d} K={k:2d} l1={l1:.4f} l2={l2:.4f} cov_l2={cov / done:.3f} cov_l1={cov_l1 / done:.3f} "
        f"width={np.mean(widths or [np.nan]):.3f} point_out={excl_own} nulls={nulls} | "
        f"cw_l2={cw2:.4f} cov_cw={cov_cw / done:.3f} cw_width={np.mean(cw_widths or [np.nan]):.3f} | "
        f"ref_err={max_ref_err:.1e}",
        flush=True,
    )


def paired_cell(name, reps, resamples, n=240, k=4):
    """change: before g_b, after g_a on the same questions (shared correctness uniform when independent)."""
    rng = np.random.default_rng(7)
    hits = excl = point_out = 0
    widths = []
    true = {"drop15": -0.15, "null0": 0.0, "null03": 0.0, "null15": 0.0, "same0": 0.0}[name]
    for r in range(reps):
        top = rng.integers(k, size=n)
        other = (top + rng.integers(1, k, size=n)) % k
        u = rng.random(n)
        if name == "drop15":  # one accuracy per question; before says a + 0.15, after says a
            a = rng.uniform(0.3, 0.8, n)
            correct = u < a
            cb, ca, topb, topa = a + 0.15, a, top, top
            labels = np.where(correct, top, other)
        else:
            g = {"null0": 0.0, "null03": 0.03, "null15": 0.15, "same0": 0.0}[name]
            cb = rng.uniform(0.35, 0.95, n)
            ca = cb.copy() if name == "same0" else rng.uniform(0.35, 0.95, n)
            # correct before: u < cb - g; after: u < ca - g; labels must agree, so choose after's top option
            labels = np.where(u < cb - g, top, other)
            ok_a = u < ca - g
            topb = top
            # after predicts the label when correct, else some option != label
            wrong = (labels + rng.integers(1, k, size=n)) % k
            topa = np.where(ok_a, labels, wrong)

        def probs(c, t):
            p = np.repeat(((1 - c) / (k - 1))[:, None], k, axis=1)
            p[np.arange(n), t] = c
            return p

        out = evaluate_predictions(probs(ca, topa), labels, before=probs(cb, topb), resamples=resamples, seed=r)
        imp = out["improvement"]["conf_ece_debiased"]
        if imp["ci95"] is None:  # the same predictions before and after: no interval
            continue
        lo, hi = imp["ci95"]
        hits += lo <= true <= hi
        excl += imp["excludes_zero"]
        point_out += not (lo <= imp["difference"] <= hi)
        widths.append(hi - lo)
    print(
        f"paired {name:8s} true={true:+.2f} cov={hits / reps:.3f} excludes_zero={excl / reps:.3f} "
        f"width={np.mean(widths):.3f} difference_out={point_out / reps:.2f}",
        flush=True,
    )


def collapsed_cell(reps, resamples, n=240):
    """The default model's "before" (nearly every answer "A" at 0.35-0.75, accuracy 0.25) and a temperature-3
    "after": the share of samples in which some printed value lies outside its printed interval."""
    rng = np.random.default_rng(28)
    outside = 0
    for r in range(reps):
        c = rng.uniform(0.35, 0.75, n)
        top = np.where(rng.random(n) < 0.95, 0, rng.integers(1, 4, n))
        before = np.repeat(((1 - c) / 3)[:, None], 4, axis=1)
        before[np.arange(n), top] = c
        after = np.exp(np.log(before) / 3)
        after /= after.sum(1, keepdims=True)
        out = evaluate_predictions(after, rng.integers(0, 4, n), before=before, resamples=resamples, seed=r)
        pairs = [(out[m], ci) for m, ci in out["ci95"].items()]
        pairs += [(d["difference"], d["ci95"]) for d in out["improvement"].values()]
        outside += any(ci is not None and not ci[0] <= v <= ci[1] for v, ci in pairs)
    print(f"collapsed    N={n} samples with a printed value outside its interval: {outside} of {reps}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--reps", type=int, default=150)
    ap.add_argument("--resamples", type=int, default=400)
    a = ap.parse_args()
    for c in a.cells:
        t0 = time.time()
        if c == "collapsed":
            collapsed_cell(a.reps, a.resamples)
        else:
            (paired_cell if c in ("drop15", "null0", "null03", "null15", "same0") else run_cell)(c, a.reps, a.resamples)
        print(f"  ({time.time() - t0:.0f}s)", flush=True)
