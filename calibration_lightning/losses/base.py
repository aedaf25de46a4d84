"""The interface every loss head implements."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class StepOutputs:
    """What one forward pass gives a loss head; the ``token_*`` fields only when the head sets ``full_sequence``."""

    answer_logits: Tensor  # [B, V] logits at the last prompt position (where the letter is predicted)
    letter_logits: Tensor  # [B, K] those logits at the K letter tokens; absent options are -inf
    letter_probs: Tensor  # [B, K] softmax of letter_logits (float32)
    token_logits: Tensor | None = None  # [B, T, V] logits at every position of prompt + answer letter
    token_ids: Tensor | None = None  # [B, T] the prompt + answer ids behind token_logits
    token_mask: Tensor | None = None  # [B, T] 1 for real tokens, 0 for left padding


@dataclass
class LossOutput:
    """The loss to minimise and its named parts, logged as ``train/loss_<name>``."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


class LossHead(nn.Module):
    """``(StepOutputs, batch) -> LossOutput``. ``full_sequence`` asks for logits at every position."""

    full_sequence: bool = False

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError
