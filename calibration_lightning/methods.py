"""Training methods, built from their config, and ``method=auto``'s rule for keeping one of several."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from calibration_lightning.calibration.metrics import METRICS
from calibration_lightning.errors import require

HIGHER_IS_BETTER = ("accuracy",)


@dataclass
class Selection:
    """``method.select``: choose the training length on the validation split.

    Validation runs after every epoch; training stops once ``monitor`` has not improved by more than
    ``min_delta`` for ``patience`` epochs (Lightning's EarlyStopping), and the adapters of the best epoch
    (improvements of at most ``min_delta`` do not count) are the ones kept and reported.
    """

    monitor: str = "val/nll"
    min_delta: float = 0.01
    patience: int = 1

    def __post_init__(self) -> None:
        allowed = [f"val/{name}" for name in METRICS]
        require("method.select.monitor", self.monitor, self.monitor in allowed, f"allowed: {', '.join(allowed)}")
        require("method.select.min_delta", self.min_delta, self.min_delta >= 0, "must be a number >= 0")
        require("method.select.patience", self.patience, self.patience >= 1, "must be an integer >= 1")

    @property
    def mode(self) -> str:
        return "max" if self.monitor.removeprefix("val/") in HIGHER_IS_BETTER else "min"


@dataclass
class Method:
    """A training method as a run uses it: its loss head, optimizer settings, epochs (the most, with
    ``select``), callbacks and training-length selection (None: train ``epochs``, keep the last adapters)."""

    name: str
    loss: Any  # a LossHead
    optim: Any  # an OptimSettings
    epochs: int
    callbacks: list = field(default_factory=list)
    select: Selection | None = None


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
