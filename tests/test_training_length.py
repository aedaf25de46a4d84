"""Choosing the training length on the validation split (method.select): EarlyStopping, the best round kept,
backtracking to it at a smaller learning rate, validation rounds shorter than an epoch."""

import csv
import json

import pytest
import torch

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


def _rule(before, history, min_delta, patience, cap, lr=None, factor=None, max_backtracks=1, worse=lambda r: True):
    """Rounds run, the round kept (0: the untrained model) and the backtracks, by the rule as the README states
    it (independent of Lightning): the model before training is round 0; a round that does not improve the
    best by more than ``min_delta`` backtracks (with ``factor``, while backtracks are left) when it is
    ``worse`` (clearly worse than the best) or when it is the ``patience``-th such round in a row, whose stop
    the backtrack replaces, and patience starts again; with no backtrack left either ends training. No
    backtrack after the last round."""
    best, kept, waited, backtracks = before, 0, 0, []
    for r, value in enumerate(history, start=1):
        if best - value > min_delta:
            best, kept, waited = value, r, 0
            continue
        waited += 1
        if r >= cap:
            break
        left = factor is not None and len(backtracks) < max_backtracks
        if waited >= patience:
            if not left:
                return r, kept, backtracks
        elif factor is None or not worse(r):
            continue
        elif not left:
            return r, kept, backtracks
        lr *= factor
        waited = 0  # the smaller rate gets a whole patience
        backtracks.append({"after_round": r, "back_to_round": kept, "lr": pytest.approx(lr)})
    return min(len(history), cap), kept, backtracks


def _selecting_run(make_cfg, tmp_path, *overrides):
    """The tiny model trained by CFT at a rate that turns validation NLL within a few rounds; its
    ``training`` block and validation history (``_val_history``)."""
    run(make_cfg("model=tiny", "method=cft", "method.epochs=6", "method.optim.lr=2e-2", *overrides, *TINY_SPLIT))
    out = tmp_path / "run"
    return json.loads((out / "metrics.json").read_text())["training"], *_val_history(out)


def _plain(backtracks: list[dict]) -> list[dict]:
    return [{k: b[k] for k in ("after_round", "back_to_round", "lr")} for b in backtracks]


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
        "method.select.backtrack_z=null",  # every round without improvement backtracks (the noise test: below)
        *TINY_SPLIT,
    )
    run(cfg)
    out = tmp_path / "run"
    training = json.loads((out / "metrics.json").read_text())["training"]
    before, history, after_fit = _val_history(out)
    assert len(history) == training["rounds_run"] == training["epochs_run"]  # a round is an epoch here
    expected = _rule(before, history, min_delta, patience, 6, 2e-2, 0.3)
    assert (training["rounds_run"], training["kept_round"], _plain(training.get("backtracks", []))) == expected
    assert training["kept_round"] < training["rounds_run"], "the case must exercise keeping an earlier epoch"
    assert training["monitor_before"] == pytest.approx(before, abs=1e-5)
    # the adapters evaluated (and saved) after fit are the kept epoch's: same validation NLL
    kept = training["kept_round"]
    assert after_fit == pytest.approx(history[kept - 1] if kept else before, abs=1e-5)
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.ckpt"} | ({"best.ckpt"} if kept else set())
    # the validation split is not scored again after fit: its after-training scores are the kept round's
    # (the untrained model's, from the evaluation before training, when round 0 is kept)
    rows = [r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r.get("val/conf_ece")]
    kept_row = next(r for r in rows if (int(r["epoch"]) == kept - 1 if r.get("epoch") else kept == 0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == pytest.approx(float(kept_row["val/conf_ece"]), abs=1e-6)
    if kept:
        best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
        assert sorted(best["val_scored"]) == ["index", "labels", "letter_logits", "n_choices"]
        assert best["val_scored"]["index"].tolist() == list(range(len(best["val_scored"]["index"])))


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
    assert len(history) == 2 and metrics["training"]["rounds_run"] == 2  # patience counts from epoch 0
    assert metrics["training"]["kept_round"] == 0 and metrics["training"]["beat_untrained"] is False
    assert after_fit == pytest.approx(before, abs=1e-5)
    for name in metrics["after"]:
        if name != "ci95":
            assert metrics["after"][name] == pytest.approx(metrics["before"][name], abs=1e-5), name
    assert not (out / "checkpoints" / "best.ckpt").exists()
    assert "no round beat the model before training" in capsys.readouterr().out
    # the after-training validation scores are the untrained model's from the evaluation before training
    first = next(r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r.get("val/conf_ece"))
    assert metrics["objective"] == pytest.approx(float(first["val/conf_ece"]), abs=1e-6)


def test_without_select_every_epoch_runs_and_the_last_is_kept(make_cfg, tmp_path):
    run(
        make_cfg(
            "model=tiny", "method=cft", "method.epochs=3", "method.select=null", "method.lr_search=null", *TINY_SPLIT
        )
    )
    training = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert training == {
        "lr": 5e-4,
        "epochs_max": 3,
        "rounds_per_epoch": 1,
        "rounds_run": 3,
        "epochs_run": 3,
        "kept_round": 3,
        "kept_epochs": 3,
    }
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
        ("method.select.every_n_steps=-1", "method.select.every_n_steps"),
        ("method.select.backtrack_factor=0", "method.select.backtrack_factor"),
        ("method.select.backtrack_factor=1.5", "method.select.backtrack_factor"),
        ("method.select.max_backtracks=-1", "method.select.max_backtracks"),
        ("method.select.backtrack_z=-1", "method.select.backtrack_z"),
        ("+experiment=lr_search method.lr_search.lrs=[]", "method.lr_search.lrs"),
        ("+experiment=lr_search method.lr_search.lrs=[1e-4,-1]", "method.lr_search.lrs"),
        ("+experiment=lr_search method.lr_search.probe_steps=0", "method.lr_search.probe_steps"),
        ("+experiment=lr_search method.lr_search.eta=1", "method.lr_search.eta"),
    ],
)
def test_bad_selection_settings_name_their_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(make_cfg("model=tiny", *override.split(), *TINY_SPLIT))


def test_validation_rounds_of_every_n_steps_split_each_epoch(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "method=cft",
        "method.epochs=2",
        "method.select.every_n_steps=2",  # 6 steps an epoch
        "method.select.patience=20",
        "method.select.backtrack_factor=null",
        *TINY_SPLIT,
    )
    run(cfg)
    out = tmp_path / "run"
    training = json.loads((out / "metrics.json").read_text())["training"]
    _, history, _ = _val_history(out)
    assert len(history) == training["rounds_run"] == 6 and training["rounds_per_epoch"] == 3
    assert training["epochs_run"] == 2 and "backtracks" not in training
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    val_steps = [int(r["step"]) for r in rows if r.get("val/nll") and r.get("epoch")]
    assert val_steps == [1, 3, 5, 7, 9, 11]  # validated after optimizer steps 2, 4, ..., 12 (logged 0-based)


@pytest.mark.parametrize("factor", [0.3, 1e-7])
def test_a_round_without_improvement_goes_back_to_the_best_adapters_at_a_smaller_rate(make_cfg, tmp_path, factor):
    training, before, history, after_fit = _selecting_run(
        make_cfg,
        tmp_path,
        "method.select.patience=3",
        "method.select.min_delta=1e-4",
        "method.select.max_backtracks=2",
        "method.select.backtrack_z=null",
        f"method.select.backtrack_factor={factor}",
    )
    assert training["backtracks"], "the case must exercise a backtrack"
    rounds, kept, backtracks = _rule(before, history, 1e-4, 3, 12, 2e-2, factor, max_backtracks=2)
    assert (training["rounds_run"], training["kept_round"], _plain(training["backtracks"])) == (
        rounds,
        kept,
        backtracks,
    )
    if factor < 1e-6:  # the next round barely trains: it scores what the round gone back to scored
        for b in training["backtracks"]:
            if b["after_round"] < len(history):
                kept = b["back_to_round"]
                assert history[b["after_round"]] == pytest.approx(history[kept - 1] if kept else before, abs=1e-4)
    kept = training["kept_round"]
    assert after_fit == pytest.approx(history[kept - 1] if kept else before, abs=1e-5)


def test_backtrack_loads_the_best_file_scales_every_rate_and_clears_the_moments(tmp_path):
    from types import SimpleNamespace

    import torch

    from calibration_lightning.backtracking import Backtrack

    module = torch.nn.Linear(3, 2)
    torch.save(
        {"state_dict": {k: torch.full_like(v, 7.0) for k, v in module.state_dict().items()}, "epoch": 1},
        tmp_path / "best.ckpt",
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 2))
    module(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        should_stop=False,
        current_epoch=3,
        max_epochs=10,
        optimizers=[optimizer],
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
    )
    stopping = SimpleNamespace(wait_count=0, monitor="val/nll", mode="min", patience=2)
    callback = Backtrack(stopping, SimpleNamespace(best_model_path=str(tmp_path / "best.ckpt")), {}, 0.3)
    callback.on_validation_end(trainer, module)  # the round improved: nothing changes
    assert callback.history == [] and optimizer.state and module.weight[0, 0] != 7
    stopping.wait_count, stopping.stopped_epoch = 1, 0
    callback.on_validation_end(trainer, module)
    assert all(bool((v == 7).all()) for v in module.state_dict().values()) and not optimizer.state
    assert stopping.wait_count == 0  # the smaller rate gets a whole patience of its own
    assert callback.history == [
        {"after_round": 4, "back_to_round": 2, "lr": pytest.approx(3e-3), "reason": "no improvement"}
    ]
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)  # the schedule goes on from the smaller rate
    restored = Backtrack(stopping, None, {}, 0.3)
    restored.load_state_dict(callback.state_dict())
    assert restored.history == callback.history


@pytest.mark.parametrize("z", [0.0, 1e9])
def test_a_round_within_z_paired_standard_errors_of_the_best_only_counts_toward_patience(make_cfg, tmp_path, z):
    training, before, history, _ = _selecting_run(
        make_cfg,
        tmp_path,
        "method.select.patience=3",
        "method.select.max_backtracks=3",
        f"method.select.backtrack_z={z}",
    )
    if z > 1e6:  # every round is within the noise: backtracks only where patience (3) runs out
        expected = _rule(before, history, 0.0, 3, 6, 2e-2, 0.3, max_backtracks=3, worse=lambda r: False)
        assert (training["rounds_run"], training["kept_round"], _plain(training["backtracks"])) == expected
        assert all(b["reason"].startswith("no improvement in 3") for b in training["backtracks"])
        return
    assert training["backtracks"], "the case must exercise a backtrack"
    best = [before]  # the best validation NLL before each round
    for value in history:
        best.append(min(best[-1], value))
    for b in training["backtracks"]:
        # the noise test's difference is the round's validation NLL minus the best's: the logged means of the
        # same per-question terms (a backtrack resets nothing of the best so far)
        assert b["worse_by"] == pytest.approx(history[b["after_round"] - 1] - best[b["after_round"] - 1], abs=1e-4)
        assert b["worse_by"] >= 0 and b["se"] >= 0


def test_the_noise_test_compares_paired_per_question_terms():
    from types import SimpleNamespace

    import torch

    from calibration_lightning.backtracking import Backtrack

    best = torch.tensor([1.0, 2.0, 3.0, 4.0])
    stopping = SimpleNamespace(monitor="val/nll", mode="min")
    callback = Backtrack(stopping, None, {}, 0.3, z=1.0, baseline_terms=best)
    shifted = best + torch.tensor([0.1, 0.1, 0.1, 0.1])  # worse by 0.1 on every question: se 0, clearly worse
    assert callback._within_noise(shifted) == (False, pytest.approx(0.1), pytest.approx(0.0, abs=1e-6))
    mixed = best + torch.tensor([0.5, -0.3, 0.4, -0.4])  # worse by 0.05 on average, se = sd / 2 = 0.2327
    noise, worse, se = callback._within_noise(mixed)
    assert noise and worse == pytest.approx(0.05) and se == pytest.approx(0.4655 / 2, abs=1e-4)
    stopping.mode = "max"  # accuracy: lower is worse
    assert callback._within_noise(best - 0.1)[:2] == (False, pytest.approx(0.1))
    assert Backtrack(stopping, None, {}, 0.3, z=None, baseline_terms=best)._within_noise(mixed)[0] is False
