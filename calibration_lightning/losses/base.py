"""The interface every loss head implements."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class StepOutputs:
    """What one forward pass gives a loss head.

    Attributes:
        answer_logits: ``[B, V]`` logits at the last prompt position (where the letter is predicted).
        letter_logits: ``[B, K]`` those logits at the K letter tokens; absent options are -inf.
        letter_probs: ``[B, K]`` softmax of ``letter_logits`` (float32).
        token_logits: ``[B, T, V]`` logits at every position of prompt + answer letter, only when the
            head sets ``full_sequence``; else None.
        token_ids: ``[B, T]`` the prompt + answer ids behind ``token_logits`` (or None).
        token_mask: ``[B, T]`` 1 for real tokens, 0 for left padding (or None).
    """

    answer_logits: Tensor
    letter_logits: Tensor
    letter_probs: Tensor
    token_logits: Tensor | None = None
    token_ids: Tensor | None = None
    token_mask: Tensor | None = None


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
