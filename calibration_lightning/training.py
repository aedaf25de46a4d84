"""Training: each method of the run fitted from the same initial adapters, its learning rate and training
length chosen on the validation split when the method asks, and the one kept (the only one, or
``method=auto``'s choice). Nothing here reads a test split."""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from calibration_lightning import evaluation
from calibration_lightning.assembly import adapter_weights, build_trainer, set_adapter_weights
from calibration_lightning.backtracking import Backtrack
from calibration_lightning.data.sampling import rounds_per_pass
from calibration_lightning.lr_search import per_question, search_learning_rate
from calibration_lightning.methods import Method, choose_method, describe_training
from calibration_lightning.models.loading import autocast_dtype, merged_adapters
from calibration_lightning.module import CalibrationModule, OptimSettings
from calibration_lightning.outputs import run_state
from calibration_lightning.outputs.checkpoints import TrainingLength
from calibration_lightning.outputs.files import write_json

log = logging.getLogger(__name__)


def train_methods(
    cfg, methods: dict[str, Method], model, dm, out_dir: Path, logger, settings, extra: dict, before=None
):
    """Train each method from the same initial adapters and keep one (the only one, or auto's choice);
    the model ends with the kept adapters. ``before``: the run's scores before training (its validation
    split is the untrained model every selection compares with). Returns the kept method's scores and its
    name; ``extra`` gets ``method`` and ``training`` (and ``auto``)."""
    several = len(methods) > 1
    initial = adapter_weights(model)
    before_val = (before or {}).get("val")
    scored, weights, training = {}, {}, {}
    for name, method in methods.items():
        ckpt_dir = out_dir / "checkpoints" / (name if several else "")
        merge = False if several else settings.merge_for_eval  # candidates only score validation, if anything
        search_file = out_dir / (f"lr_search_{name}.json" if several else "lr_search.json")
        scored[name], training[name] = train_and_evaluate(
            cfg,
            method,
            model,
            dm,
            out_dir,
            ckpt_dir,
            logger,
            merge,
            initial,
            before_val,
            search_file,
            autocast_dtype(settings),
            tests=not several,  # auto scores the test sets once, with the candidate it keeps
        )
        if several:
            weights[name] = adapter_weights(model)
    chosen = next(iter(scored))
    if several:
        val = {name: s["val"]["metrics"] for name, s in scored.items()}
        correct = {name: correct_answers(s["val"]) for name, s in scored.items()}
        boot = cfg.bootstrap
        rule = choose_method(
            val,
            correct,
            cfg.regime.accuracy_tolerance,
            cfg.method.get("accuracy_z", 1.96),
            probabilities={name: evaluation.probabilities(s["val"]) for name, s in scored.items()},
            labels=next(iter(scored.values()))["val"]["labels"],
            n_bins=cfg.n_bins,
            resamples=boot.resamples,
            level=boot.level,
            seed=boot.seed,
        )
        extra["auto"] = {**rule, "training": training}
        chosen = rule["chosen"]
        log.info(
            "method=auto: validation conf-ECE %s (tied within the noise: %s), NLL %s, correct %s of %d; keeping %s",
            {n: round(m["conf_ece"], 4) for n, m in val.items()},
            ", ".join(rule["tied"]),
            {n: round(m["nll"], 4) for n, m in val.items()},
            {n: p["correct"] for n, p in rule["paired"].items()},
            len(correct[chosen]),
            chosen,
        )
        set_adapter_weights(model, weights[chosen])
        scorer = CalibrationModule(model, None, dm.letter_ids, OptimSettings(), cfg.n_bins, autocast_dtype(settings))
        with merged_adapters(model, settings.merge_for_eval):
            trainer = build_trainer(cfg, out_dir, logger)
            scored[chosen] = evaluation.evaluate(trainer, scorer, dm, cfg.n_bins, val=scored[chosen]["val"])
    extra["method"], extra["training"] = chosen, training[chosen]
    return scored[chosen], chosen


def correct_answers(scored: evaluation.Scored) -> list[bool]:
    """Per question (in split order): the highest-probability option is the gold one."""
    return (evaluation.probabilities(scored).argmax(dim=-1) == scored["labels"]).tolist()


def chosen_learning_rate(cfg, method: Method, model, dm, path: Path, initial: dict) -> dict | None:
    """``method.lr_search``'s result: searched now and written to ``path``, or read back from it when the run
    resumes (the search is deterministic, but repeating it would cost its probes again)."""
    if not method.lr_search:
        return None
    if cfg.resume and path.exists():
        return json.loads(path.read_text())
    monitor, mode = (method.select.monitor, method.select.mode) if method.select else ("val/nll", "min")
    result = search_learning_rate(cfg, method, model, dm, initial, monitor, mode)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        write_json(path, result)
    return result


def train_and_evaluate(
    cfg,
    method: Method,
    model,
    dm,
    out_dir: Path,
    ckpt_dir: Path,
    logger,
    merge,
    initial: dict,
    before_val=None,
    search_file: Path | None = None,
    autocast=None,
    tests: bool = True,
) -> tuple[dict, dict]:
    """Fit ``method`` from the ``initial`` adapters (resuming from ``ckpt_dir`` when asked): its learning rate
    from ``method.lr_search``, its length from ``method.select``, which keeps the best epoch's adapters, or
    the initial ones when no epoch beat the untrained model (``before_val``: its validation scores) on the
    monitor. Then score every evaluation split (``merge``: with the adapters folded in; ``tests`` False: the
    validation split only, whose kept round's scores are usually known already). ``search_file``: where
    the learning-rate search is kept for a resumed run (default ``out_dir/lr_search.json``); ``autocast``: the
    forward dtype of ``model.lora_compute``. A stop signal while training raises ``run_state.Preempted`` once
    the last checkpoint is saved. Returns the scores
    and ``training``: learning rate, epochs run, the epoch kept (0: none), the monitor before training."""
    s = method.select
    accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    dm.round_batches = s.every_n_steps * accumulate if s and s.every_n_steps else 0  # validation every round
    search = chosen_learning_rate(cfg, method, model, dm, search_file or out_dir / "lr_search.json", initial)
    optim = replace(method.optim, lr=search["chosen"]) if search else method.optim
    set_adapter_weights(model, initial)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # each candidate starts alike
    baseline = baseline_terms = None
    if s and before_val is not None:
        baseline = evaluation.metrics(before_val, cfg.n_bins)[s.monitor.removeprefix("val/")]
        baseline_terms = per_question(before_val, s.monitor)
    module = CalibrationModule(model, method.loss, dm.letter_ids, optim, cfg.n_bins, autocast)
    trainer = build_trainer(
        cfg,
        out_dir,
        logger,
        method,
        ckpt_dir,
        validates=bool(dm.records["val"]),
        baseline=baseline,
        initial=initial,
        baseline_terms=baseline_terms,
    )
    rounds = rounds_per_pass(len(dm.records["train"]), dm.batch_size, trainer.world_size, dm.round_batches)
    trainer.fit_loop.max_epochs = method.epochs * rounds  # a Lightning epoch is one validation round
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
    kept_val = None  # the kept round's validation scores (its validation pass), when known
    run = next(c for c in trainer.callbacks if isinstance(c, TrainingLength)).epochs_run
    training = {"lr": optim.lr, "epochs_max": method.epochs, "rounds_per_epoch": rounds, "rounds_run": run}
    training.update(epochs_run=round(run / rounds, 4), kept_round=run)
    if search:
        training["lr_search"] = search
    if s:
        training.update(monitor=s.monitor, min_delta=s.min_delta, patience=s.patience, monitor_before=baseline)
        backtrack = next((c for c in trainer.callbacks if isinstance(c, Backtrack)), None)
        if backtrack is not None:
            training.update(
                backtrack_factor=s.backtrack_factor,
                backtrack_z=s.backtrack_z,
                max_backtracks=s.max_backtracks,
                backtracks=backtrack.history,
            )
        best_path = ckpt_dir / "best.ckpt"
        if best_path.exists():
            best = torch.load(best_path, map_location="cpu", weights_only=True)
            module.load_state_dict(best["state_dict"], strict=False)  # adapters (and loss-head state) only
            kept_val = best.get("val_scored")
            training["kept_round"] = best["epoch"] + 1
            training["monitor_kept"] = _best_score(trainer)
        else:  # no round improved on the untrained model: keep it
            set_adapter_weights(model, initial)
            kept_val = before_val
            training["kept_round"] = 0
            training["monitor_kept"] = baseline
        training["beat_untrained"] = training["kept_round"] > 0
    training["kept_epochs"] = round(training["kept_round"] / rounds, 4)  # passes over the training split
    log.info("%s", describe_training(method.name, training))
    with merged_adapters(model, merge):  # the validation split is not scored again when its scores are known
        return evaluation.evaluate(trainer, module, dm, cfg.n_bins, val=kept_val, tests=tests), training


def _best_score(trainer) -> float | None:
    from calibration_lightning.outputs.checkpoints import BestCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, BestCheckpoint) and callback.best_model_score is not None:
            return float(callback.best_model_score)
    return None
