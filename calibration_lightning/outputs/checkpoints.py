"""Checkpoints a run resumes from exactly, written atomically. ``checkpoints/last.ckpt`` (``ResumeCheckpoint``) is
saved only at instants from which a resumed run goes on as an uninterrupted one would (docs/resume.md): after a
round's validation, at the end of a pass without a validation split, and every ``trainer.checkpoint_every_n_steps``
optimizer steps or at a stop signal, at an optimizer-step boundary that is not a round's last step.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from calibration_lightning.errors import UserError
from calibration_lightning.outputs.fingerprint import differences
from calibration_lightning.outputs.run_state import Preempted, hand_over, stop_requested


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its target (the same file system), flush it and rename it into place: a job killed
    at any byte of a save leaves the previous checkpoint whole. Loads with ``weights_only=True``."""

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
    """``ckpt_dir/last.ckpt`` at the instants of the module docstring; a stop signal saves it at the next one and
    stops the run (``Preempted``). Every checkpoint holds the run's ``fingerprint``, which a resume must match."""

    def __init__(self, ckpt_dir: Path, every_n_steps: int, validates: bool, fingerprint: dict) -> None:
        self.path = Path(ckpt_dir) / "last.ckpt"
        self.every_n_steps, self.validates, self.fingerprint = every_n_steps, validates, fingerprint

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["fingerprint"] = self.fingerprint  # every checkpoint of the run, best.ckpt too

    def _save(self, trainer, signum: int | None = None) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        if signum is not None:
            hand_over(signum)  # a launcher's own handler (submitit requeues the job, then exits)
            raise Preempted(signum, self.path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        last = done >= trainer.num_training_batches
        if last or (done % trainer.accumulate_grad_batches != 0):
            return  # a round's last step is saved after its validation; mid-accumulation is no instant
        signum = stop_requested()
        if signum is not None or (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self._save(trainer, signum)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self.validates:
            self._save(trainer, stop_requested())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
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


CHECKPOINT_KEYS = {  # what a resumed run reads
    "fingerprint": dict, "state_dict": dict, "epoch": int, "global_step": int, "pytorch-lightning_version": str,
    "loops": dict, "callbacks": dict, "optimizer_states": list, "lr_schedulers": list,
}  # fmt: skip
BEST_KEYS = ("fingerprint", "state_dict", "epoch")


def check_checkpoints(out_dir: Path, fingerprint: dict | None = None) -> None:
    """Check every checkpoint under ``out_dir/checkpoints`` as the resumed run will read it, then the metrics log
    it appends to, the plainest damage first: each loads and holds what the resume reads, of the right types; the
    log reads; and, with ``fingerprint`` (the resumed run's), each was trained with the same settings, data and
    weights. Raises ``UserError`` naming the file, what is wrong and what to do."""
    from calibration_lightning.models.artifacts import Unloadable, load_tensors
    from calibration_lightning.outputs.csv_logger import read_metrics_log

    start_over = f"delete {out_dir / 'checkpoints'} and rerun without resume=true to train from the start"
    loaded = {}
    for path in sorted((out_dir / "checkpoints").rglob("*.ckpt")):
        try:
            loaded[path] = load_tensors(path)
        except Unloadable as e:
            what = f"not a readable checkpoint ({e})"
            if e.unsafe:
                what = "refused: the checkpoint holds Python objects other than tensors (not written by this program)"
            raise UserError(f"{path}: {what}; {start_over}") from None
    for path, ckpt in loaded.items():
        problem = checkpoint_problem(ckpt, best=path.name == "best.ckpt")
        if problem:
            raise UserError(f"{path}: not a checkpoint this program can resume from ({problem}); {start_over}")
    log_file = out_dir / "logs" / "metrics.csv"
    if os.path.lexists(log_file):
        read_metrics_log(log_file)
    for path, ckpt in loaded.items() if fingerprint else ():
        changed = differences(ckpt["fingerprint"], fingerprint)
        if changed:
            more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
            raise UserError(
                f"resume=true: {path} was trained with other settings or data ({'; '.join(changed[:6])}{more}); "
                "resuming would mix two runs: pass the run's own settings (its .hydra/overrides.yaml), or start a new "
                "run in another hydra.run.dir"
            )


def checkpoint_problem(ckpt: object, best: bool = False) -> str | None:
    """What in a loaded checkpoint a resume could not use (a missing key, a value of the wrong type), or None.
    ``best``: best.ckpt, of which only ``BEST_KEYS`` are read."""
    from packaging.version import InvalidVersion, Version

    if not isinstance(ckpt, dict):
        return f"a {type(ckpt).__name__}, not a dict"
    needs = BEST_KEYS if best else tuple(CHECKPOINT_KEYS)
    missing = [k for k in needs if k not in ckpt]
    if missing:
        return f"no {', '.join(missing)}"
    for key in needs:
        kind, value = CHECKPOINT_KEYS[key], ckpt[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            return f"{key} is {value!r:.40}, expected {'an integer >= 0' if kind is int else f'a {kind.__name__}'}"
    bad = next((k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        return f"state_dict[{bad!r}] is not a tensor"
    if best:
        return None
    try:
        Version(ckpt["pytorch-lightning_version"])
    except InvalidVersion:
        return f"pytorch-lightning_version is {ckpt['pytorch-lightning_version']!r:.40}, not a version"
    if not isinstance(ckpt["loops"].get("fit_loop"), dict):
        return "loops holds no fit_loop state"
    if not all(isinstance(s, dict) and {"state", "param_groups"} <= s.keys() for s in ckpt["optimizer_states"]):
        return "optimizer_states holds something other than optimizer states"
    return None
