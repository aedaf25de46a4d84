"""The command line as tests call it, and components used by tests through configs (``_target_: tests.helpers...``)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from calibration_lightning.losses.sft import CompletionSFT

ROOT = Path(__file__).resolve().parent.parent


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m calibration_lightning ARGS`` started in a fresh process, from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "calibration_lightning", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def cli(*args: str, env: dict | None = None, timeout: int = 300, forked: bool = False) -> subprocess.CompletedProcess:
    """``start_cli`` run to its end; ``forked``: in a process forked from one that imported the package once
    (``interrupt_hook.cli_in_child``: for whole runs, not for what needs a fresh interpreter)."""
    if forked:
        from tests.interrupt_hook import cli_in_child

        return cli_in_child(list(args), str(ROOT), env, timeout=timeout)
    with start_cli(*args, env=env) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def call_main(*args: str) -> Result:
    """``python -m calibration_lightning ARGS`` in this process (no import cost): for commands that end before
    a model loads (config mistakes, refused runs and sweeps, ``--help``, ``--cfg``)."""
    import signal

    from calibration_lightning.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = ["calibration_lightning", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = 0 if e.code is None else int(e.code)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        for signum, handler in saved_signals.items():  # main() installs its own
            signal.signal(signum, handler)
        from calibration_lightning import startup

        startup._CHECKED.clear()  # data a refused run checked and never used: not for the next call's run
    return Result(code, out.getvalue(), err.getvalue())


class NaNAfterSteps(CompletionSFT):
    """CompletionSFT that returns NaN from its ``steps``-th call on: a stand-in for a diverging run."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.steps, self.calls = steps, 0

    def forward(self, out, batch):
        self.calls += 1
        result = super().forward(out, batch)
        if self.calls > self.steps:
            result.loss = result.loss * torch.tensor(float("nan"))
        return result


class RecordSaves(L.Callback):
    """The global step of every checkpoint the Trainer saves (in ``steps``, shared: built from a config)."""

    steps: list[int] = []

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:
        self.steps.append(checkpoint["global_step"])


READS: list[str] = []


def counted_records(path: str):
    """``read_records_file`` that notes each read in ``READS``."""
    from calibration_lightning.data.sources import read_records_file

    READS.append(path)
    return read_records_file(path)


def startup_check(overrides: list[str]) -> None:
    """The start-up callback's checks of one run (``startup.StartupChecks.on_run_start``) on the config that
    ``python -m calibration_lightning OVERRIDES`` composes, in this process; raises what they raise."""
    from hydra import compose, initialize_config_dir

    from calibration_lightning.schema import CONF_DIR
    from calibration_lightning.startup import _check_composed

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        _check_composed(cfg, Path(str(cfg.hydra.run.dir)))


def wandb_offline_values(run_dir: Path) -> dict:
    """The last value of every key an offline W&B run logged (its history and summary records), read from its
    ``run-*.wandb`` file: a LevelDB-style log of 32 KiB blocks of protobuf records (W&B writes no summary file
    offline, and its Python reader is gone)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, block, chunks, values = path.read_bytes(), 7, 32768, [], {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        chunks = [chunk] if kind in (1, 2) else [*chunks, chunk]  # full, first / middle, last
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(b"".join(chunks))
        kind_name = record.WhichOneof("record_type")
        items = {"history": record.history.item, "summary": record.summary.update}.get(kind_name, [])
        for item in items:
            values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values
