"""Score any tool's predictions: the block metrics.json holds for a phase, with intervals.

    from calibration_lightning import evaluate_predictions
    block = evaluate_predictions(probs, labels)                 # every metric, n, ci95
    block = evaluate_predictions(after, labels, before=before)  # ... and improvement (paired)

``python -m calibration_lightning.evaluate_predictions FILE ... [--before FILE] --out DIR`` does the same for
prediction files: a run's ``predictions_*.jsonl`` and lm-evaluation-harness ``--log_samples`` files
(``readers.py``). This is the one computation of a phase's block: a run's metrics.json is made by it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.bootstrap import bootstrap_intervals, debiased_estimates, paired_intervals
from calibration_lightning.calibration.metrics import all_metrics


def phase_metrics(probs: Tensor, labels: Tensor, n_bins: int = 10) -> dict:
    """Every metric of ``METRICS``, the debiased ECEs (``conf_ece_debiased``, ``cw_ece_debiased``) and ``n``."""
    metrics = all_metrics(probs, labels, n_bins)
    n = metrics.pop("n")
    return {**metrics, **debiased_estimates(probs, labels, n_bins), "n": n}


def _checked(probs, labels, name: str) -> tuple[Tensor, Tensor]:
    probs = torch.as_tensor(probs)
    labels = torch.as_tensor(labels)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"{name} must be [N, K] probabilities with K >= 2 options, got shape {tuple(probs.shape)}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(f"labels must be [N] = [{len(probs)}], got shape {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError(f"{name} holds no question (N = 0): no metric is defined")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if len(labels) and not bool(((labels >= 0) & (labels < probs.shape[1])).all()):
        raise ValueError(f"labels must be in [0, {probs.shape[1]}), got {labels.min().item()}..{labels.max().item()}")
    if not probs.dtype.is_floating_point:
        probs = probs.float()
    if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")
    if len(probs) and not torch.allclose(probs.double().sum(1), torch.ones(len(probs), dtype=torch.float64), atol=1e-3):
        raise ValueError(f"{name}: every row must sum to 1 (probabilities, not logits)")
    return probs, labels.long()


def evaluate_predictions(
    probs,
    labels,
    *,
    n_bins: int = 10,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    before=None,
) -> dict:
    """Every metric of one set of predictions with its interval, as a run's metrics.json holds them per phase.

    Args:
        probs: ``[N, K]`` probabilities over each question's options (rows sum to 1; zeros past a row's own
            options), a tensor or anything ``torch.as_tensor`` takes.
        labels: ``[N]`` gold option indices.
        n_bins: equal-width bins of every binned metric.
        resamples: bootstrap resamples of the questions (0: no intervals).
        level: the intervals' coverage level.
        seed: the resamples' seed; the same seed and N draw the same questions whatever is scored.
        before: ``[N, K]`` probabilities of the same questions before a change (e.g. before training).

    Returns:
        ``{metric: value, ..., "n": N, "ci95": {metric: [lo, hi]}}`` (``ci95`` when ``resamples > 0`` and
        N > 0; ``calibration.bootstrap.INTERVALS`` says what each interval is for), plus ``"improvement":
        {metric: {"difference": value - before's, "ci95": [lo, hi] or None, "excludes_zero": bool or
        None}}`` when ``before`` is given (paired: the same resampled questions before and after).
    """
    options = {"n_bins": n_bins, "resamples": resamples, "level": level, "seed": seed}
    if before is not None:
        pair = evaluate_pair(before, probs, labels, **options)
        return {**pair["after"], "improvement": pair["improvement"]}
    probs, labels = _checked(probs, labels, "probs")
    block = phase_metrics(probs, labels, n_bins)
    if resamples > 0 and len(labels) > 0:
        block["ci95"] = bootstrap_intervals(probs, labels, n_bins, resamples, seed, level)
    return block


def evaluate_pair(
    before, after, labels, *, n_bins: int = 10, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """One set before and after a change, from one paired bootstrap: what metrics.json holds for a set.

    Returns:
        ``{"before": block, "after": block, "improvement": {metric: {"difference", "ci95", "excludes_zero"}}}``,
        each block as ``evaluate_predictions`` returns it (the same values: the resamples are the same).
    """
    after, labels = _checked(after, labels, "probs")
    before, _ = _checked(before, labels, "before")
    if before.shape != after.shape:
        raise ValueError(f"before must have the shape of probs {tuple(after.shape)}, got {tuple(before.shape)}")
    blocks = {"before": phase_metrics(before, labels, n_bins), "after": phase_metrics(after, labels, n_bins)}
    change = {}
    if resamples > 0 and len(labels) > 0:
        paired = paired_intervals(before, after, labels, n_bins, resamples, seed, level)
        blocks["before"]["ci95"], blocks["after"]["ci95"] = paired["before"], paired["after"]
        change = paired["improvement"]
    improvement = {
        m: {
            "difference": blocks["after"][m] - v,
            "ci95": change.get(m, {}).get("ci95"),
            "excludes_zero": change.get(m, {}).get("excludes_zero"),
        }
        for m, v in blocks["before"].items()
        if m not in ("n", "ci95")
    }
    return {**blocks, "improvement": improvement}
