"""Post-hoc calibrators: fitted on validation letter logits, applied to every evaluation set."""

from __future__ import annotations

from torch import Tensor

from calibration_lightning.calibration.temperature import fit_temperature


class TemperatureScaler:
    """Temperature scaling as a run component (``method=ts``)."""

    def __init__(self) -> None:
        self.temperature = 1.0

    def fit(self, logits: Tensor, labels: Tensor) -> dict:
        self.temperature = fit_temperature(logits, labels)
        return {"temperature": self.temperature}

    def transform(self, logits: Tensor) -> Tensor:
        return logits / self.temperature  # -inf entries stay -inf
