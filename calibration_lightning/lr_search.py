"""The learning rate of a training method, chosen on the validation split within a stated budget.

LoRA's best learning rate depends on the model and the data and is roughly an order of magnitude above full
fine-tuning's (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"; Schulman et al. 2025, "LoRA Without
Regret"), so a run tries a short log-spaced grid rather than one value. Each candidate is probed briefly from
the same initial adapters and eliminated by successive halving (Jamieson and Talwalkar 2016; Li et al. 2018,
Hyperband): ``len(lrs) * probe_steps`` optimizer steps and ``len(lrs)`` validation passes for a one-rung
search, which on the default is about a fifth of a run.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import lightning as L

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


def probe(cfg, method: Method, model, dm, initial: dict, lr: float, steps: int, monitor: str) -> float:
    """Train ``method`` at ``lr`` for ``steps`` optimizer steps from the ``initial`` adapters (the run's seed,
    so every candidate sees the same batches) and return the validation ``monitor``."""
    set_adapter_weights(model, initial)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CalibrationModule(model, method.loss, dm.letter_ids, replace(method.optim, lr=lr), cfg.n_bins)
    kwargs = probe_trainer_kwargs(cfg)
    model.train()
    fit = L.Trainer(**kwargs, max_steps=steps, max_epochs=-1, limit_val_batches=0, callbacks=list(method.callbacks))
    fit.fit(module, datamodule=dm)
    values = L.Trainer(**kwargs).validate(module, datamodule=dm, verbose=False)[0]
    return float(values[monitor])


def search_learning_rate(cfg, method: Method, model, dm, initial: dict, monitor: str, mode: str) -> dict:
    """Successive halving over ``method.lr_search.lrs`` (see ``LRSearch``); the model ends with ``initial``.

    Returns:
        ``{"chosen": lr, "monitor": ..., "rungs": [{"steps": n, "scores": [[lr, value], ...]}, ...],
        "probe_steps_total": ...}`` (metrics.json ``training.lr_search``).
    """
    search = method.lr_search
    survivors, rungs = list(search.lrs), []
    sign = 1.0 if mode == "min" else -1.0
    for n, steps in search.rungs():
        scores = [(lr, probe(cfg, method, model, dm, initial, lr, steps, monitor)) for lr in survivors]
        ranked = sorted(scores, key=lambda pair: sign * pair[1])  # stable: ties keep the listed order
        survivors = [lr for lr, _ in ranked[: -(-n // search.eta)]]
        rungs.append({"steps": steps, "scores": [[lr, round(v, 6)] for lr, v in scores]})
        log.info(
            "%s: lr search, %d steps each: %s %s; keeping %s",
            method.name,
            steps,
            monitor,
            ", ".join(f"{lr:g} -> {v:.4f}" for lr, v in scores),
            ", ".join(f"{lr:g}" for lr in survivors),
        )
    set_adapter_weights(model, initial)
    return {
        "chosen": survivors[0],
        "lrs": list(search.lrs),
        "monitor": monitor,
        "rungs": rungs,
        "probe_steps_total": sum(n * steps for n, steps in search.rungs()),
    }
