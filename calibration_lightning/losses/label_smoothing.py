"""Label-smoothing fine-tuning: the paper's training-time calibration baseline."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from calibration_lightning.calibration.confidence import mask_letter_logits
from calibration_lightning.errors import is_number, require
from calibration_lightning.losses.base import LossHead, LossOutput, StepOutputs


class LabelSmoothedAnswerCE(LossHead):
    """Cross-entropy with label smoothing ``epsilon`` at the answer position.

    ``over="letters"`` (default) smooths over the row's K option letters, so the target puts
    ``1 - epsilon + epsilon / K`` on the gold letter: that is what moves letter confidence.
    ``over="vocab"`` smooths over the whole vocabulary (what a generic SFT trainer does);
    it barely changes the letter distribution.
    """

    def __init__(self, epsilon: float = 0.1, over: str = "letters") -> None:
        super().__init__()
        require("method.loss.epsilon", epsilon, is_number(epsilon) and 0.0 <= epsilon < 1.0, "must be in [0, 1)")
        require("method.loss.over", over, over in ("letters", "vocab"), "allowed: letters, vocab")
        self.epsilon, self.over = epsilon, over

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:
        if self.over == "vocab":
            loss = F.cross_entropy(out.answer_logits.float(), batch["answer_token"], label_smoothing=self.epsilon)
        else:
            logp = F.log_softmax(mask_letter_logits(out.letter_logits.float(), batch["n_choices"]), dim=-1)
            k = batch["n_choices"].to(logp.dtype)
            nll = -logp.gather(1, batch["labels"][:, None]).squeeze(1)
            uniform = -logp.masked_fill(~logp.isfinite(), 0.0).sum(dim=1) / k
            loss = ((1 - self.epsilon) * nll + self.epsilon * uniform).mean()
        return LossOutput(loss, {"sft": loss.detach()})
