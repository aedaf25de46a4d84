"""Checkpoints that survive a kill at any moment: the last state (every N steps and every epoch end) and,
when the training length is chosen on validation, the best epoch's.

Every path a checkpoint records is relative to its folder, so a run folder that was moved or copied resumes
exactly as where it started; ``TrainingLength`` adds what Lightning leaves out (whether training had already
stopped early, the epochs run), so a run killed after early stopping does not train on when resumed."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from calibration_lightning.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write the checkpoint beside its target and rename it into place: a job killed mid-save leaves the
    previous checkpoint whole. Loading uses ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # a full disk, ``ulimit -f``, a folder made read-only meanwhile
            tmp.unlink(missing_ok=True)
            raise UserError(
                f"cannot write the checkpoint {path} ({write_failure(e)}); the previous checkpoint is kept: "
                "free disk space (or raise the file size limit) and rerun with resume=true"
            ) from None

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def write_failure(e: BaseException) -> str:
    """Why a write failed, in words (torch.save reports a full disk as a RuntimeError of its own)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "the disk is full or the file size limit was reached" if "write" in text.lower() else text


def _relative(path: str, dirpath: str | None) -> str:
    if path and dirpath and os.path.dirname(path) == dirpath:
        return os.path.basename(path)
    return path


def _rebased(path: str, dirpath: str | None) -> str:
    return os.path.join(dirpath, path) if path and dirpath and not os.path.isabs(path) else path


class RelocatableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose saved state names its files relative to its folder: Lightning otherwise drops
    the best score of a run whose folder moved (another absolute path) and keeps epochs it should not."""

    def state_dict(self) -> dict:
        state = super().state_dict()
        d = self.dirpath
        state["dirpath"] = "."
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = _relative(state[key], d)
        state["best_k_models"] = {_relative(k, d): v for k, v in state["best_k_models"].items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        d = self.dirpath
        state = dict(state_dict, dirpath=d)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = _rebased(state.get(key, ""), d)
        state["best_k_models"] = {_rebased(k, d): v for k, v in state.get("best_k_models", {}).items()}
        super().load_state_dict(state)


class StopOnSignal(Callback):
    """After the training step during which a stop signal arrived (``run_state.stop_signals``), save
    ``ckpt_dir/last.ckpt`` and stop the run (``Preempted``): resuming from it continues with the next step."""

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = Path(ckpt_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from calibration_lightning.outputs.run_state import Preempted, hand_over, stop_requested

        signum = stop_requested()
        if signum is None:
            return
        path = self.ckpt_dir / "last.ckpt"
        trainer.save_checkpoint(path)
        hand_over(signum)  # a launcher's own handler (submitit requeues the job, then exits)
        raise Preempted(signum, path)


class TrainingLength(Callback):
    """The training-length decision a resumed run must see again: epochs trained, and whether training had
    stopped (early stopping sets ``trainer.should_stop``, which Lightning does not save)."""

    def __init__(self) -> None:
        self.epochs_run = 0
        self.stopped = False

    def _update(self, trainer) -> None:
        self.epochs_run = trainer.current_epoch + 1  # during the epoch's end hooks current_epoch is still it
        self.stopped = bool(trainer.should_stop)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._update(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._update(trainer)

    def state_dict(self) -> dict:
        return {"epochs_run": self.epochs_run, "stopped": self.stopped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs_run = int(state_dict.get("epochs_run", 0))
        self.stopped = bool(state_dict.get("stopped", False))

    def on_train_start(self, trainer, pl_module) -> None:
        if self.stopped:
            trainer.should_stop = True  # the fit loop then ends before another epoch


def last_checkpoints(ckpt_dir: Path, every_n_steps: int, validates: bool) -> list[Callback]:
    """What a resumable training run needs: ``TrainingLength``, ``StopOnSignal`` and ``ckpt_dir/last.ckpt``,
    overwritten in place at the end of every epoch and, if ``every_n_steps``,
    every that many optimizer steps (one Lightning ModelCheckpoint triggers on steps or on epochs, not both).

    When the run validates, the epoch's save comes after its validation, so that a run resumed from it
    does not lose what validation decided (early stopping's count, the best epoch): Lightning does not
    validate that epoch again.
    """
    common = dict(dirpath=ckpt_dir, enable_version_counter=False)
    at_epoch_end = RelocatableCheckpoint(
        **common, filename="last", save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=not validates
    )
    resumable = [TrainingLength(), StopOnSignal(ckpt_dir), at_epoch_end]
    if not every_n_steps:
        return resumable
    return [
        *resumable,
        RelocatableCheckpoint(**common, save_last=True, save_top_k=0, every_n_train_steps=every_n_steps),
    ]


class BestCheckpoint(RelocatableCheckpoint):
    """``ckpt_dir/best.ckpt``: the epoch whose ``monitor`` improved on the best so far by more than
    ``min_delta``, the same test as Lightning's EarlyStopping, so the kept epoch is the one early stopping
    counts from. ``baseline`` (the untrained model's score) is the best before the first epoch: no file is
    written when no epoch beats it."""

    def __init__(self, ckpt_dir: Path, monitor: str, mode: str, min_delta: float, baseline: float | None = None):
        super().__init__(
            dirpath=ckpt_dir,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            enable_version_counter=False,
            save_on_train_epoch_end=False,  # at validation end, where the monitor is computed
        )
        self.min_delta, self.baseline = min_delta, baseline

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        best = self.best_model_score if self.best_k_models else None
        if best is None and self.baseline is not None:
            best = torch.tensor(self.baseline)
        if current is None or best is None:
            return super().check_monitor_top_k(trainer, current)
        # the expression of Lightning's EarlyStopping (float32 tensors, the same rounding), so both agree on
        # every round: Backtrack reads early stopping's verdict before this checkpoint is saved
        best = best.to(current)
        if self.mode == "min":
            return bool(torch.lt(current - (-self.min_delta), best))
        return bool(torch.gt(current - self.min_delta, best))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state_dict: dict) -> None:
        self.baseline = state_dict.get("baseline", self.baseline)
        super().load_state_dict(state_dict)
