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

from calibration_lightning.calibration.collection import CalibrationMetric
from calibration_lightning.calibration.confidence import letter_probabilities
from calibration_lightning.calibration.metrics import (
    accuracy,
    brier_score,
    classwise_ece,
    conf_ece,
    max_calibration_error,
    negative_log_likelihood,
)
from calibration_lightning.calibration.targets import rank_preserving_targets
from calibration_lightning.calibration.temperature import fit_temperature
from calibration_lightning.evaluate_predictions import evaluate_predictions
from calibration_lightning.outputs.diagrams import reliability_diagram

__all__ = [
    "CalibrationMetric",
    "accuracy",
    "brier_score",
    "classwise_ece",
    "conf_ece",
    "evaluate_predictions",
    "fit_temperature",
    "letter_probabilities",
    "max_calibration_error",
    "negative_log_likelihood",
    "rank_preserving_targets",
    "reliability_diagram",
]
__version__ = "0.1.0"
