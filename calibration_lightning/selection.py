"""The training length chosen on the validation split, with backtracking: one callback owns it (``SelectConf``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor

from calibration_lightning.calibration.confidence import set_probabilities
from calibration_lightning.calibration.metrics import brier_terms, nll_terms
from calibration_lightning.models.loading import set_adapter_weights
from calibration_lightning.schema import SelectConf

log = logging.getLogger(__name__)


def per_question(scored: dict, monitor: str) -> Tensor | None:
    """The monitor's per-question terms (their mean is the monitor) of a split's scores, for monitors that are
    means of one; None for binned metrics (ECE and relatives)."""
    probs, labels = set_probabilities(scored["letter_logits"], scored["n_choices"]), scored["labels"]
    name = monitor.removeprefix("val/")
    if name == "nll":
        return nll_terms(probs, labels)
    if name == "brier":
        return brier_terms(probs, labels)
    if name == "accuracy":
        return (probs.argmax(dim=1) == labels).to(probs.dtype)
    return None


def paired_se(a: Tensor, b: Tensor) -> float:
    """Standard error of the mean of the per-question differences ``a - b`` (the same questions)."""
    d = (a - b).double()
    return float(d.std(unbiased=True) / math.sqrt(len(d))) if len(d) > 1 else 0.0


class Backtracking(EarlyStopping):
    """Lightning's early stopping on ``select.monitor`` (the untrained model, ``baseline``, is round 0) that also
    saves the best round as ``ckpt_dir/best.ckpt`` and backtracks (docs/methods.md); binned monitors have no noise
    test: any round without improvement is clearly worse. ``history`` (one entry per backtrack) travels in the
    checkpoint with early stopping's state.
    """

    def __init__(self, select: SelectConf, ckpt_dir: Path, baseline: float | None, baseline_terms, initial) -> None:
        super().__init__(monitor=select.monitor, mode=select.mode, min_delta=select.min_delta, patience=select.patience,
                         check_on_train_epoch_end=False)  # fmt: skip
        if baseline is not None:
            self.best_score = torch.tensor(float(baseline))
        self.select, self.best_path, self.initial = select, Path(ckpt_dir) / "best.ckpt", initial
        self.best_terms = None if baseline_terms is None else baseline_terms.double()
        self.history: list[dict] = []

    def _within_noise(self, terms: Tensor | None) -> tuple[bool, float, float]:
        """Whether the round's monitor is within ``backtrack_z`` paired standard errors of the best round's; the
        difference (worse: positive) and that standard error (NaN when there is no such test)."""
        z, best = self.select.backtrack_z, self.best_terms
        if z is None or terms is None or best is None or len(terms) != len(best):
            return False, float("nan"), float("nan")
        sign = -1.0 if self.mode == "max" else 1.0
        worse = sign * float(terms.double().mean() - best.mean())
        se = paired_se(terms, best)
        return worse <= z * se, worse, se

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._run_early_stopping_check(trainer)
        scored = getattr(pl_module, "val_scored", None)
        terms = per_question(scored, self.monitor) if scored is not None else None
        terms = None if terms is None else terms.double()
        if self.wait_count == 0:  # improved on the best so far
            self.best_terms = terms
            trainer.save_checkpoint(self.best_path, weights_only=False)
            return
        if self.select.backtrack_factor is None or trainer.current_epoch + 1 >= trainer.max_epochs:
            return
        reason = self._reason(trainer, terms)
        if reason is not None:
            self._backtrack(trainer, pl_module, reason)

    def _reason(self, trainer, terms: Tensor | None) -> tuple[str, float, float] | None:
        """Why this round backtracks (and the noise test's difference and standard error), or None."""
        left = len(self.history) < self.select.max_backtracks
        noise, worse, se = self._within_noise(terms)
        round_ = trainer.current_epoch + 1
        if trainer.should_stop:  # patience ran out: a backtrack left is spent instead
            if not left:
                return None
            trainer.should_stop = False
            return f"no improvement in {self.patience} round(s)", worse, se
        if noise:
            log.info(
                "round %d did not improve %s but is within %g paired standard errors of the best (%+.4f, se %.4f): "
                "no backtrack", round_, self.monitor, self.select.backtrack_z, worse, se,
            )  # fmt: skip
            return None
        if not left:
            trainer.should_stop = True  # saved with last.ckpt by TrainingLength, like early stopping's own stop
            log.info("round %d is worse than the best on %s after %d backtrack(s): training stops",
                     round_, self.monitor, len(self.history))  # fmt: skip
            return None
        return ("worse than the best" if worse == worse else "no improvement"), worse, se

    def _backtrack(self, trainer, pl_module, reason: tuple[str, float, float]) -> None:
        why, worse, se = reason
        self.wait_count, self.stopped_epoch = 0, 0  # the new rate gets a whole patience
        if self.best_path.exists():
            state = torch.load(self.best_path, map_location="cpu", weights_only=True)
            pl_module.load_state_dict(state["state_dict"], strict=False)  # adapters (and loss-head state)
            back_to = int(state["epoch"]) + 1
        else:
            set_adapter_weights(pl_module.model, self.initial)
            back_to = 0
        factor, lr = self.select.backtrack_factor, None
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
                lr = group.get("initial_lr", group["lr"])
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr0 * factor for lr0 in config.scheduler.base_lrs]
            lr = config.scheduler.base_lrs[0]
        entry = {"after_round": trainer.current_epoch + 1, "back_to_round": back_to, "lr": lr, "reason": why}
        if worse == worse:  # the noise test ran (not NaN)
            entry.update(worse_by=round(worse, 6), se=round(se, 6))
        self.history.append(entry)
        log.info("round %d (%s on %s): back to round %d's adapters, learning rate now %g",
                 entry["after_round"], why, self.monitor, back_to, lr)  # fmt: skip

    def state_dict(self) -> dict:
        terms = None if self.best_terms is None else self.best_terms.tolist()
        return {**super().state_dict(), "history": list(self.history), "best_terms": terms}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.history = list(state_dict.get("history", []))
        terms = state_dict.get("best_terms")
        self.best_terms = None if terms is None else torch.tensor(terms, dtype=torch.float64)


def keep_best(trainer, module, training: dict, select: SelectConf, initial: dict, before_val, baseline) -> dict | None:
    """Load the best round's adapters (or the ``initial`` ones), record the choice in ``training``; return the kept
    round's validation scores."""
    training.update(monitor=select.monitor, min_delta=select.min_delta, patience=select.patience)
    training["monitor_before"] = baseline
    backtracking = next((c for c in trainer.callbacks if isinstance(c, Backtracking)), None)
    if backtracking is not None and select.backtrack_factor is not None:
        training.update(backtrack_factor=select.backtrack_factor, backtrack_z=select.backtrack_z,
                        max_backtracks=select.max_backtracks, backtracks=backtracking.history)  # fmt: skip
    if backtracking is not None and backtracking.best_path.exists():
        best = torch.load(backtracking.best_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"], strict=False)  # adapters (and loss-head state) only
        training.update(kept_round=best["epoch"] + 1, monitor_kept=float(backtracking.best_score))
        kept_val = best.get("val_scored")
    else:  # no round improved on the untrained model: keep it
        set_adapter_weights(module.model, initial)
        training.update(kept_round=0, monitor_kept=baseline)
        kept_val = before_val
    training["beat_untrained"] = training["kept_round"] > 0
    return kept_val


def describe_training(name: str, training: dict) -> str:
    """One line for the log and the printed table: the settings the run chose on validation."""
    text = f"{name}: lr {training['lr']:g}"
    if "lr_search" in training:
        grid = ", ".join(f"{lr:g}" for lr in training["lr_search"]["lrs"])
        text += f" (chosen on validation from {grid})"
    rounds = training.get("rounds_per_epoch", 1)
    unit = f"round(s) of {1 / rounds:.2g} epoch" if rounds > 1 else "epoch(s)"
    text += f"; {training['rounds_run']} {unit} run of at most {training['epochs_max']} epoch(s)"
    for b in training.get("backtracks", []):
        text += f"; after round {b['after_round']} back to round {b['back_to_round']} at lr {b['lr']:.3g}"
    if "monitor" not in training:
        return text + ", the last kept"
    before, kept = training.get("monitor_before"), training.get("monitor_kept")
    if training["kept_round"] == 0:
        text += f"; no round beat the model before training on {training['monitor']}"
        text += f" ({before:.4f})" if before is not None else ""
        return text + ": the untrained adapters are kept"
    text += f"; round {training['kept_round']} kept" if rounds > 1 else f"; epoch {training['kept_round']} kept"
    if before is not None and kept is not None:
        text += f" ({training['monitor']} {before:.4f} before training -> {kept:.4f})"
    return text
