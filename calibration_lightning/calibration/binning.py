"""Equal-width confidence bins shared by every metric and by the EM E-step."""

from __future__ import annotations

import torch
from torch import Tensor


def bin_index(values: Tensor, n_bins: int) -> Tensor:
    """Assign each value in [0, 1] to one of ``n_bins`` equal-width bins.

    Bin b covers [b / n_bins, (b + 1) / n_bins); the last bin also holds 1.0. Each boundary is ``b / n_bins``
    rounded once in the values' dtype (``linspace`` can be an ulp off: 0.7 fell in bin 6 in float64, bin 7 in
    float32), so a value written as b / n_bins is in bin b whatever its dtype. Returns a long tensor of
    ``values``' shape.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    boundaries = torch.arange(n_bins + 1, dtype=values.dtype, device=values.device) / n_bins
    idx = torch.bucketize(values, boundaries, right=True) - 1
    return idx.clamp_(0, n_bins - 1)


def binned_sums(index: Tensor, weights: Tensor, n_bins: int) -> Tensor:
    """Sum ``weights`` per bin: ``out[b] = sum(weights[index == b])`` (both flat)."""
    out = torch.zeros(n_bins, dtype=weights.dtype, device=weights.device)
    return out.index_add_(0, index, weights)
