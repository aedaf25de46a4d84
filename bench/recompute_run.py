"""Recompute a run's metrics.json point values from its predictions_*.jsonl with plain numpy (reviewer's check).

Usage: python bench/recompute_run.py RUN_DIR [METRICS_JSON]   (exit 1 when any value differs by > 1e-6)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    letters = list(rows[0]["probabilities"])
    p = np.array([[r["probabilities"][c] for c in letters] for r in rows], dtype=np.float64)
    y = np.array([letters.index(r["gold"]) for r in rows])
    return p, y


def bins(v, n_bins=10):
    return np.clip(np.floor(v * n_bins).astype(int), 0, n_bins - 1)


def ece_parts(v, hit, n_bins=10):
    b, r = bins(v, n_bins), hit - v
    cnt, s, q = (np.bincount(b, w, n_bins) for w in (np.ones_like(r), r, r * r))
    l1 = np.abs(s).sum() / len(v)
    u = np.zeros(n_bins)
    ok = cnt >= 2  # a bin of one question has no unbiased squared gap: contributes 0
    u[ok] = (s[ok] ** 2 - q[ok]) / (cnt[ok] * (cnt[ok] - 1))
    return l1, (cnt * u).sum() / len(v)


def metrics(p, y):
    n, k = p.shape
    conf, pred = p.max(1), p.argmax(1)
    hit = (pred == y).astype(float)
    onehot = np.eye(k)[y]
    conf_l1, conf_t = ece_parts(conf, hit)
    cw = [ece_parts(p[:, j], onehot[:, j]) for j in range(k)]
    cw_l1, cw_t = np.mean([c[0] for c in cw]), np.mean([c[1] for c in cw])
    return {
        "accuracy": hit.mean(),
        "brier": ((p - onehot) ** 2).sum(1).mean(),
        "nll": -np.log(np.clip(p[np.arange(n), y], 1e-12, None)).mean(),
        "conf_ece": conf_l1,
        "cw_ece": cw_l1,
        "conf_ece_debiased": max(conf_t, 0) ** 0.5,
        "cw_ece_debiased": max(cw_t, 0) ** 0.5,
    }


if __name__ == "__main__":
    run = Path(sys.argv[1])
    doc = json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else run / "metrics.json").read_text())
    worst = 0.0
    for phase in ("before", "after"):
        block = doc[phase] if phase in doc else doc
        mine = metrics(*load(run / f"predictions_{phase}.jsonl"))
        for key, value in mine.items():
            err = abs(value - block[key])
            worst = max(worst, err)
            print(f"{phase:6s} {key:18s} mine={value:.9f} json={block[key]:.9f} err={err:.1e}")
    print(f"max abs err {worst:.2e}")
    sys.exit(0 if worst <= 1e-6 else 1)
