"""Training methods, built from their config, and ``method=auto``'s rule for keeping one of several."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Method:
    """A training method as a run uses it: its loss head, optimizer settings, epochs and callbacks."""

    name: str
    loss: Any  # a LossHead
    optim: Any  # an OptimSettings
    epochs: int
    callbacks: list = field(default_factory=list)


RULE = (
    "train each candidate from the same initial adapters; among those whose validation accuracy is within "
    "regime.accuracy_tolerance of the best, keep the lowest validation conf-ECE (ties: the first listed)"
)


def choose_method(val_metrics: dict[str, dict], accuracy_tolerance: float) -> dict:
    """Apply ``RULE`` to each candidate's validation metrics (``{name: {"accuracy", "conf_ece", ...}}``).

    Returns:
        ``{"candidates": val_metrics, "eligible": [...], "chosen": name, "rule": RULE,
        "accuracy_tolerance": accuracy_tolerance}`` (written to metrics.json under ``auto``).
    """
    if not val_metrics:
        raise ValueError("no candidate to choose from")
    best = max(m["accuracy"] for m in val_metrics.values())
    eligible = [name for name, m in val_metrics.items() if m["accuracy"] >= best - accuracy_tolerance]
    chosen = min(eligible, key=lambda name: val_metrics[name]["conf_ece"])
    return {
        "candidates": val_metrics,
        "eligible": eligible,
        "chosen": chosen,
        "rule": RULE,
        "accuracy_tolerance": accuracy_tolerance,
    }
