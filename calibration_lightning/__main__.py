"""``python -m calibration_lightning [overrides]``: the Hydra entry point."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from calibration_lightning.config import CONF_DIR
from calibration_lightning.errors import UserError

log = logging.getLogger("calibration_lightning")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Run one configuration; returns the after-training test conf-ECE (the value sweeps optimise)."""
    from calibration_lightning.run import run

    # Lightning's start-up notices (accelerator, tips) come once per Trainer and twice through Hydra's
    # root handler; warnings and errors still show.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # Deprecation notices raised inside transformers / Lightning themselves: nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Our evaluation batch sampler returns every index once (length-sorted); Lightning cannot know that.
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*for prediction.*")
    try:
        result = run(cfg)
    except UserError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return result.get("after", {}).get("conf_ece")


if __name__ == "__main__":
    main()
