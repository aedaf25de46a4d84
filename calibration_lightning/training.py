"""Training: each method of the run fitted from the same initial adapters, the training length chosen on the
validation split when the method selects, and the one kept (the only one, or ``method=auto``'s choice)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from calibration_lightning import evaluation
from calibration_lightning.assembly import adapter_weights, build_trainer, set_adapter_weights
from calibration_lightning.methods import Method, choose_method
from calibration_lightning.models.loading import autocast_dtype, merged_adapters
from calibration_lightning.module import CalibrationModule
from calibration_lightning.outputs import run_state
from calibration_lightning.outputs.checkpoints import TrainingLength

log = logging.getLogger(__name__)


def train_methods(cfg, methods: dict[str, Method], model, dm, out_dir: Path, logger, settings, extra: dict):
    """Train each method from the same initial adapters and keep one (the only one, or auto's choice);
    the model ends with the kept adapters. Returns its scores and its name; ``extra`` gets ``method``
    (and ``auto``)."""
    several = len(methods) > 1
    initial = adapter_weights(model) if several else None
    scored, weights, training = {}, {}, {}
    for i, (name, method) in enumerate(methods.items()):
        if several:
            set_adapter_weights(model, initial)
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # each candidate starts alike
        ckpt_dir = out_dir / "checkpoints" / (name if several else "")
        merge = settings.merge_for_eval if i == len(methods) - 1 else False  # bf16 unmerging is inexact
        scored[name], training[name] = train_and_evaluate(
            cfg, method, model, dm, out_dir, ckpt_dir, logger, merge, autocast_dtype(settings)
        )
        if several:
            weights[name] = adapter_weights(model)
    chosen = next(iter(scored))
    if several:
        val = {name: s["val"]["metrics"] for name, s in scored.items()}
        extra["auto"] = {**choose_method(val, cfg.regime.accuracy_tolerance), "training": training}
        chosen = extra["auto"]["chosen"]
        log.info(
            "method=auto: validation conf-ECE %s; keeping %s",
            {n: round(m["conf_ece"], 4) for n, m in val.items()},
            chosen,
        )
        set_adapter_weights(model, weights[chosen])
    extra["method"], extra["training"] = chosen, training[chosen]
    return scored[chosen], chosen


def train_and_evaluate(
    cfg, method: Method, model, dm, out_dir: Path, ckpt_dir: Path, logger, merge, autocast=None
) -> dict:
    """Fit ``method`` (resuming from ``ckpt_dir`` when asked), keep the best epoch's adapters when it
    selects on validation, then score every evaluation split (``merge``: with the adapters folded in, as
    ``model.merge_for_eval``; ``autocast``: the forward dtype of ``model.lora_compute``). Returns the scores
    and ``training``: epochs run and the epoch kept."""
    module = CalibrationModule(model, method.loss, dm.letter_ids, method.optim, cfg.n_bins, autocast)
    trainer = build_trainer(cfg, out_dir, logger, method, ckpt_dir, validates=bool(dm.records["val"]))
    model.train()  # from_pretrained returns eval mode; LoRA dropout must be live
    last = ckpt_dir / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.exists() else None
    with run_state.training():
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        except SIGTERMException:  # Lightning's own SIGTERM stop (inside validation): the last checkpoint stands
            raise run_state.Preempted(signal.SIGTERM) from None
    if run_state.stop_requested():  # arrived after the last step: the epoch's checkpoint is already saved
        raise run_state.Preempted(run_state.stop_requested())
    epochs = next(c for c in trainer.callbacks if isinstance(c, TrainingLength)).epochs_run
    training = {"epochs_run": epochs, "epochs_max": method.epochs, "kept_epoch": epochs}
    if method.select:
        best = torch.load(ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"], strict=False)  # adapters (and loss-head state) only
        s = method.select
        training.update(kept_epoch=best["epoch"] + 1, monitor=s.monitor, min_delta=s.min_delta, patience=s.patience)
        log.info("%s: %d epoch(s) run, keeping epoch %d", method.name, training["epochs_run"], training["kept_epoch"])
    with merged_adapters(model, merge):
        return evaluation.evaluate(trainer, module, dm, cfg.n_bins), training
