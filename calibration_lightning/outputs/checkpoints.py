"""Checkpoints a run resumes from exactly, written atomically.

``checkpoints/last.ckpt`` (``ResumeCheckpoint``) is saved only at instants from which a resumed run goes on as an
uninterrupted one would:

- after a round's validation, once everything it decided is in place (early stopping's count, the best round,
  a backtrack's adapters and learning rate): Lightning does not validate that round again on resume;
- at the end of a pass over the training split when there is no validation split;
- every ``trainer.checkpoint_every_n_steps`` optimizer steps, and when a stop signal arrives, at an optimizer-step
  boundary (never between the micro-batches of one accumulated step, whose gradients a checkpoint does not hold)
  that is not a round's last step: a checkpoint there would resume after the step but skip the round's
  validation; a signal on that step waits for the save after validation.

Nothing a checkpoint holds names a path, so a run folder moved or copied elsewhere resumes the same.
``TrainingLength`` adds what Lightning leaves out (whether training had stopped, the rounds run).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from calibration_lightning.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its target (the same folder, so the same file system), flush it, and rename it
    into place: a job killed at any byte of a save leaves the previous checkpoint whole. Loads with
    ``weights_only=True``."""

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
            why = e.strerror if isinstance(e, OSError) and e.strerror else "the disk is full or a file size limit"
            raise UserError(
                f"cannot write the checkpoint {path} ({why}); the previous checkpoint is kept: free disk space "
                "(or raise the file size limit) and rerun with resume=true"
            ) from None

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class ResumeCheckpoint(Callback):
    """``ckpt_dir/last.ckpt`` at the instants of the module docstring; a stop signal (``run_state.stop_signals``)
    saves it at the next such instant and stops the run (``Preempted``)."""

    def __init__(self, ckpt_dir: Path, every_n_steps: int, validates: bool) -> None:
        self.path = Path(ckpt_dir) / "last.ckpt"
        self.every_n_steps, self.validates = every_n_steps, validates

    def _save(self, trainer, signum: int | None = None) -> None:
        from calibration_lightning.outputs.run_state import Preempted, hand_over

        trainer.save_checkpoint(self.path, weights_only=False)
        if signum is not None:
            hand_over(signum)  # a launcher's own handler (submitit requeues the job, then exits)
            raise Preempted(signum, self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from calibration_lightning.outputs.run_state import stop_requested

        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        last = done >= trainer.num_training_batches
        if last or (done % trainer.accumulate_grad_batches != 0):
            return  # a round's last step is saved after its validation; mid-accumulation is no instant
        signum = stop_requested()
        if signum is not None or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self._save(trainer, signum)

    def on_validation_end(self, trainer, pl_module) -> None:
        from calibration_lightning.outputs.run_state import stop_requested

        if trainer.state.fn == "fit" and not trainer.sanity_checking and self.validates:
            self._save(trainer, stop_requested())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from calibration_lightning.outputs.run_state import stop_requested

        if not self.validates:
            self._save(trainer, stop_requested())


class TrainingLength(Callback):
    """The training-length decision a resumed run must see again: rounds trained, and whether training had
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
