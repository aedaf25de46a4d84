"""From letter logits to answer probabilities."""

from __future__ import annotations

import torch
from torch import Tensor


def choice_mask(n_choices: Tensor, k_max: int) -> Tensor:
    """``[N, k_max]`` bool mask, True where column j < n_choices[i] (a real option of row i)."""
    return torch.arange(k_max, device=n_choices.device)[None, :] < n_choices[:, None]


def mask_letter_logits(letter_logits: Tensor, n_choices: Tensor | None) -> Tensor:
    """Set the logits of letters a row does not offer to -inf (rows may have fewer than K options)."""
    if n_choices is None:
        return letter_logits
    mask = choice_mask(n_choices, letter_logits.shape[1])
    return letter_logits.masked_fill(~mask, float("-inf"))


def letter_probabilities(letter_logits: Tensor, n_choices: Tensor | None = None) -> Tensor:
    """``[N, K]`` float32 softmax over each row's own option letters (``n_choices [N]``: columns beyond get 0)."""
    return torch.softmax(mask_letter_logits(letter_logits.float(), n_choices), dim=-1)


def set_probabilities(letter_logits: Tensor, n_choices: Tensor) -> Tensor:
    """``letter_probabilities`` cut to the set's own width: the most options any of its rows has."""
    width = int(n_choices.max()) if n_choices.numel() else letter_logits.shape[1]
    return letter_probabilities(letter_logits, n_choices)[:, :width].contiguous()
