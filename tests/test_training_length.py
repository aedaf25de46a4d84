"""Choosing the training length on the validation split (method.select): EarlyStopping + the best epoch kept."""

import csv
import json

import pytest

from calibration_lightning.errors import ConfigError
from calibration_lightning.run import run
from tests.conftest import TINY_SPLIT


def _val_history(out) -> tuple[float, list[float], float]:
    """val/nll logged by the evaluation before training (first row without an epoch), after each training
    epoch, and by the evaluation after fit (last row)."""
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    per_epoch = [float(r["val/nll"]) for r in rows if r.get("val/nll") and r.get("epoch")]
    evaluations = [float(r["val/nll"]) for r in rows if r.get("val/nll") and not r.get("epoch")]
    return evaluations[0], per_epoch, evaluations[-1]


def _expected(before: float, history: list[float], min_delta: float, patience: int, cap: int) -> tuple[int, int]:
    """Epochs run and the epoch kept (0: the untrained model), by the rule as the README states it
    (independent of Lightning): the model before training is epoch 0."""
    best, kept, waited = before, 0, 0
    for epoch, value in enumerate(history, start=1):
        if best - value > min_delta:
            best, kept, waited = value, epoch, 0
        else:
            waited += 1
            if waited >= patience:
                return epoch, kept
    return min(len(history), cap), kept


@pytest.mark.parametrize("min_delta,patience", [(0.01, 1), (0.0, 2)])
def test_training_stops_when_validation_nll_stops_improving_and_keeps_the_best_epoch(
    make_cfg, tmp_path, min_delta, patience
):
    cfg = make_cfg(
        "model=tiny",
        "method=cft",
        "method.epochs=6",
        "method.lr_search=null",
        "method.optim.lr=2e-2",  # moves the tiny model enough that validation NLL turns within a few epochs
        f"method.select.min_delta={min_delta}",
        f"method.select.patience={patience}",
        *TINY_SPLIT,
    )
    run(cfg)
    out = tmp_path / "run"
    training = json.loads((out / "metrics.json").read_text())["training"]
    before, history, after_fit = _val_history(out)
    assert len(history) == training["epochs_run"]
    assert (training["epochs_run"], training["kept_epoch"]) == _expected(before, history, min_delta, patience, 6)
    assert training["kept_epoch"] < training["epochs_run"], "the case must exercise keeping an earlier epoch"
    assert training["monitor_before"] == pytest.approx(before, abs=1e-5)
    # the adapters evaluated (and saved) after fit are the kept epoch's: same validation NLL
    kept = training["kept_epoch"]
    assert after_fit == pytest.approx(history[kept - 1] if kept else before, abs=1e-5)
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.ckpt"} | ({"best.ckpt"} if kept else set())


def test_when_no_epoch_beats_the_untrained_model_its_adapters_are_kept_and_said_so(make_cfg, tmp_path, capsys):
    cfg = make_cfg(
        "model=tiny",
        "method=cft",
        "method.epochs=4",
        "method.lr_search=null",
        "method.select.min_delta=0.5",  # no epoch of the tiny model improves validation NLL by half a nat
        "method.select.patience=2",
        *TINY_SPLIT,
    )
    run(cfg)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    before, history, after_fit = _val_history(out)
    assert len(history) == 2 and metrics["training"]["epochs_run"] == 2  # patience counts from epoch 0
    assert metrics["training"]["kept_epoch"] == 0 and metrics["training"]["beat_untrained"] is False
    assert after_fit == pytest.approx(before, abs=1e-5)
    for name in metrics["after"]:
        if name != "ci95":
            assert metrics["after"][name] == pytest.approx(metrics["before"][name], abs=1e-5), name
    assert not (out / "checkpoints" / "best.ckpt").exists()
    assert "no epoch beat the model before training" in capsys.readouterr().out


def test_without_select_every_epoch_runs_and_the_last_is_kept(make_cfg, tmp_path):
    run(
        make_cfg(
            "model=tiny", "method=cft", "method.epochs=3", "method.select=null", "method.lr_search=null", *TINY_SPLIT
        )
    )
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert training == {"lr": 5e-4, "epochs_run": 3, "epochs_max": 3, "kept_epoch": 3}
    assert not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()


def test_select_without_a_validation_split_is_refused_before_loading(make_cfg):
    cfg = make_cfg("model=tiny", "method=cft", "dataset.split.val=0", "dataset.split.train=24", "dataset.split.test=24")
    with pytest.raises(ConfigError, match=r"dataset.split.val.*method.select=null"):
        run(cfg)


@pytest.mark.parametrize(
    "override,key",
    [
        ("method.select.monitor=val/loss", "method.select.monitor"),
        ("method.select.min_delta=-1", "method.select.min_delta"),
        ("method.select.patience=0", "method.select.patience"),
        ("method.optim.warmup_steps=-3", "method.optim.warmup_steps"),
        ("method.lr_search.lrs=[]", "method.lr_search.lrs"),
        ("method.lr_search.lrs=[1e-4,-1]", "method.lr_search.lrs"),
        ("method.lr_search.probe_steps=0", "method.lr_search.probe_steps"),
        ("method.lr_search.eta=1", "method.lr_search.eta"),
    ],
)
def test_bad_selection_settings_name_their_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(make_cfg("model=tiny", override, *TINY_SPLIT))
