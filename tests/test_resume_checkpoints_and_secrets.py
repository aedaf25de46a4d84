"""Runs that stop or resume: non-finite loss, kill -9 and resume, checkpoints; relative data paths; mixed numbers
of choices; a run without a validation split."""

import csv
import json

import pytest
import torch

from calibration_lightning.errors import ConfigError, TrainingError
from calibration_lightning.recipe import run
from tests.conftest import TINY_SPLIT
from tests.helpers import ROOT, RecordSaves, cli, startup_check

pytestmark = pytest.mark.slow


def test_relative_data_path_resolves_against_the_launch_directory(tmp_path):
    result = cli("model=tiny", "dataset=jsonl", "dataset.path=does/not/exist.jsonl", f"hydra.run.dir={tmp_path}/r")
    assert result.returncode == 2 and f"{ROOT}/does/not/exist.jsonl: no such file" in result.stderr


def test_non_finite_loss_stops_and_keeps_outputs(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "+method.loss.steps=4",
        "method.loss._target_=tests.helpers.NaNAfterSteps",
        "trainer.checkpoint_every_n_steps=2",
        "method.lr_search=null",  # the stop under test is in the training proper
        *TINY_SPLIT,
    )
    with pytest.raises(TrainingError, match="non-finite .* at step 4"):
        run(cfg)
    out = tmp_path / "run"
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert (out / "predictions_before.jsonl").exists() and (out / "reliability_test.png").exists()
    assert not (out / "metrics.json").exists()


def _tiny_long_run(out, *extra):
    return [
        "model=tiny",
        "method=cft",
        "method.epochs=2",
        "dataset.split.train=120",
        "dataset.split.val=8",
        "dataset.split.test=16",
        "dataset.batch_size=2",
        "trainer.checkpoint_every_n_steps=7",
        "model.lora.dropout=0.1",
        "logger=csv",
        f"hydra.run.dir={out}",
        *extra,
    ]


def _csv_rows(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_rows_with_different_numbers_of_choices(make_cfg, tmp_path):
    rows = [
        {"question": f"Question {i}?", "choices": [f"option {j}" for j in range(2 + i % 4)], "answer": i % 2}
        for i in range(40)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(
        "model=tiny",
        "dataset=jsonl",
        f"dataset.path={path}",
        "dataset.split.train=20",
        "dataset.split.val=10",
        "dataset.split.test=10",
    )
    run(cfg)
    for line in (tmp_path / "run" / "predictions_after.jsonl").read_text().splitlines():
        row = json.loads(line)
        k = len(next(r for r in rows if f"mixed-{rows.index(r)}" == row["id"])["choices"])
        assert len(row["probabilities"]) == k
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_checkpoint_at_every_epoch_end(make_cfg, tmp_path):
    """Lightning's own atomic save writes last.ckpt at the end of each epoch; nothing else stays behind."""
    RecordSaves.steps.clear()
    cfg = make_cfg(
        "model=tiny",
        "method.epochs=2",
        "method.select=null",
        "trainer.checkpoint_every_n_steps=0",
        "method.callbacks=[{_target_: tests.helpers.RecordSaves}]",
        *TINY_SPLIT,
    )
    run(cfg)
    # 24 questions / batch 4 = 6 steps an epoch: saved at the end of each epoch
    assert RecordSaves.steps == [6, 12]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_no_validation_split(make_cfg, tmp_path):
    """A training method with a fixed length runs without validation; a method that chooses (its length, or
    between candidates) or fits on val is refused before anything is written."""
    base = ["model=tiny", "dataset.split.train=16", "dataset.split.val=0", "dataset.split.test=16"]
    for method in ("auto", "ts", "cft"):
        with pytest.raises(ConfigError, match=r"dataset\.split\.val: the val split is empty"):
            startup_check([*base, f"method={method}", f"hydra.run.dir={tmp_path}/refused_{method}"])
        assert not (tmp_path / f"refused_{method}").exists()
    run(make_cfg(*base, "method=cft", "method.select=null", "method.lr_search=null", "method.epochs=2"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["regime"] is None and metrics["after"]["n"] == 16 and metrics["training"]["rounds_run"] == 2


def test_step_and_epoch_checkpoints_share_one_file(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny", "method.epochs=2", "method.select=null", "trainer.checkpoint_every_n_steps=4", *TINY_SPLIT
    )
    run(cfg)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert files == ["last.ckpt"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
