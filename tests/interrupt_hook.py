"""A stop at a chosen instant of a run: in this process (``interrupt_at``) or in a CLI process
(``python -c "import tests.interrupt_hook as h; h.main()" OVERRIDES`` with ``INTERRUPT_AT=WHERE:N:SIGNAL``, or
``cli_in_child``: the same command in a process forked from one that imported the package once).

``SIGNAL`` (KILL, TERM, INT) is sent to the process at the N-th call of WHERE:

- ``step``: a training step (``CalibrationModule.training_step``), before it runs;
- ``validation``: a validation batch during training (``CalibrationModule.validation_step``), before it runs;
- ``backtrack``: right after a backtrack (``Backtracking._backtrack`` has restored the best adapters and lowered
  the rate), before the round's checkpoint is saved;
- ``save``: in the middle of writing a checkpoint (``AtomicCheckpointIO``): half of its bytes are in the file
  being written when the signal is sent (the write then goes on, for a signal the run survives);
- ``evaluate``: an evaluation of every split (1: before training, 2: after).

A test-only wrapper, so the program itself carries no hook."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def _targets() -> dict:
    from calibration_lightning import evaluation
    from calibration_lightning.module import CalibrationModule
    from calibration_lightning.outputs.checkpoints import AtomicCheckpointIO
    from calibration_lightning.selection import Backtracking

    return {
        "step": (CalibrationModule, "training_step", False),
        "validation": (CalibrationModule, "validation_step", False),
        "backtrack": (Backtracking, "_backtrack", True),
        "save": (AtomicCheckpointIO, "save_checkpoint", None),
        "evaluate": (evaluation, "evaluate", False),
    }


def _half_written(original, signum):
    """``AtomicCheckpointIO.save_checkpoint`` that signals with half of the checkpoint in its temporary file."""

    def save(self, checkpoint, path, storage_options=None):
        import io
        from pathlib import Path

        import torch

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os.kill(os.getpid(), signum)  # SIGKILL ends here; SIGTERM is deferred by the run: the write goes on
        return original(self, checkpoint, path, storage_options)

    return save


@contextlib.contextmanager
def interrupt_at(where: str, count: int, signum: int):
    """Inside, send ``signum`` to this process at the ``count``-th call of ``where`` (see the module docstring)."""
    owner, name, after = _targets()[where]
    original = getattr(owner, name)
    calls = [0]
    half_written = _half_written(original, signum)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] != count:
            return original(*args, **kwargs)
        if after is None:
            return half_written(*args, **kwargs)
        if after:
            result = original(*args, **kwargs)
            os.kill(os.getpid(), signum)
            return result
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


def main() -> None:
    where, count, name = os.environ["INTERRUPT_AT"].split(":")
    with interrupt_at(where, int(count), getattr(signal, f"SIG{name}")):
        from calibration_lightning.__main__ import main as cli_main

        cli_main()


def _cli(argv: list[str], cwd: str, env: dict, interrupt: str | None, out: str) -> None:
    os.chdir(cwd)
    os.environ.update(env)
    for fd, name in ((1, "stdout"), (2, "stderr")):  # standard output and error into files, as subprocess captures
        os.dup2(os.open(f"{out}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["calibration_lightning", *argv]
    if interrupt is None:
        from calibration_lightning.__main__ import main as cli_main

        cli_main()
    else:
        os.environ["INTERRUPT_AT"] = interrupt
        main()


# what a run of the tiny model imports (the package imports most of it lazily, as the run needs it)
PRELOAD = [
    "tests.interrupt_hook",
    "calibration_lightning.__main__",
    "calibration_lightning.recipe",
    "calibration_lightning.models.loading",
    "transformers.models.llama.modeling_llama",
    "peft",
    "relplot",
    "matplotlib.figure",
]


def cli_in_child(
    argv: list[str], cwd: str, env: dict | None = None, interrupt: str | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """``python -m calibration_lightning ARGV`` (with ``INTERRUPT_AT=interrupt``, ``env`` added) in a child process:
    its exit code (-9: SIGKILL), standard output and error.

    The child is forked from multiprocessing's fork server, a clean single-threaded process that imported the
    package once for the whole test process: a child starts in well under a second instead of paying the ten
    seconds of interpreter start and imports (torch, Lightning, transformers) again. Not for what depends on a
    fresh interpreter: settings read at import (``HF_HUB_OFFLINE``), warnings printed while importing, start-up
    signals, DDP (which starts the command again)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out")
        child = context.Process(target=_cli, args=(argv, cwd, env or {}, interrupt, out))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
        captured = [Path(f"{out}.{name}").read_text(errors="replace") for name in ("stdout", "stderr")]
    return subprocess.CompletedProcess(["calibration_lightning", *argv], child.exitcode, *captured)
