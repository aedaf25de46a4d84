"""``python -m calibration_lightning [GROUP=OPTION ...] [KEY=VALUE ...]``: the Hydra entry point.

Secrets leave the command line first (``redaction``); ``startup.StartupChecks`` checks every job before Hydra writes
the run directory. Every user error ends as one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(signum, frame) -> None:
    """Ctrl-C or SIGTERM before the run's own handlers are in place (imports, composing, the start-up checks):
    nothing of the run has been written yet; exit 128 + signal with one line, no traceback."""
    name = signal.Signals(signum).name
    again = "the same command (it resumes: resume=true)" if "resume=true" in sys.argv else "the same command"
    print(f"interrupted: stopped by {name} while starting, before the run began; to start it, run {again}",
          file=sys.stderr, flush=True)  # fmt: skip
    # os._exit, not sys.exit: a SystemExit raised inside an import half done (numpy's lazy submodules) recursed
    # into a RecursionError traceback; nothing of the run is open yet to be closed
    os._exit(128 + signum)


def task(cfg) -> float | None:
    """Run one configuration; returns its ``objective``, the validation metric sweeps optimise."""
    import logging
    import warnings

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
    signal.signal(signal.SIGINT, _stopped_while_starting)  # first: the imports below take seconds
    signal.signal(signal.SIGTERM, _stopped_while_starting)

    import hydra

    from calibration_lightning.redaction import hide_secret_overrides
    from calibration_lightning.schema import CONF_DIR
    from calibration_lightning.startup import reported

    sys.argv[1:] = hide_secret_overrides(sys.argv[1:])
    # Hydra prints a config mistake found while composing as several lines with exit 1; let it raise instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    with reported():
        hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)()


if __name__ == "__main__":
    main()
