"""``method=auto``: train every candidate method and keep the one the validation split prefers."""

from __future__ import annotations

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
