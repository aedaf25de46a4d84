"""``python -m calibration_lightning [overrides]``: the Hydra entry point, with the command line checked first.

Hydra composes the config, creates the run directory and writes ``.hydra/`` and the job log before it calls the
task, and reports its own config errors with exit 1. So, before Hydra starts, ``check_command_line``:

- moves secret values given as overrides (``+judge.api_key=...``: see ``redaction.hide_secret_overrides``) into
  environment variables; the command line, ``.hydra/``, the log and the W&B run's arguments hold
  ``${oc.env:CALIBRATION_LIGHTNING_SECRET_N}`` instead;
- composes the config the way Hydra will (each job of a ``-m`` sweep) and turns a misspelt key, an unknown option
  or a bad override into one ``error:`` line with Hydra's list of allowed options;
- for a run, checks every value (``config.check_config``) and the run directory (``check_run_dir``): a finished
  or unfinished run is refused before Hydra touches its directory; a resumed run's data is read and checked here
  too, so a bad file leaves that run's ``.hydra/`` and log as they were.

Every user error ends as one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from calibration_lightning.config import CONF_DIR
from calibration_lightning.errors import ConfigError, UserError
from calibration_lightning.redaction import hide_secret_overrides

log = logging.getLogger("calibration_lightning")

MAX_CHECKED_JOBS = 100  # a larger sweep checks its first jobs here; every job still checks itself before loading
KEYS_HINT = "`python -m calibration_lightning --cfg job` shows every key and `--help` the options of each group"


def one_line(text: object) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text).strip())


def hydra_message(e: Exception) -> str:
    """Hydra's (or OmegaConf's) message for a config mistake on one line, keeping its list of allowed options."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    parts: list[str] = []
    for line in str(e).split("Config search path:")[0].splitlines():
        if line.startswith("\t") and parts:  # one allowed option per line
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        elif line.strip():
            parts.append(line.strip())
    message = " ".join(p if p[-1] in ".:;" else p + "." for p in parts)[:-1]
    if isinstance(e, OverrideParseException):
        message = f"override {e.override!r}: {message}"
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        message += f" ({str(cause).strip().splitlines()[0]})"
    return f"{message}; {KEYS_HINT}"


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The override lists of a ``-m`` sweep's jobs (discrete sweeps: ``a=1,2``, ``choice``, ``range``);
    None when a sweep is not a list of values (a sweeper plugin's interval), which the sweeper checks."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for text, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if not o.is_sweep_override():
            choices.append([text])
        elif o.is_discrete_sweep():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            return None
    return [list(job) for job in itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS)]


def check_job(cfg: DictConfig, run_dir: bool) -> None:
    """The start-up checks of one composed job (``cfg`` with its ``hydra`` node), as ``run`` makes them."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from calibration_lightning.config import check_config
    from calibration_lightning.outputs.run_outputs import check_run_dir
    from calibration_lightning.outputs.run_state import claim_run_dir

    out_dir = Path(os.path.abspath(str(cfg.hydra.run.dir)))  # as Hydra's run_job
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} resolves as in the run
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    methods = check_config(task)
    if run_dir:
        check_run_dir(out_dir, task.resume, task)
        if task.resume and out_dir.exists():  # a resumed run's directory holds its .hydra/ and log: read the data
            from calibration_lightning.assembly import check_splits, load_data  # now, before Hydra rewrites them

            check_splits(task, load_data(task)[0], methods)
        claim_run_dir(out_dir, task.resume)  # its checkpoints, then its lock, held through the run


def _is_launched_rank() -> bool:
    """A process Lightning's DDP launcher started for rank > 0 (the run directory is rank 0's, already checked)."""
    return any(os.environ.get(v, "0") != "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def check_command_line(argv: list[str]) -> list[str]:
    """Check a command line before Hydra starts (see the module docstring); returns it with secrets hidden.

    Raises:
        ConfigError: a config mistake Hydra or our checks found, on one line.
        UserError: e.g. the run directory already holds a run.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser  # the parser hydra.main uses
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = hide_secret_overrides(argv)  # before any parser can quote a secret in an error
    args = get_args_parser().parse_args(argv)
    try:
        overrides = args.overrides
        other = args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
        if other or args.config_path or args.config_dir:
            return argv  # nothing composed here, or another config folder: Hydra reports on its own
        jobs = sweep_jobs(overrides) if args.multirun else [overrides]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for job in jobs or []:
                cfg = compose(args.config_name or "config", overrides=job, return_hydra_config=True)
                if not args.cfg:
                    check_job(cfg, run_dir=not args.multirun and not _is_launched_rank())
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(hydra_message(e)) from None
    return argv


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
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
    from calibration_lightning.outputs.run_state import WRITE_ERRNOS, Preempted, resume_hint

    try:
        result = run(cfg)
    except UserError as e:
        log.error("%s", one_line(e))
        fail(e)
    except Preempted as e:
        message = resume_hint(Path(cfg.output_dir), e)
        log.error("%s", message)
        print(f"interrupted: {message}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # a full disk, ``ulimit -f``, a folder made read-only during the run
        if e.errno not in WRITE_ERRNOS:
            raise
        fail(
            UserError(
                f"cannot write {e.filename or 'an output'} ({e.strerror}); the outputs written so far are "
                "kept: free disk space or fix the permission, then rerun with resume=true"
            )
        )
    return result.get("after", {}).get("conf_ece")


def fail(e: UserError) -> None:
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    from calibration_lightning.outputs.run_state import FinishedRun

    try:
        sys.argv[1:] = check_command_line(sys.argv[1:])
    except UserError as e:
        fail(e)
    except FinishedRun as e:  # resume=true on a finished run: nothing to do, nothing rewritten
        print(one_line(e), file=sys.stderr)
        sys.exit(0)
    hydra_main()


if __name__ == "__main__":
    main()
