"""calibration_lightning: measure and restore the calibration of preference-aligned LLMs.

Pure functions users import directly::

    from calibration_lightning import conf_ece, classwise_ece, rank_preserving_targets, fit_temperature
    from calibration_lightning import evaluate_predictions  # any tool's predictions: metrics and intervals
"""

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

__all__ = [
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
]
__version__ = "0.1.0"
