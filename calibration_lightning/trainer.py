"""The Lightning Trainers of a run, from the ``trainer`` config section: Lightning's own arguments passed through,
but ``trainer.max_epochs`` (the most passes of every trained method) and ours, ``checkpoint_every_n_steps``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from calibration_lightning.outputs.checkpoints import AtomicCheckpointIO
from calibration_lightning.schema import OURS, build


def lightning_kwargs(args: dict) -> dict:
    """The Trainer arguments to pass on: a ``_target_`` strategy built, ours and ``max_epochs`` left out."""
    kwargs = {k: v for k, v in args.items() if k not in OURS and k != "max_epochs"}
    if isinstance(kwargs.get("strategy"), dict):
        kwargs["strategy"] = build(kwargs["strategy"], "trainer.strategy", _convert_="all")
    plugins = kwargs.pop("plugins", None) or []
    kwargs["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()]
    return kwargs


def device(args: dict) -> str:
    """Where the model loads: CUDA when the trainer may use a GPU and one is there."""
    wants_gpu = args.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def make_trainer(args: dict, logger, out_dir: Path, callbacks: list | None = None, **overrides) -> L.Trainer:
    """A Trainer with the run's arguments, ``callbacks`` and ``overrides`` (``max_epochs``, ``max_steps``, ...).
    Lightning's own checkpointing stays off: the run's callbacks write every checkpoint it keeps."""
    kwargs = {**lightning_kwargs(args), **overrides}
    kwargs.setdefault("enable_model_summary", False)
    return L.Trainer(
        **kwargs,
        logger=logger,
        default_root_dir=out_dir,
        callbacks=callbacks or [],
        enable_checkpointing=False,
        use_distributed_sampler=False,  # batches are sharded by our own samplers (length-grouped)
    )
