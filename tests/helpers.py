"""Components used by tests through configs (``_target_: tests.helpers...``)."""

import torch

from calibration_lightning.losses.sft import CompletionSFT


class NaNAfterSteps(CompletionSFT):
    """CompletionSFT that returns NaN from its ``steps``-th call on: a stand-in for a diverging run."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps, self.calls = steps, 0

    def forward(self, out, batch):
        self.calls += 1
        result = super().forward(out, batch)
        if self.calls > self.steps:
            result.loss = result.loss * torch.tensor(float("nan"))
        return result
