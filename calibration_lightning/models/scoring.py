"""One forward pass over left-padded prompts, reading logits only where they are needed."""

from __future__ import annotations

from torch import Tensor


def causal_lm_logits(model, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 1) -> Tensor:
    """Logits ``[B, logits_to_keep or T, V]``; position ids follow the mask, so left padding shifts nothing.

    ``logits_to_keep=1`` skips the vocabulary projection everywhere but the last position: for short
    prompts that projection is the largest matmul of the pass.
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=logits_to_keep,
    ).logits
