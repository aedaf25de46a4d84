"""The run's loggers (the ``logger`` group: a list of Lightning loggers, ``logs/metrics.csv`` always among them)
and what a finished run sends them: its config, every number of metrics.json flattened (before and after, the
change, the intervals, the objective) and the reliability diagrams."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)


def build_loggers(nodes: dict) -> list:
    """One Lightning logger per ``logger.NAME`` node, the CSV logger first."""
    from calibration_lightning.schema import build

    order = sorted(nodes, key=lambda name: name != "csv")
    return [build(nodes[name], f"logger.{name}") for name in order]


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(
    project: str, name: str, save_dir: str, entity: str | None = None, group: str | None = None,
    tags: list[str] | None = None,
):  # fmt: skip
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
        project=project, entity=entity, name=name, save_dir=save_dir, group=group, tags=list(tags or []), mode=mode,
        settings={"init_timeout": 120},
    )  # fmt: skip


def summary_numbers(summary: dict) -> dict[str, float]:
    """metrics.json's numbers as flat keys: ``before/test/conf_ece``, ``after/test/conf_ece_debiased_lo``, ...,
    ``change/test/accuracy`` (and ``_lo``, ``_hi``), ``objective``."""
    sets = {"test": summary, **summary.get("eval_sets", {})}
    flat: dict[str, float] = {}
    for name, block in sets.items():
        if "before" not in block:
            continue
        for phase in ("before", "after"):
            for key, value in block[phase].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    flat[f"{phase}/{name}/{key}"] = value
                elif isinstance(value, dict):  # an interval dict (its key says its level)
                    for metric, ci in value.items():
                        if isinstance(ci, list):
                            flat[f"{phase}/{name}/{metric}_lo"], flat[f"{phase}/{name}/{metric}_hi"] = ci
        for metric, change in block.get("improvement", {}).items():
            flat[f"change/{name}/{metric}"] = change["difference"]
            ci = next((v for k, v in change.items() if k.startswith("ci") and isinstance(v, list)), None)
            if ci:
                flat[f"change/{name}/{metric}_lo"], flat[f"change/{name}/{metric}_hi"] = ci
    if isinstance(summary.get("objective"), (int, float)):
        flat["objective"] = summary["objective"]
    return flat


def publish_run(loggers: list, config: dict, summary: dict, images: dict[str, Path]) -> None:
    """Send the redacted config, metrics.json's numbers and the reliability diagrams to each logger that takes
    them (the CSV log has metrics.json beside it); close W&B's run (one per Hydra job, also in sweeps)."""
    from lightning.pytorch.loggers import CSVLogger

    numbers = summary_numbers(summary)
    for logger in loggers:
        logger.log_hyperparams(config)
        if isinstance(logger, CSVLogger):
            continue
        logger.log_metrics(numbers)
        if hasattr(logger, "log_image"):  # W&B
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)])
        if hasattr(getattr(logger, "experiment", None), "log_artifact") and getattr(logger, "run_id", None):
            for path in images.values():  # MLflow
                logger.experiment.log_artifact(logger.run_id, str(path))
        logger.save()
        if hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
