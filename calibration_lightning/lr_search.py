"""The learning rate of a training method, chosen on the validation split within a stated budget.

Successive halving (Jamieson and Talwalkar 2016) over a short log-spaced grid, each candidate probed from the same
initial adapters (docs/methods.md). Validation is noisy, so the configured ``method.optim.lr`` (the reference) is
only displaced by a rate that beats it by more than ``z`` standard errors of the paired per-question difference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import Tensor

from calibration_lightning.schema import LRSearchConf
from calibration_lightning.selection import paired_se

log = logging.getLogger(__name__)

Probe = Callable[[float, int], tuple[float, Tensor | None]]  # (lr, steps) -> validation monitor, per-question terms


def rank(scores: dict, reference: float | None, sign: float, z: float) -> list:
    """Candidates best first by ``sign * value``; the ``reference`` rate ranks above every candidate that does
    not beat it by more than ``z`` paired standard errors (ties keep the listed order)."""
    order = sorted(scores, key=lambda lr: sign * scores[lr][0])
    if reference not in scores:
        return order
    ref_value, ref_terms = scores[reference]

    def clearly_better(lr) -> bool:
        value, terms = scores[lr]
        noise = paired_se(terms, ref_terms) if terms is not None and ref_terms is not None else 0.0
        return sign * (ref_value - value) > z * noise

    better = [lr for lr in order if lr != reference and clearly_better(lr)]
    return better + [reference] + [lr for lr in order if lr != reference and lr not in better]


def search_learning_rate(search: LRSearchConf, reference: float, probe: Probe, monitor: str, mode: str) -> dict:
    """Successive halving over ``search.lrs``: ``probe(lr, steps)`` trains from the initial adapters and scores
    the validation split; ``reference`` counts when it is in the grid. Returns metrics.json's ``training.lr_search``."""
    survivors, rungs = list(search.lrs), []
    sign = 1.0 if mode == "min" else -1.0
    reference = reference if reference in search.lrs else None
    for n, steps in search.rungs():
        scores = {lr: probe(lr, steps) for lr in survivors}
        survivors = rank(scores, reference, sign, search.z)[: -(-n // search.eta)]
        rungs.append({"steps": steps, "scores": [[lr, round(v, 6)] for lr, (v, _) in scores.items()]})
        log.info(
            "lr search, %d steps each: %s %s; keeping %s", steps, monitor,
            ", ".join(f"{lr:g} -> {v:.4f}" for lr, (v, _) in scores.items()), ", ".join(f"{lr:g}" for lr in survivors),
        )  # fmt: skip
    return {
        "chosen": survivors[0],
        "lrs": list(search.lrs),
        "reference": reference,
        "z": search.z,
        "monitor": monitor,
        "rungs": rungs,
        "probe_steps_total": sum(n * steps for n, steps in search.rungs()),
    }
