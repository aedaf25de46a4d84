"""The two SFT losses of the paper."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from calibration_lightning.losses.base import LossHead, LossOutput, StepOutputs


class CompletionSFT(LossHead):
    """L_SFT1 = -log p(answer letter | prompt), cross-entropy over the full vocabulary at the one position of the
    completion (the answer letter)."""

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:
        loss = F.cross_entropy(out.answer_logits.float(), batch["answer_token"])
        return LossOutput(loss, {"sft": loss.detach()})


def sequence_nll(token_logits: Tensor, token_ids: Tensor, token_mask: Tensor) -> Tensor:
    """Mean next-token NLL of prompt + answer (``[B, T, V]``, ``[B, T]``, ``[B, T]``), each row as if unpadded.

    A token counts when it and the position predicting it are both real: the first real token of a
    left-padded row is not predicted from a pad position (an unpadded row has nothing before it).
    Positions that do not count are ignored targets, so they get no gradient at all, and the step needs
    no data-dependent shape (boolean indexing would make the host wait for the device).
    """
    counted = (token_mask[:, 1:] != 0) & (token_mask[:, :-1] != 0)
    targets = token_ids[:, 1:].masked_fill(~counted, -100)
    return F.cross_entropy(token_logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


class SequenceSFT(LossHead):
    """L_SFT2 = -log p(question, answer): the causal-LM loss over all tokens of prompt and answer."""

    full_sequence = True

    def forward(self, out: StepOutputs, batch: dict[str, Tensor]) -> LossOutput:
        loss = sequence_nll(out.token_logits, out.token_ids, out.token_mask)
        return LossOutput(loss, {"sft": loss.detach()})
