"""calibration_lightning: measure and restore the calibration of preference-aligned LLMs.

Pure functions users import directly::

    from calibration_lightning import conf_ece, classwise_ece, rank_preserving_targets, fit_temperature
    from calibration_lightning import evaluate_predictions  # any tool's predictions: metrics and intervals

A reliability diagram from arrays (torch or numpy; ``[N, K]``, or ``[N]`` for a binary problem), drawn as a run
draws its own, written as .png, .pdf or .svg::

    from calibration_lightning import reliability_diagram
    fig = reliability_diagram(probs, labels, n_bins=10, title="my model, ARC-Challenge", path="reliability.pdf")

A torchmetrics ``Metric`` for any metric of ``calibration.metrics.METRICS``, accumulated over batches (and
gathered across processes) like any torchmetrics metric::

    from calibration_lightning import CalibrationMetric
    ece = CalibrationMetric("conf_ece", n_bins=10)
    for probs, labels in batches:  # probs [B, K]: softmax over the option letters; labels [B]
        ece.update(probs, labels)
    ece.compute()  # the conf-ECE of all batches together (a 0-dim tensor)
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
