"""A run folder's life: one run in it at a time (``lock_run_dir``: an ``fcntl.flock`` on ``RUN_DIR/.lock``, which
the kernel drops when the process dies), and a scheduler's stop signal (``stop_signals``) turned into a saved
checkpoint and an exit code ``128 + signal`` that says the run did not finish.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shlex
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from calibration_lightning.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class FinishedRun(Exception):
    """``resume=true`` in a folder whose run has finished: nothing to do (not an error)."""


class Preempted(BaseException):
    """A stop signal arrived; ``checkpoint`` is the saved state to resume from (None: none was saved), ``out_dir``
    the run's folder. A ``BaseException``, as ``KeyboardInterrupt``: raised wherever the signal lands, no
    ``except Exception`` (ours, a library's, Hydra's job runner) may take it for an error and go on."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpoint, self.out_dir = signum, checkpoint, None

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
    """Create ``out_dir`` if needed, check that it is writable, and hold its lock for the life of this process;
    ``UserError`` if the folder cannot be written or another run holds it."""
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


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a finished or unfinished run (read-only: a refused run writes nothing); a finished run
    resumed raises ``FinishedRun``: nothing to do."""
    if resume and (out_dir / "metrics.json").exists():
        raise FinishedRun(
            f"{out_dir} holds a finished run (metrics.json): nothing to resume, its outputs are left as they are"
        )
    if not resume and (out_dir / "metrics.json").exists():
        raise UserError(f"{out_dir} already holds a finished run (metrics.json); choose another hydra.run.dir")
    if not resume and (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir()):
        raise UserError(
            f"{out_dir} holds an unfinished run (checkpoints/); pass resume=true to continue it, "
            "or choose another hydra.run.dir"
        )


def unlock_run_dir(out_dir: Path) -> None:
    fd = _held.pop(os.path.realpath(out_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


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
