"""Kill points: a run stopped at any instant of the default schedule (``model=tiny``, 320 / 80 questions, rounds of
20 steps of 4) and resumed, from a moved folder, ends with its uninterrupted twin's metrics.json (but its wall
time), predictions and adapter, byte for byte.

The twin: 5 rounds of 20 steps, a backtrack after round 3 (patience ran out: back to round 1 at 0.3 x the rate),
round 1 kept. Checkpoints: after every round's validation, and at step 50 (``trainer.checkpoint_every_n_steps``).
Saves: round 1 writes best.ckpt (1) then last.ckpt (2), round 2 last.ckpt (3), step 50 (4), ...
SIGKILL runs in a child process (``interrupt_hook.cli_in_child``); SIGTERM in this one, as the run handles it; every
resume runs in this process. About 3 minutes on two idle cores.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from calibration_lightning.errors import UserError
from calibration_lightning.outputs.run_state import Preempted
from calibration_lightning.recipe import run
from tests.conftest import compose_config
from tests.helpers import ROOT
from tests.interrupt_hook import cli_in_child, interrupt_at

pytestmark = pytest.mark.slow

BASE = ("model=tiny", "dataset.split.test=16", "bootstrap.resamples=200", "trainer.enable_progress_bar=false")
CASES = {  # name: (where, n-th call, extra overrides)
    "a mid-round step": ("step", 55, ()),
    "a round's last step": ("step", 60, ()),
    "inside a round's validation": ("validation", 13, ()),  # round 3's (5 batches of 16 each)
    "right after a backtrack": ("backtrack", 1, ()),
    "during a checkpoint write": ("save", 3, ()),  # round 2's last.ckpt
    "with accumulation 2": ("step", 45, ("trainer.accumulate_grad_batches=2",)),  # between two micro-batches, round 2
    "inside the final evaluation": ("evaluate", 2, ()),  # 1: before training, 2: after it, before metrics.json
}


def _run(out: Path, *extra: str) -> dict:
    return run(compose_config(*BASE, *extra, f"output_dir={out}"))


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict:
    """The uninterrupted runs, by their extra overrides."""
    root, done = tmp_path_factory.mktemp("twins"), {}
    for extra in {case[2] for case in CASES.values()}:
        _run(root / str(len(done)), *extra)
        done[extra] = root / str(len(done))
    return done


def _outputs(out: Path) -> dict[str, bytes]:
    files = {p: (out / p).read_bytes() for p in ("predictions_before.jsonl", "predictions_after.jsonl")}
    files.update({f"adapter/{p.name}": p.read_bytes() for p in sorted((out / "adapter").iterdir())})
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    return {**files, "metrics.json": json.dumps(metrics).encode()}


def _log(out: Path) -> list[dict]:
    with open(out / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _killed(out: Path, where: str, count: int, extra: tuple) -> None:
    """The run (the command line's) killed with SIGKILL at the chosen instant, in a child process."""
    killed = cli_in_child([*BASE, *extra, f"hydra.run.dir={out}"], str(ROOT), interrupt=f"{where}:{count}:KILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def _terminated(out: Path, where: str, count: int, extra: tuple) -> None:
    """The run stopped by SIGTERM at the chosen instant, in this process: it saves and stops."""
    with interrupt_at(where, count, signal.SIGTERM) as calls, pytest.raises(Preempted) as stopped:
        _run(out, *extra)
    assert calls[0] >= count and stopped.value.signum == signal.SIGTERM


@pytest.mark.parametrize("kill", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_stopped_at_any_instant_resumes_from_a_moved_folder_to_its_twin(twins, tmp_path, case, kill):
    where, count, extra = CASES[case]
    first = tmp_path / "first"
    if where == "save" and Path("/dev/shm").is_dir():  # the run folder on another filesystem than $TMPDIR
        first = Path(tempfile.mkdtemp(dir="/dev/shm")) / "first"
    (_killed if kill == "SIGKILL" else _terminated)(first, where, count, extra)
    assert not (first / "metrics.json").exists() and (first / "checkpoints").is_dir()
    moved = tmp_path / "moved"
    shutil.move(str(first), moved)
    _run(moved, *extra, "resume=true")
    assert _outputs(moved) == _outputs(twins[extra])
    # the training log: each row once, with the twin's values; every validation and test row of the twin (a
    # train/loss row logged between the last checkpoint and the stop may be missing: docs/resume.md)
    logged, twin = _log(moved), _log(twins[extra])
    keyed = {(r["step"], tuple(sorted(r))): r for r in twin}
    assert len({(r["step"], tuple(sorted(r))) for r in logged}) == len(logged)
    for row in logged:
        want = keyed[(row["step"], tuple(sorted(row)))]
        assert {k: float(v) for k, v in row.items()} == pytest.approx({k: float(v) for k, v in want.items()})
    scores = [key for key, r in keyed.items() if any(k.startswith(("val/", "test/")) for k in r)]
    assert set(scores) <= {(r["step"], tuple(sorted(r))) for r in logged}


def test_resuming_with_settings_or_data_that_change_a_number_is_refused(twins, tmp_path):
    """A killed run's checkpoints hold its fingerprint: another bootstrap, regime tolerance, scoring batch size or
    data content is refused before anything is written; a setting that changes no number is allowed."""
    out = tmp_path / "run"
    _terminated(out, "step", 30, ())
    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    for change, named in {
        "bootstrap.resamples=300": "bootstrap.resamples: 200 there, 300 now",
        "regime.tolerance=0.1": "regime.tolerance: 0.05 there, 0.1 now",
        "dataset.eval_batch_size=3": "dataset.eval_batch_size: 16 there, 3 now",
        "seed=1": "seed: 0 there, 1 now",
        "dataset.source.max_question_chars=190": "the train questions differ",
    }.items():
        with pytest.raises(UserError, match=f"resume=true: .* was trained with other settings or data .*{named}"):
            _run(out, change, "resume=true")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == written
    _run(out, "resume=true", "trainer.log_every_n_steps=1", "logger=none")  # neutral: allowed, same result
    assert _outputs(out) == _outputs(twins[()])
