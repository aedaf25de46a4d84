"""The learning rate of a training method, chosen on the validation split within a stated budget.

LoRA's best learning rate depends on the model and the data and is roughly an order of magnitude above full
fine-tuning's (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"; Schulman et al. 2025, "LoRA Without
Regret"), so a run tries a short log-spaced grid rather than one value. Each candidate is probed briefly from
the same initial adapters and eliminated by successive halving (Jamieson and Talwalkar 2016; Li et al. 2018,
Hyperband): ``len(lrs) * probe_steps`` optimizer steps and ``len(lrs)`` validation passes for a one-rung
search. Eighty validation questions are noisy, so the configured ``method.optim.lr`` (the reference) is only
displaced by a rate that beats it by more than ``z`` standard errors of the paired per-question difference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import lightning as L
import torch

from calibration_lightning import evaluation
from calibration_lightning.assembly import set_adapter_weights
from calibration_lightning.config import build
from calibration_lightning.methods import Method
from calibration_lightning.module import CalibrationModule

log = logging.getLogger(__name__)


def probe_trainer_kwargs(cfg) -> dict:
    """Trainer arguments of a probe: the run's trainer settings, no logger, no checkpoint, no summary."""
    kwargs = dict(build(cfg.trainer, _convert_="all"))
    kwargs.pop("checkpoint_every_n_steps", None)
    kwargs.update(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    return kwargs


def per_question(scored: evaluation.Scored, monitor: str) -> torch.Tensor | None:
    """The monitor's per-question terms (their mean is the monitor), for monitors that are means of one;
    None for binned metrics (ECE and relatives)."""
    probs, labels = evaluation.probabilities(scored), scored["labels"]
    name = monitor.removeprefix("val/")
    if name == "nll":
        return -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().squeeze(1)
    if name == "brier":
        return ((probs - torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)) ** 2).sum(dim=1)
    if name == "accuracy":
        return (probs.argmax(dim=1) == labels).to(probs.dtype)
    return None


def probe(cfg, method: Method, model, dm, initial: dict, lr: float, steps: int, monitor: str):
    """Train ``method`` at ``lr`` for ``steps`` optimizer steps from the ``initial`` adapters (the run's seed,
    so every candidate sees the same batches); returns the validation ``monitor`` and its per-question terms
    (None for binned monitors)."""
    set_adapter_weights(model, initial)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CalibrationModule(model, method.loss, dm.letter_ids, replace(method.optim, lr=lr), cfg.n_bins)
    kwargs = probe_trainer_kwargs(cfg)
    model.train()
    fit = L.Trainer(**kwargs, max_steps=steps, max_epochs=-1, limit_val_batches=0, callbacks=list(method.callbacks))
    fit.fit(module, datamodule=dm)
    scorer = L.Trainer(**kwargs)
    scored = evaluation._gathered(scorer, scorer.predict(module, dataloaders=dm.split_dataloader("val")))
    value = evaluation.metrics(scored, cfg.n_bins)[monitor.removeprefix("val/")]
    return float(value), per_question(scored, monitor)


def paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of the mean of the per-question differences ``a - b`` (the same questions)."""
    d = (a - b).double()
    return float(d.std(unbiased=True) / math.sqrt(len(d))) if len(d) > 1 else 0.0


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


def search_learning_rate(cfg, method: Method, model, dm, initial: dict, monitor: str, mode: str) -> dict:
    """Successive halving over ``method.lr_search.lrs`` (see ``LRSearch``); the model ends with ``initial``.

    Returns:
        ``{"chosen": lr, "monitor": ..., "rungs": [{"steps": n, "scores": [[lr, value], ...]}, ...],
        "probe_steps_total": ...}`` (metrics.json ``training.lr_search``).
    """
    search = method.lr_search
    survivors, rungs = list(search.lrs), []
    sign = 1.0 if mode == "min" else -1.0
    reference = method.optim.lr if method.optim is not None and method.optim.lr in search.lrs else None
    for n, steps in search.rungs():
        scores = {lr: probe(cfg, method, model, dm, initial, lr, steps, monitor) for lr in survivors}
        survivors = rank(scores, reference, sign, search.z)[: -(-n // search.eta)]
        rungs.append({"steps": steps, "scores": [[lr, round(v, 6)] for lr, (v, _) in scores.items()]})
        log.info(
            "%s: lr search, %d steps each: %s %s; keeping %s",
            method.name,
            steps,
            monitor,
            ", ".join(f"{lr:g} -> {v:.4f}" for lr, (v, _) in scores.items()),
            ", ".join(f"{lr:g}" for lr in survivors),
        )
    set_adapter_weights(model, initial)
    return {
        "chosen": survivors[0],
        "lrs": list(search.lrs),
        "reference": reference,
        "z": search.z,
        "monitor": monitor,
        "rungs": rungs,
        "probe_steps_total": sum(n * steps for n, steps in search.rungs()),
    }
