"""A run folder's life: one run in it at a time, resumed only with the settings it started with, its
checkpoints checked before anything loads, and a scheduler's stop signal turned into a saved checkpoint and
an exit code that says the run did not finish.

- ``lock_run_dir``: an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` for the life of the process (the kernel
  drops it when the process dies, so a killed run leaves no stuck lock); a second run there is refused.
- ``save_settings`` / ``check_resume``: the settings that change a run's result (``RESULT_KEYS``) are saved in
  ``.run_settings.json`` when training starts; ``resume=true`` with other values is refused, naming them.
- ``check_checkpoints``: every ``*.ckpt`` a resumed run will read is loaded once (``weights_only``) at start-up,
  its keys, types and adapter shapes checked against the model the config builds; and ``logs/metrics.csv``.
- ``stop_signals``: SIGTERM and SIGINT (and, under SLURM, the requeue signal a launcher already handles) stop
  the run at the next training step with a checkpoint, exit ``128 + signal`` and say how to resume.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shlex
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from calibration_lightning.errors import UserError
from calibration_lightning.redaction import scrub

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
SETTINGS_NAME = ".run_settings.json"
# Config subtrees whose values change what training computes; the keys below them that do not are left out.
RESULT_KEYS = ("model", "dataset", "method", "trainer", "seed", "n_bins", "eval_sets")
NEUTRAL_KEYS = frozenset(
    {
        "model.compile",
        "model.gradient_checkpointing",
        "dataset.eval_batch_size",
        "trainer.enable_progress_bar",
        "trainer.log_every_n_steps",
        "trainer.checkpoint_every_n_steps",
    }
)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class FinishedRun(Exception):
    """``resume=true`` in a folder whose run has finished: nothing to do (not an error)."""


class Preempted(Exception):
    """A stop signal arrived; ``checkpoint`` is the saved state to resume from (None: none was saved)."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def is_launched_rank() -> bool:
    """A process started for a rank > 0 (Lightning's DDP launcher, torchrun, srun): rank 0 owns the folder."""
    return any(os.environ.get(v, "0") != "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


# -- one run per folder --------------------------------------------------------------------------------------
_held: dict[str, int] = {}


def _unwritable(path: Path, e: OSError) -> UserError:
    return UserError(
        f"cannot write in the run folder {path} ({e.strerror or e}); make it writable, or choose another "
        "hydra.run.dir (e.g. hydra.run.dir=/scratch/$USER/run)"
    )


def lock_run_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed, check that it is writable, and hold its lock for the life of this process.

    Raises:
        UserError: the folder (or its parent) cannot be written, or another run holds it.
    """
    key = os.path.realpath(out_dir)
    if key in _held or is_launched_rank():
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _unwritable(out_dir, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise UserError(
            f"{out_dir} is in use by another run (process {holder or 'unknown'}); wait for it to end, or choose "
            "another hydra.run.dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        probe, name = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)  # the lock file may predate a chmod
        os.close(probe)
        os.unlink(name)
    except OSError as e:
        os.close(fd)
        raise _unwritable(out_dir, e) from None
    _held[key] = fd


def unlock_run_dir(out_dir: Path) -> None:
    fd = _held.pop(os.path.realpath(out_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


# -- resuming with the same settings ---------------------------------------------------------------------------
def _flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict) and node:
        flat = {}
        for k, v in node.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat
    return {prefix: node}


def result_settings(cfg: DictConfig) -> dict[str, object]:
    """The run's settings that change its result, flattened to dotted keys (secrets blanked)."""
    tree = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
            for k in RESULT_KEYS if k in cfg}  # fmt: skip
    flat = _flatten(scrub(tree))  # secret keys and URL passwords blanked
    neutral = tuple(n + "." for n in NEUTRAL_KEYS)
    return {k: v for k, v in flat.items() if k not in NEUTRAL_KEYS and not k.startswith(neutral)}


def save_settings(out_dir: Path, cfg: DictConfig) -> None:
    """``RUN_DIR/.run_settings.json``: what a resumed run is compared against (kept when resuming)."""
    from calibration_lightning.outputs.files import write_text

    path = out_dir / SETTINGS_NAME
    if not (cfg.resume and path.exists()):
        write_text(path, json.dumps(result_settings(cfg), indent=1, sort_keys=True) + "\n")


def check_resume(out_dir: Path, cfg: DictConfig) -> None:
    """Refuse ``resume=true`` with settings that change the result, naming each key with both values.

    Raises:
        UserError: the saved settings are unreadable, or some key differs.
    """
    path = out_dir / SETTINGS_NAME
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); restore it from a copy of the run, or start a new run") from None
    now = result_settings(cfg)
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} there, {now.get(k, '<unset>')!r} now" for k in changed[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise UserError(
            f"resume=true: {out_dir} was started with other settings ({shown}{more}); resuming would mix two "
            "runs: pass the run's own settings (see its .hydra/overrides.yaml), or start a new run in another "
            "hydra.run.dir"
        )


# -- checkpoints a resumed run reads -------------------------------------------------------------------------
# What a resumed run reads from a checkpoint, and its type: Lightning's restore reads every key of last.ckpt
# (and of the step checkpoints), ours of best.ckpt reads BEST_KEYS.
CHECKPOINT_KEYS = {
    "state_dict": dict,
    "epoch": int,
    "global_step": int,
    "pytorch-lightning_version": str,
    "loops": dict,
    "callbacks": dict,
    "optimizer_states": list,
    "lr_schedulers": list,
}
BEST_KEYS = ("state_dict", "epoch")


def check_checkpoints(out_dir: Path, model=None) -> None:
    """Check every checkpoint under ``out_dir/checkpoints`` as the resumed run will read it, then the metrics log
    it appends to (``csv_logger.read_metrics_log``). The checkpoints in three passes, so that the plainest damage
    is named first: each loads (``weights_only``, memory-mapped: ``artifacts.load_tensors``); each holds what
    the resume reads, of the right types (``checkpoint_problem``); with ``model`` (the config section), its
    adapter tensors are those of the model it builds, name for name and shape for shape
    (``loading.adapter_shapes``: computed on the meta device from the model's config.json, no weight loaded).

    Raises:
        UserError: naming the file, what is wrong and what to do.
    """
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
    expected = _adapter_shapes(model) if model is not None and loaded else None
    for path, ckpt in loaded.items() if expected else ():
        problem = shape_problem(ckpt["state_dict"], expected)
        if problem:
            raise UserError(
                f"{path}: {problem}; resume with the model settings the run started with (its .hydra/overrides.yaml), "
                f"or {start_over}"
            )
    log_file = out_dir / "logs" / "metrics.csv"
    if os.path.lexists(log_file):
        read_metrics_log(log_file)


def checkpoint_problem(ckpt: object, best: bool = False) -> str | None:
    """What in a loaded checkpoint a resume could not use (a missing key, a value of the wrong type), or None.
    ``best``: best.ckpt, of which only ``BEST_KEYS`` are read."""
    import torch
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


def _adapter_shapes(model) -> dict[str, tuple[int, ...]] | None:
    """The adapter tensors of the model the ``model`` config section builds (``loading.adapter_shapes``); None
    where that model's config cannot be read without loading it (the load itself then checks the shapes)."""
    from calibration_lightning.models.loading import adapter_shapes
    from calibration_lightning.schema import build

    source = build(model.loader, "model.loader")
    try:
        return adapter_shapes(source, model)
    except Exception as e:  # an architecture that cannot be built on the meta device: the load will check
        log.debug("adapter shapes of %s not computed before loading: %s", source, e)
        return None


def shape_problem(state_dict: dict, expected: dict[str, tuple[int, ...]]) -> str | None:
    """How a checkpoint's adapter tensors (its ``model.*`` entries) differ from ``expected``, or None."""
    saved = {k: tuple(v.shape) for k, v in state_dict.items() if k.startswith("model.")}
    names = [*expected, *(k for k in saved if k not in expected)]  # the model's order
    differ = [k for k in names if saved.get(k) != expected.get(k)]
    if not differ:
        return None
    first = differ[0]
    there, here = (list(s[first]) if first in s else "none" for s in (saved, expected))
    return (
        f"its adapters are not those of this run's model, of another shape or LoRA setting ({len(differ)} of "
        f"{len(names)} tensors differ, e.g. {first.removeprefix('model.base_model.model.')}: {there} there, "
        f"{here} for this run's model)"
    )


def check_folder(out_dir: Path, resume: bool, cfg: DictConfig | None) -> None:
    """A resumed run's settings against those it started with (read-only: a refused run writes nothing)."""
    if resume and cfg is not None:
        check_resume(out_dir, cfg)


def claim_run_dir(out_dir: Path, resume: bool, model=None) -> None:
    """The last start-up checks of a run folder, after the data's: a resumed run's checkpoints (against the
    model the ``model`` config section builds) and metrics log, then the folder's lock (held until the process ends)."""
    if resume and (out_dir / "checkpoints").is_dir():
        check_checkpoints(out_dir, model)  # read-only; checkpoints are replaced by rename, so a running run is no harm
    lock_run_dir(out_dir)


# -- stop signals --------------------------------------------------------------------------------------------
_pending: list[int] = []
_training = [0]
_chained: dict[int, object] = {}


def stop_requested() -> int | None:
    """The stop signal received while training, if any (the training loop saves and stops at the next step)."""
    return _pending[0] if _pending else None


def _handler(signum, frame) -> None:
    if _training[0] and not _pending:
        log.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)
        _pending.append(signum)
        return
    hand_over(signum)  # outside training (or a second signal): the last checkpoint is the one to resume from
    raise Preempted(signum)


def hand_over(signum: int) -> None:
    """Call the handler a launcher installed for ``signum`` before us (submitit's requeue), if any."""
    previous = _chained.get(signum)
    if callable(previous):
        previous(signum, None)


@contextmanager
def stop_signals():
    """Route SIGTERM, SIGINT (and SIGUSR1/SIGUSR2 where a SLURM launcher handles them) to ``_handler``."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [signal.SIGTERM, signal.SIGINT]
    for extra in (signal.SIGUSR1, signal.SIGUSR2):
        if callable(signal.getsignal(extra)) and os.environ.get("SLURM_JOB_ID"):
            signums.append(extra)  # e.g. submitit's requeue: it runs after our checkpoint is saved
    previous = {s: signal.getsignal(s) for s in signums}
    _chained.update({s: h for s, h in previous.items() if s not in (signal.SIGTERM, signal.SIGINT)})
    _pending.clear()
    for s in signums:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _chained.clear()


@contextmanager
def training():
    """While inside, a stop signal is deferred to the next training step (``stop_requested``)."""
    _training[0] += 1
    try:
        yield
    finally:
        _training[0] -= 1


def resume_hint(out_dir: Path, e: Preempted) -> str:
    saved = f"training state saved in {e.checkpoint}" if e.checkpoint else "no training step was lost to a checkpoint"
    if not e.checkpoint and (out_dir / "checkpoints").is_dir():
        saved = f"the last checkpoint in {out_dir / 'checkpoints'} is kept"
    return (
        f"stopped by {signal.Signals(e.signum).name} ({saved}); to continue, run the same command with "
        f"resume=true {shell_override('hydra.run.dir', str(out_dir))}"
    )


def shell_override(key: str, value: str) -> str:
    """``key=value`` as one shell word that Hydra reads back as the string ``value``, whatever it holds (spaces,
    quotes, ``,`` ``=`` ``$`` ``[``): Hydra's quotes inside the shell's. A plain path is left as it is."""
    if re.fullmatch(r"[\w@%+:./-]+", value, re.ASCII):
        return f"{key}={value}"
    # Hydra's quoted strings: a quote is escaped, and so is each backslash before one (or before the end);
    # "\${" keeps OmegaConf from reading an interpolation
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    escaped = escaped.replace("${", "\\${")
    return shlex.quote(f"{key}='{escaped}'")
