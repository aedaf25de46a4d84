"""A run's life on a cluster, on the command line's side: stopped by SIGTERM or Ctrl-C at any second, resumed when
finished, started twice, pointed at broken checkpoints: exit codes and one line each (tests/test_resume.py: a
resumed run equals its uninterrupted twin at every kill point)."""

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from calibration_lightning.errors import UserError
from calibration_lightning.outputs import run_state
from tests.conftest import TINY_SPLIT
from tests.helpers import call_main, startup_check

ROOT = Path(__file__).resolve().parent.parent
# Early stopping ends this run before method.epochs (see test_training_length), with live LoRA dropout.
SELECTING = [
    "model=tiny",
    "method=cft",
    "method.epochs=6",
    "method.optim.lr=2e-2",
    "method.lr_search=null",  # signals counted from the first training step (the search has its own steps)
    "model.lora.dropout=0.1",
    "trainer.checkpoint_every_n_steps=4",
    "bootstrap.resamples=300",
    "logger=csv",
    *TINY_SPLIT,
]


def cli(out: Path, *extra: str, interrupt: str | None = None) -> subprocess.CompletedProcess:
    """The CLI on ``SELECTING`` in ``out``; ``interrupt``: ``WHERE:N:SIGNAL`` (tests/interrupt_hook.py)."""
    entry = ["-m", "calibration_lightning"]
    env = dict(os.environ)
    if interrupt:
        entry = ["-c", "import tests.interrupt_hook as h; h.main()"]
        env["INTERRUPT_AT"] = interrupt
    return subprocess.run(
        [sys.executable, *entry, *SELECTING, f"hydra.run.dir={out}", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_sigterm_mid_training_exits_143_saving_at_the_signal_with_the_quoted_resume_command(tmp_path):
    """The command line's side of a stop (tests/test_resume.py: the resumed run equals its twin at every instant)."""
    out = tmp_path / "a run folder"  # a space: the printed command is quoted
    stopped = cli(out, interrupt="step:7:TERM")  # epoch 2 (6 steps an epoch), between two step checkpoints
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 7  # saved at the signal, not at the last periodic checkpoint (step 4)
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"interrupted: stopped by SIGTERM (training state saved in {out / 'checkpoints' / 'last.ckpt'}); to "
        "continue, run the same command with resume=true "
    )
    assert shlex.split(line.split(" resume=true ")[1]) == [f"hydra.run.dir='{out}'"]  # one shell word, Hydra-quoted
    assert not (out / "metrics.json").exists() and "Traceback" not in stopped.stderr


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [1, 3, 6, 10, 15])
def test_ctrl_c_at_any_second_of_a_run_exits_130_without_a_traceback(tmp_path, seconds):
    """SIGINT while Python, torch, Hydra or the model start, or during the first evaluation: exit 130, one line."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "calibration_lightning", "model=tiny", f"hydra.run.dir={out}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted")


@pytest.mark.slow
def test_a_finished_run_resumed_changes_nothing(tiny_run, tmp_path):
    done = tmp_path / "done"
    shutil.copytree(tiny_run("none"), done)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.rglob("*") if p.is_file()}
    again = call_main("model=tiny", "method=none", *TINY_SPLIT, "resume=true", f"hydra.run.dir={done}")
    assert again.returncode == 0 and "nothing to resume" in again.stderr
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process holding the lock, as a running run does
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from calibration_lightning.outputs "
         "import run_state; run_state.lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)",
         str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"^{out} is in use by another run \(process {holder.pid}\); wait"):
            startup_check(["model=tiny", f"hydra.run.dir={out}"])
    finally:
        holder.kill()
        holder.wait()
    # a killed run leaves no stuck lock
    startup_check(["model=tiny", f"hydra.run.dir={out}"])
    run_state.unlock_run_dir(out)


def test_the_lock_is_an_flock_on_the_run_folder(tmp_path):
    run_state.lock_run_dir(tmp_path)
    try:
        with open(tmp_path / ".lock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        run_state.unlock_run_dir(tmp_path)
    with open(tmp_path / ".lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_folder_that_cannot_be_written_is_one_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "run"  # its parent is a file: as unwritable as a read-only parent, even for root
    with pytest.raises(UserError) as caught:
        startup_check(["model=tiny", f"hydra.run.dir={out}"])
    assert str(caught.value) == (
        f"cannot write in the run folder {out} (Not a directory); make it writable, or choose another "
        "hydra.run.dir (e.g. hydra.run.dir=/scratch/$USER/run)"
    )


def test_the_same_folder_named_two_ways_is_one_lock(tmp_path):
    (tmp_path / "run").mkdir()
    run_state.lock_run_dir(tmp_path / "run")
    try:
        run_state.lock_run_dir(tmp_path / "run" / ".." / "run")  # as Hydra and the command line may spell it
    finally:
        run_state.unlock_run_dir(tmp_path / "run")
    assert not run_state._held


def _unfinished(out: Path) -> None:
    """A run folder as a killed run leaves it: a checkpoint folder."""
    (out / "checkpoints").mkdir()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a readable checkpoint (empty"),
        (None, "not a readable checkpoint (truncated or damaged"),
        (os.urandom(4096), "not a readable checkpoint (truncated or damaged"),
        ("unsafe", "refused: the checkpoint holds Python objects other than tensors"),
    ],
)
@pytest.mark.parametrize("name", ["last.ckpt", "best.ckpt"])
def test_broken_checkpoints_are_refused_at_start_up(tmp_path, content, reason, name):
    out = tmp_path / "run"
    out.mkdir()
    _unfinished(out)
    good = {"state_dict": {"w": torch.ones(3)}, "epoch": 1, "global_step": 6, "loops": {}}
    for n in ("last.ckpt", "best.ckpt"):
        torch.save(good, out / "checkpoints" / n)
    path = out / "checkpoints" / name
    if content is None:  # cut in half, as a copy interrupted by a full disk
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "unsafe":
        torch.save({**good, "hook": shutil.rmtree}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        startup_check([*SELECTING, f"hydra.run.dir={out}", "resume=true"])
    assert str(caught.value).startswith(f"{path}: {reason}")
    start_over = f"delete {out / 'checkpoints'} and rerun without resume=true to train from the start"
    assert str(caught.value).endswith(start_over)
    run_state.unlock_run_dir(out)


@pytest.mark.slow
def test_a_broken_checkpoint_through_the_cli_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _unfinished(out)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    result = cli(out, "resume=true")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(
        f"error: {out / 'checkpoints' / 'last.ckpt'}: not a readable checkpoint"
    )


@pytest.mark.slow
def test_a_file_size_limit_mid_run_is_one_error_line(tmp_path):
    import resource

    out = tmp_path / "run"

    def limit() -> None:  # room for the code's caches and the log, not for a checkpoint
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    result = subprocess.run(
        [sys.executable, "-m", "calibration_lightning", *SELECTING, f"hydra.run.dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "rerun with resume=true" in last
    assert "Traceback" not in result.stderr
