"""A W&B logger that never fails a run for lack of network or credentials."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(
    project: str,
    name: str,
    save_dir: str,
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
):
    """``WandbLogger`` in the mode WANDB_MODE asks for; offline when no API key is configured.

    The key is read by wandb from the environment or ~/.netrc; it is never passed through our config. W&B records
    ``sys.argv`` as the run's arguments: ``__main__`` has already replaced each secret override's value there by
    an ``${oc.env:...}`` reference (see ``calibration_lightning.redaction``).
    """
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE")
    if mode is None and not _has_credentials():
        log.warning("No W&B credentials found: logging offline to %s/wandb (sync later with `wandb sync`)", save_dir)
        mode = "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        name=name,
        save_dir=save_dir,
        group=group,
        tags=list(tags or []),
        mode=mode,
        settings={"init_timeout": 120},
    )


def publish_run(logger, config: dict, images: dict[str, Path]) -> None:
    """Send the resolved (redacted) config and the reliability diagrams to loggers that take them."""
    if logger is None or logger is False:
        return
    logger.log_hyperparams(config)
    if hasattr(logger, "log_image"):
        for key, path in images.items():
            logger.log_image(key=key, images=[str(path)])
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "finish"):
        experiment.finish()  # one W&B run per Hydra job, also in multirun and sweeps
