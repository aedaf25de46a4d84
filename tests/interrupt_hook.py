"""``python -c "import tests.interrupt_hook as h; h.main()" OVERRIDES``: the CLI with a stop at a chosen moment.

``INTERRUPT_AT`` is ``WHERE:N:SIGNAL``: send ``SIGNAL`` (KILL, TERM, INT) to this process at the N-th call of
WHERE: ``step`` (a training step) or ``evaluate`` (an evaluation of every split: 1 before training, 2 after).
A test-only wrapper, so the program itself carries no hook."""

from __future__ import annotations

import functools
import os
import signal


def _interrupt_at(owner, name: str, count: int, signum: int) -> None:
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def main() -> None:
    where, count, name = os.environ["INTERRUPT_AT"].split(":")
    signum = getattr(signal, f"SIG{name}")
    if where == "step":
        from calibration_lightning.module import CalibrationModule

        _interrupt_at(CalibrationModule, "training_step", int(count), signum)
    else:
        from calibration_lightning import evaluation

        _interrupt_at(evaluation, "evaluate", int(count), signum)
    from calibration_lightning.__main__ import main as cli_main

    cli_main()
