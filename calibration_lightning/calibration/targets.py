"""Rank-preserving ECE targets of RCFT (PAPER.md, M-step)."""

from __future__ import annotations

import torch
from torch import Tensor

from calibration_lightning.calibration.confidence import choice_mask

_EPS = 1e-12


def rank_preserving_targets(probs: Tensor, bin_accuracy: Tensor, n_choices: Tensor | None = None) -> Tensor:
    """Targets for the ECE regularizer: top option gets its bin's accuracy, the rest share the remainder.

    For row i with top option m and bin accuracy a:
    ``t_im = a``; for ``j != m``,
    ``t_ij = (1 - a) (1 + tanh(g p_ij)) / ((K - 1) + sum_{l != m} tanh(g p_il))`` with
    ``g = ln(K - 1) / (q2 (1 - a))`` and q2 the largest non-top probability. Non-top targets
    sum to ``1 - a`` and keep the order of the non-top probabilities; ``a = 1`` gives zeros. ``bin_accuracy [N]``:
    each row's bin's; ``n_choices [N]``: K per row (columns beyond get 0). The targets are detached (constants).
    """
    probs = probs.detach()
    n, k = probs.shape
    a = bin_accuracy.detach().to(probs.dtype).clamp(0.0, 1.0)
    valid = choice_mask(n_choices, k) if n_choices is not None else torch.ones_like(probs, dtype=torch.bool)
    k_row = valid.sum(dim=1).to(probs.dtype)
    top = probs.masked_fill(~valid, -1.0).argmax(dim=1)
    is_top = torch.nn.functional.one_hot(top, k).bool()
    others = valid & ~is_top
    q2 = probs.masked_fill(~others, 0.0).amax(dim=1)
    log_km1 = torch.log((k_row - 1).clamp_min(1.0))
    gamma = log_km1 / (q2 * (1 - a)).clamp_min(_EPS)
    th = torch.tanh(gamma[:, None] * probs).masked_fill(~others, 0.0)
    denom = (k_row - 1).clamp_min(1.0) + th.sum(dim=1)
    rest = (1 - a)[:, None] * (1 + th) / denom[:, None]
    targets = torch.where(others, rest, torch.zeros_like(probs))
    return torch.where(is_top, a[:, None].expand(n, k), targets)
