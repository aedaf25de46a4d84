"""One forward pass over left-padded prompts, reading logits only where they are needed."""

from __future__ import annotations

import torch
from torch import Tensor


def padded_attention_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive ``[B, 1, T, T]`` causal mask of a left-padded batch in which pad queries see themselves.
    Real positions attend exactly as with the 2-D mask (earlier real tokens only). A pad position would
    otherwise attend to nothing: CUDA attention kernels turn such fully masked rows into NaN, and
    ``0 * NaN`` in the weight gradients then poisons every LoRA weight after one padded training batch.
    """
    b, t = attention_mask.shape
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal & attention_mask.bool()[:, None, :]
    allowed |= torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    mask = torch.zeros(b, 1, t, t, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def causal_lm_logits(
    model, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 1, padded: bool | None = None
) -> Tensor:
    """Logits ``[B, logits_to_keep or T, V]``; position ids follow the mask, so left padding shifts nothing.

    ``logits_to_keep=1`` skips the vocabulary projection everywhere but the last position: for short
    prompts that projection is the largest matmul of the pass. Padded batches get ``padded_attention_mask``;
    unpadded ones no mask at all: the kernels' causal fast path, and transformers need not check ``mask.all()`` on
    the device. ``padded`` says whether any row is left-padded, as the collate function knew it on the host; None
    reads it from the mask, which waits for the device.
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    if padded is None:
        padded = not bool(attention_mask.all())
    mask = padded_attention_mask(attention_mask, model.get_input_embeddings().weight.dtype) if padded else None
    return model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=logits_to_keep,
    ).logits
