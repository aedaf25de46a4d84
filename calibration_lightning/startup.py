"""Every start-up check of a job (``check_job``), and the Hydra callback that runs them before Hydra writes anything.

``StartupChecks`` checks a run in ``on_run_start`` (before Hydra writes ``.hydra/`` and the job log, so a refused
run leaves a finished or interrupted run as it was) and every job of a ``-m`` sweep in ``on_multirun_start``
(one bad job refuses the whole sweep). Every user error ends as one ``error: ...`` line and exit code 2. The data
the callback reads is held for the run that follows in the same process, so a run reads its data once.
"""

from __future__ import annotations

import copy
import errno
import itertools
import json
import logging
import os
import re
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from calibration_lightning.data.splits import Splits, split_records
from calibration_lightning.errors import ConfigError, UserError
from calibration_lightning.schema import Config, build, validate

log = logging.getLogger("calibration_lightning")

KEYS_HINT = "`python -m calibration_lightning --cfg job` shows every key and `--help` the options of each group"


@dataclass
class Job:
    config: Config
    splits: Splits
    eval_sets: dict


_CHECKED: dict[str, tuple] = {}  # dataset config -> (splits, eval_sets) read by the callback, until a run takes it


def load_data(config: Config) -> tuple[Splits, dict]:
    """The splits of ``dataset.source`` (test from ``dataset.test_source`` when set), and the ``eval_sets``."""
    dataset = config.dataset
    split = {k: getattr(dataset.split, k) for k in ("train", "val", "test", "seed")}
    if dataset.test_source:
        split["test"] = 0
    splits = split_records(build(dataset.source, "dataset.source"), **split)
    if dataset.test_source:
        splits = Splits(splits.train, splits.val, build(dataset.test_source, "dataset.test_source"))
    eval_sets = {name: build(node, f"eval_sets.{name}") for name, node in config.eval_sets.items()}
    return splits, eval_sets


def job_data(cfg: DictConfig, config: Config, keep: bool = False) -> tuple:
    """``load_data``'s result; ``keep``: held for the run of this process that asks next for the same dataset config;
    without, what the callback held is taken."""
    key = json.dumps([OmegaConf.to_container(cfg[k], resolve=True) for k in ("dataset", "eval_sets")], default=str)
    if keep:
        _CHECKED[key] = _CHECKED.get(key) or load_data(config)
        return _CHECKED[key]
    return _CHECKED.pop(key, None) or load_data(config)


def check_splits(config: Config, splits: Splits) -> None:
    """Refuse, before any model loads, a split the method needs that came out empty."""
    methods = config.method.trained()
    selects = any(m.select or m.lr_search for m in methods.values())
    chooses = config.method.calibrator is not None or len(methods) > 1 or selects
    needs = {"train": bool(methods), "val": chooses, "test": True}
    why = {"train": "trains on it", "val": "fits or chooses on it", "test": "reports on it"}
    if selects and not splits.val:
        why["val"] += (
            " (method.select chooses the training length and method.lr_search the learning rate; "
            "method.select=null method.lr_search=null train method.epochs at method.optim.lr)"
        )
    for split, needed in needs.items():
        if needed and not getattr(splits, split):
            raise ConfigError(
                f"dataset.split.{split}: the {split} split is empty, and method={config.method.name} {why[split]} "
                f"(found train={len(splits.train)}, val={len(splits.val)}, test={len(splits.test)}); "
                f"give dataset.split.{split} a count > 0 or a fraction (or use a larger data file)"
            )


def check_job(cfg: DictConfig, out_dir: Path | None = None, keep: bool = False, claim: bool = True) -> Job:
    """Every start-up check of one job's config (without its ``hydra`` node): ``validate``, the run directory
    ``out_dir`` (None: not checked, e.g. a DDP rank > 0), the data and its splits, a resumed run's checkpoints and,
    with ``claim``, the folder's lock. Raises a UserError, or ``run_state.FinishedRun`` (resume of a finished run)."""
    from calibration_lightning.outputs.checkpoints import check_checkpoints
    from calibration_lightning.outputs.fingerprint import fingerprint
    from calibration_lightning.outputs.run_state import check_run_dir, lock_run_dir

    config = validate(cfg)
    if out_dir is not None:
        check_run_dir(out_dir, config.resume)
    splits, eval_sets = job_data(cfg, config, keep)
    check_splits(config, splits)
    if out_dir is not None and config.resume and (out_dir / "checkpoints").is_dir():
        source = build(config.model.loader, "model.loader")
        check_checkpoints(out_dir, fingerprint(cfg, splits, eval_sets, source, config.model.adapter))
    if out_dir is not None and claim:
        lock_run_dir(out_dir)  # held until the run ends
    return Job(config, splits, eval_sets)


def one_line(text: object) -> str:
    """``text`` on one line, without any secret (``redaction.redact``): every message a user sees goes through it."""
    from calibration_lightning.redaction import redact

    return redact(re.sub(r"\s*\n\s*", " ", str(text).strip()))


def fail(message: object) -> NoReturn:
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def unknown_override(message: str) -> str | None:
    """Hydra's refusal of ``KEY=VALUE`` for a key the config does not have, in our words: the nearest valid keys,
    or, for a Lightning Trainer argument the default config leaves out, how to add it (never a hint that fails)."""
    from calibration_lightning.schema import keys_at, nearest

    found = re.search(r"Could not override '([^']+)'", message)
    if not found:
        return None
    key = found.group(1)
    parent, _, last = key.rpartition(".")
    valid = keys_at(parent)
    if parent == "trainer" and last in valid:
        return f"{key}: a Lightning Trainer argument the trainer config does not set; add it with +{key}=VALUE"
    return nearest(key, valid or [])


def null_parent_override(argv: list[str]) -> str:
    """The refusal of an override whose parent is null (``method=none method.select.patience=3``): the first whose
    parent is null in the config composed without the overrides that go below a section."""
    from hydra import compose, initialize_config_dir

    from calibration_lightning.schema import CONF_DIR

    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra."))]
    deep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").count(".") >= 2]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[o for o in overrides if o not in deep])
    for override in deep:
        parent = override.split("=", 1)[0].lstrip("+~").rsplit(".", 1)[0]
        if OmegaConf.select(cfg, parent, default="missing") is None:
            return f"{override}: {parent} is null in this config (not used by this choice); drop the override"
    return f"an override sets a key under a section that is null in this config: {' '.join(deep)}"


def hydra_message(e: Exception) -> str:
    """Hydra's (or OmegaConf's) message for a config mistake on one line, keeping its list of allowed options."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if ours := unknown_override(str(e)):
        return ours
    parts: list[str] = []
    for line in str(e).split("Config search path:")[0].splitlines():
        if line.startswith("\t") and parts:  # one allowed option per line
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        elif line.strip() and not line.startswith(("    full_key:", "    object_type=", "    reference_type=")):
            parts.append(line.strip())
    message = " ".join(p if p[-1] in ".:;" else p + "." for p in parts)[:-1]
    if isinstance(e, OverrideParseException):
        message = f"override {e.override!r}: {message}"
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        message += f" ({str(cause).strip().splitlines()[0]})"
    return f"{message}; {KEYS_HINT}"


def long_name_message(e: OSError) -> str:
    """A path the file system refused as too long (``ENAMETOOLONG``), naming the command-line key that holds it."""
    path = str(e.filename or "")
    name = max(path.split(os.sep), key=len)
    values = (a.split("=", 1) for a in sys.argv[1:] if "=" in a and not a.startswith("-"))
    key = next((k.lstrip("+~") for k, v in values if name and name in v), "a path")
    size, shown = len(name.encode()), f"{name[:24]}...{name[-8:]}" if len(name) > 40 else name
    what = f"a name of {size} bytes ({shown}), over the file system's 255" if size > 255 else "a path over the limit"
    return f"{key}: {what}; choose a shorter path"


@contextmanager
def reported():
    """A user error, a config mistake or a path too long for the file system raised inside: one ``error:`` line
    and exit 2. ``resume=true`` on a finished run: its message and exit 0, nothing rewritten."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from calibration_lightning.outputs.run_state import FinishedRun, Preempted, resume_hint

    try:
        yield
    except Preempted as e:  # a stop signal: how to resume (or restart), exit 128 + signal
        if e.out_dir is None:
            message = f"stopped by {signal.Signals(e.signum).name} while starting, before the run began"
        else:
            message = resume_hint(e.out_dir, e)
            log.error("%s", message)
        print(f"interrupted: {message}", file=sys.stderr)
        sys.exit(e.exit_code)
    except UserError as e:
        fail(e)
    except (HydraException, OmegaConfBaseException) as e:
        fail(hydra_message(e))
    except AssertionError as e:  # OmegaConf, for KEY=VALUE under a node that is null in this config
        if "Unexpected type for root: NoneType" not in str(e):
            raise
        fail(null_parent_override(sys.argv[1:]))
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        fail(long_name_message(e))
    except FinishedRun as e:
        print(one_line(e), file=sys.stderr)
        sys.exit(0)


def _check_composed(config: DictConfig, out_dir: Path, claim: bool = True) -> None:
    """``check_job`` on a composed config with its ``hydra`` node, its output dir ``out_dir`` as run_job sets it."""
    from calibration_lightning.outputs.run_state import is_launched_rank

    out_dir = Path(os.path.abspath(out_dir))
    if any(len(part.encode()) > 255 for part in out_dir.parts):  # the OS says so only once a parent exists
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(out_dir))
    with open_dict(config):
        config.hydra.runtime.output_dir = str(out_dir)
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        task = copy.deepcopy(config)
        with open_dict(task):
            del task["hydra"]
        check_job(task, None if is_launched_rank() else out_dir, keep=True, claim=claim)
    finally:
        HydraConfig.instance().cfg = saved


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The override lists of a ``-m`` sweep's jobs, as Hydra's BasicSweeper makes them (``hydra.sweeper.params``
    then the command line, a later key replacing an earlier one); None for another sweeper (it checks itself)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_")).endswith(".BasicSweeper"):  # Hydra's default sweeper
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    params += list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    choices: dict[str, list[str]] = {}
    for o in parser.parse_overrides(params):
        key = o.get_key_element()
        if o.is_discrete_sweep():
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        elif not o.is_sweep_override():
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
        else:
            return None  # an interval: BasicSweeper refuses it with its own message
    return [list(job) for job in itertools.product(*choices.values())]


class StartupChecks(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported():
            _check_composed(config, Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from calibration_lightning.outputs.run_state import FinishedRun

        jobs, finished = sweep_jobs(config) or [], 0
        with reported():
            loader = GlobalHydra.instance().config_loader()
            for num, overrides in enumerate(jobs):
                job = loader.load_sweep_config(config, overrides)  # as the launcher composes each job
                with open_dict(job):
                    job.hydra.job.num, job.hydra.job.id = num, f"check_{num}"
                try:
                    _check_composed(job, Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir), claim=False)
                except FinishedRun:
                    finished += 1  # resume=true: that job returns the results it holds, and writes nothing
        record = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        self.kept = (record, record.read_bytes()) if jobs and finished == len(jobs) and record.exists() else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep resumed whose every job had finished ran nothing: the launcher's record is put back as it was."""
        from calibration_lightning.outputs.files import atomic_write

        if getattr(self, "kept", None) and self.kept[0].read_bytes() != self.kept[1]:
            atomic_write(self.kept[0], lambda tmp: tmp.write_bytes(self.kept[1]))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """A job's user error: one ``error:`` line, exit 2; a write that failed (full disk, ``ulimit -f``, a folder
        made read-only): one line, exit 2. (A stop signal is no error: it leaves Hydra's job runner, ``reported``.)"""
        from calibration_lightning.outputs.run_state import WRITE_ERRNOS

        error = job_return._return_value  # the property would print Hydra's "Error executing job" line first
        if job_return.status != JobStatus.FAILED:
            return
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            error = UserError(
                f"cannot write {error.filename or 'an output'} ({error.strerror}); the outputs written so far are "
                "kept: free disk space or fix the permission, then rerun with resume=true"
            )
        if isinstance(error, UserError):
            log.error("%s", one_line(error))  # the job log keeps the reason
            fail(error)


def option_groups() -> str:
    """``--help``'s list of option groups, one line each (the private fragments of conf/_base/ left out)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()

    def options(group: str) -> list[str]:
        found = list(loader.get_group_options(group, ObjectType.CONFIG))
        for sub in loader.get_group_options(group, ObjectType.GROUP):
            found += [f"{sub}/{o}" for o in options(f"{group}/{sub}")]
        return sorted(found)

    groups = [g for g in sorted(loader.list_groups("")) if not g.startswith("_") and g != "hydra"]
    return "".join(f"{g}: {', '.join(options(g))}\n" for g in groups)


def output_dir() -> str:
    """``hydra.runtime.output_dir``, or where Hydra has not set it yet (``--cfg job --resolve``) the one it will."""
    hydra = HydraConfig.get()
    if hydra.runtime.output_dir:
        return str(hydra.runtime.output_dir)
    if str(hydra.mode) == "RunMode.MULTIRUN":
        return str(Path(hydra.sweep.dir) / str(hydra.sweep.subdir))
    return str(hydra.run.dir)


def finished_job(resume: bool) -> bool:
    """Whether the job Hydra is starting is a finished run resumed (``resume=true``, metrics.json in its folder):
    it returns what it holds, and Hydra must write nothing there (``hydra.output_subdir``, the job log)."""
    folder = HydraConfig.get().runtime.output_dir
    return bool(resume and folder and (Path(folder) / "metrics.json").exists())


OmegaConf.register_new_resolver("calibration_lightning.groups", option_groups, replace=True)
OmegaConf.register_new_resolver(
    "calibration_lightning.hydra_subdir", lambda resume: None if finished_job(resume) else ".hydra", replace=True
)
OmegaConf.register_new_resolver(
    "calibration_lightning.job_log",
    lambda resume, name: os.devnull if finished_job(resume) else str(Path(output_dir()) / f"{name}.log"),
    replace=True,
)
OmegaConf.register_new_resolver("calibration_lightning.output_dir", output_dir, replace=True)
