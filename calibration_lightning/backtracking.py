"""Back to the best adapters at a smaller learning rate when a validation round does not improve
(``method.select.backtrack_factor``; see ``methods.Selection``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from calibration_lightning.assembly import set_adapter_weights

log = logging.getLogger(__name__)


class Backtrack(Callback):
    """Backtrack after a validation round that early stopping counts as no improvement and that either is
    worse than the best round by more than ``z`` standard errors of the paired per-question difference of the
    monitor, or exhausts early stopping's patience (whose stop the backtrack then replaces): load the best
    adapters so far (``best``'s file, or ``initial`` when no round beat the untrained model), multiply every
    learning rate by ``factor``, clear the optimizer's moments and start patience again (the smaller rate gets
    ``patience`` rounds of its own). A round within the noise only counts toward patience. Once
    ``max_backtracks`` have been made, a clearly worse round ends training, as patience does. Monitors that are
    not means of per-question terms (binned ECEs) have no such standard error: every round without improvement
    counts as worse. ``baseline_terms``: the untrained model's per-question terms (round 0).

    Runs after ``stopping`` (listed after it) and before the round's ``last.ckpt`` is saved (Lightning saves
    checkpoints after every other callback), so a resumed run continues from the restored adapters and rate;
    ``history`` (one entry per backtrack) is in that checkpoint too."""

    def __init__(
        self,
        stopping: EarlyStopping,
        best,
        initial: dict,
        factor: float,
        max_backtracks: int = 1,
        z: float | None = 1.0,
        baseline_terms: torch.Tensor | None = None,
    ) -> None:
        self.stopping, self.best, self.initial, self.factor = stopping, best, initial, factor
        self.max_backtracks, self.z = max_backtracks, z
        self.best_terms = None if baseline_terms is None else baseline_terms.double()
        self.history: list[dict] = []

    def _round_terms(self, pl_module) -> torch.Tensor | None:
        from calibration_lightning.lr_search import per_question

        scored = getattr(pl_module, "val_scored", None)
        terms = per_question(scored, self.stopping.monitor) if scored is not None else None
        return None if terms is None else terms.double()

    def _within_noise(self, terms: torch.Tensor | None) -> tuple[bool, float, float]:
        """Whether the round's monitor is within ``z`` paired standard errors of the best round's; the
        difference (worse: positive) and that standard error."""
        from calibration_lightning.lr_search import paired_se

        if self.z is None or terms is None or self.best_terms is None or len(terms) != len(self.best_terms):
            return False, float("nan"), float("nan")
        sign = -1.0 if self.stopping.mode == "max" else 1.0
        worse = sign * float(terms.double().mean() - self.best_terms.double().mean())
        se = paired_se(terms, self.best_terms)
        return worse <= self.z * se, worse, se

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        terms = self._round_terms(pl_module)
        if self.stopping.wait_count == 0:  # the round improved on the best so far
            self.best_terms = terms
            return
        if trainer.current_epoch + 1 >= trainer.max_epochs:  # no round follows
            return
        left = len(self.history) < self.max_backtracks
        noise, worse, se = self._within_noise(terms)
        if trainer.should_stop:  # early stopping's patience ran out: a backtrack left is spent instead
            if not left:
                return
            trainer.should_stop = False
            reason = f"no improvement in {self.stopping.patience} round(s)"
        elif noise:
            log.info(
                "round %d did not improve %s but is within %g paired standard errors of the best (%+.4f, se %.4f): "
                "no backtrack",
                trainer.current_epoch + 1,
                self.stopping.monitor,
                self.z,
                worse,
                se,
            )
            return
        elif not left:
            trainer.should_stop = True  # saved with last.ckpt by TrainingLength, like early stopping's own stop
            log.info(
                "round %d is worse than the best on %s after %d backtrack(s): training stops",
                trainer.current_epoch + 1,
                self.stopping.monitor,
                len(self.history),
            )
            return
        else:
            reason = "worse than the best" if worse == worse else "no improvement"
        self.stopping.wait_count, self.stopping.stopped_epoch = 0, 0  # the new rate gets a whole patience
        path = self.best.best_model_path
        if path and Path(path).exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            pl_module.load_state_dict(state["state_dict"], strict=False)  # adapters (and loss-head state)
            back_to = int(state["epoch"]) + 1
        else:
            set_adapter_weights(pl_module.model, self.initial)
            back_to = 0
        lr = None
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] *= self.factor
                if "initial_lr" in group:
                    group["initial_lr"] *= self.factor
                lr = group.get("initial_lr", group["lr"])
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr0 * self.factor for lr0 in config.scheduler.base_lrs]
            lr = config.scheduler.base_lrs[0]
        entry = {"after_round": trainer.current_epoch + 1, "back_to_round": back_to, "lr": lr, "reason": reason}
        if worse == worse:  # the noise test ran (not NaN)
            entry.update(worse_by=round(worse, 6), se=round(se, 6))
        self.history.append(entry)
        log.info(
            "round %d (%s on %s): back to round %d's adapters, learning rate now %g",
            entry["after_round"],
            reason,
            self.stopping.monitor,
            back_to,
            lr,
        )

    def state_dict(self) -> dict:
        terms = None if self.best_terms is None else self.best_terms.tolist()
        return {"history": list(self.history), "best_terms": terms}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        terms = state_dict.get("best_terms")
        if terms is not None:
            self.best_terms = torch.tensor(terms, dtype=torch.float64)
