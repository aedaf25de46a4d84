"""calibration_lightning: measure and restore the calibration of preference-aligned LLMs.

Imported directly: the metrics (``conf_ece``, ``classwise_ece``, ...), ``rank_preserving_targets``, ``fit_temperature``,
``evaluate_predictions`` (any tool's predictions: metrics and intervals), ``reliability_diagram`` (docs/outputs.md)
and ``CalibrationMetric("conf_ece", n_bins=10)``, a torchmetrics Metric of any metric of ``calibration.metrics.METRICS``
(``update(probs [B, K], labels [B])`` per batch, gathered across processes; ``compute()`` over all batches).
"""

import importlib

# Imported when first used (PEP 562): ``python -m calibration_lightning`` and its start-up stay light, so that a
# Ctrl-C in the first second finds the command line's own handler (``__main__``), not torch being imported.
_EXPORTS = {
    "CalibrationMetric": "calibration.collection",
    "letter_probabilities": "calibration.confidence",
    **dict.fromkeys(
        ("accuracy", "brier_score", "classwise_ece", "conf_ece", "max_calibration_error", "negative_log_likelihood"),
        "calibration.metrics",
    ),
    "rank_preserving_targets": "calibration.targets",
    "fit_temperature": "calibration.temperature",
    "evaluate_predictions": "predictions",
    "reliability_diagram": "outputs.diagrams",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'calibration_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(f"calibration_lightning.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
