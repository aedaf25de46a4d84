"""``python -m calibration_lightning [GROUP=OPTION ...] [KEY=VALUE ...]``: the Hydra entry point.

Hydra composes the config against the schema (``schema.py``: types, choices, unknown keys), and its callback
``startup.StartupChecks`` (``hydra.callbacks`` in conf/config.yaml) checks every job before Hydra writes the
run directory. Secret values given on the command line are moved into environment variables first
(``redaction.hide_secret_overrides``). Every user error ends as one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from calibration_lightning.redaction import hide_secret_overrides
from calibration_lightning.schema import CONF_DIR
from calibration_lightning.startup import reported


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one configuration; returns its ``objective``, the validation metric sweeps optimise."""
    from calibration_lightning.recipe import run

    # Lightning's start-up notices (accelerator, tips) come once per Trainer and twice through Hydra's
    # root handler; warnings and errors still show.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # Deprecation notices raised inside transformers / Lightning themselves: nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Our evaluation batch sampler returns every index once (length-sorted); Lightning cannot know that.
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*for prediction.*")
    return run(cfg).get("objective")


def main() -> None:
    sys.argv[1:] = hide_secret_overrides(sys.argv[1:])
    # Hydra prints a config mistake found while composing as several lines with exit 1; let it raise instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with reported():
        hydra_main()


if __name__ == "__main__":
    main()
