"""Checkpoints that survive a kill at any moment: the last state (every N steps and every epoch end) and,
when the training length is chosen on validation, the best epoch's."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write the checkpoint beside its target and rename it into place: a job killed mid-save leaves the
    previous checkpoint whole. Loading uses ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def last_checkpoints(ckpt_dir: Path, every_n_steps: int, validates: bool) -> list[ModelCheckpoint]:
    """``ckpt_dir/last.ckpt``, overwritten in place at the end of every epoch and, if ``every_n_steps``,
    every that many optimizer steps (one Lightning ModelCheckpoint triggers on steps or on epochs, not both).

    When the run validates, the epoch's save comes after its validation, so that a run resumed from it
    does not lose what validation decided (early stopping's count, the best epoch): Lightning does not
    validate that epoch again.
    """
    common = dict(dirpath=ckpt_dir, enable_version_counter=False)
    at_epoch_end = ModelCheckpoint(
        **common, filename="last", save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=not validates
    )
    if not every_n_steps:
        return [at_epoch_end]
    return [at_epoch_end, ModelCheckpoint(**common, save_last=True, save_top_k=0, every_n_train_steps=every_n_steps)]


class BestCheckpoint(ModelCheckpoint):
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
        gain = best - current if self.mode == "min" else current - best
        return bool(gain > self.min_delta)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state_dict: dict) -> None:
        self.baseline = state_dict.get("baseline", self.baseline)
        super().load_state_dict(state_dict)
