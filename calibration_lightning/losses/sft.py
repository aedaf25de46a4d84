"""The two SFT losses of the paper."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from calibration_lightning.losses.base import LossHead, LossOutput, StepOutputs


class CompletionSFT(LossHead):
    """L_SFT1 = -log p(answer letter | prompt), cross-entropy over the full vocabulary.

    The completion is the one answer letter, so the loss reads one position:
    ``answer_logits [B, V]`` against ``batch["answer_token"] [B]``.
    """

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:
        loss = F.cross_entropy(out.answer_logits.float(), batch["answer_token"])
        return LossOutput(loss, {"sft": loss.detach()})


def sequence_nll(token_logits: Tensor, token_ids: Tensor, token_mask: Tensor) -> Tensor:
    """Mean next-token NLL over every real token of prompt + answer (``[B, T, V]``, ``[B, T]``, ``[B, T]``)."""
    logits = token_logits[:, :-1].float()
    targets = token_ids[:, 1:].masked_fill(token_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


class SequenceSFT(LossHead):
    """L_SFT2 = -log p(question, answer): the causal-LM loss over all tokens of prompt and answer."""

    full_sequence = True

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:
        loss = sequence_nll(out.token_logits, out.token_ids, out.token_mask)
        return LossOutput(loss, {"sft": loss.detach()})
