"""Temperature scaling: one scalar T on the letter logits, fitted by NLL on held-out data."""

from __future__ import annotations

import torch
from torch import Tensor

_NEG = -1e30  # stands in for -inf (absent options) so that d(z/T)/dT stays finite


def _nll(logits: Tensor, labels: Tensor, log_t: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 200) -> float:
    """Fit T minimising the NLL of ``softmax(logits / T)`` over ``log T`` with L-BFGS.

    Unlike the authors' code, the loss is differentiable in T, so T really moves. The fit
    never returns a T whose NLL on ``logits`` (``[N, K]``, -inf for absent options) is worse than T = 1.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(
            f"fit_temperature needs logits [N, K] and labels [N] with N > 0, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    # clone: scores made under torch.inference_mode() cannot take part in autograd as they are
    logits, labels = logits.detach().clone(), labels.detach().clone()
    z = torch.where(torch.isfinite(logits), logits.double(), torch.full_like(logits, _NEG, dtype=torch.float64))
    y = labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _nll(z, y, log_t)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        fitted = log_t.detach().clamp(-10, 10)
        if not torch.isfinite(fitted) or _nll(z, y, fitted) > _nll(z, y, torch.zeros((), dtype=torch.float64)):
            return 1.0
    return float(fitted.exp())
