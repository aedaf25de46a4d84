"""Choosing the training length on the validation split (method.select): EarlyStopping, the best round kept,
backtracking to it at a smaller learning rate, validation rounds shorter than an epoch."""

import csv
import dataclasses
import json

import lightning as L
import pytest
import torch

from calibration_lightning.errors import ConfigError
from calibration_lightning.recipe import run
from calibration_lightning.schema import SelectConf, validate
from calibration_lightning.selection import Backtracking
from tests.conftest import TINY_SPLIT, compose_config
from tests.helpers import startup_check


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


@pytest.mark.slow
@pytest.mark.parametrize("min_delta,patience", [(0.01, 1)])
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
    assert metrics["objective"] == pytest.approx(float(kept_row["val/nll"]), abs=1e-6)
    if kept:
        best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
        assert sorted(best["val_scored"]) == ["index", "labels", "letter_logits", "n_choices"]
        assert best["val_scored"]["index"].tolist() == list(range(len(best["val_scored"]["index"])))


@pytest.mark.slow
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
    assert metrics["objective"] == pytest.approx(float(first["val/nll"]), abs=1e-6)


@pytest.mark.slow
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


def test_select_without_a_validation_split_is_refused_before_loading(tmp_path):
    splits = ["dataset.split.val=0", "dataset.split.train=24", "dataset.split.test=24"]
    with pytest.raises(ConfigError, match=r"dataset.split.val.*method.select=null"):
        startup_check(["model=tiny", "method=cft", *splits, f"hydra.run.dir={tmp_path / 'r'}"])


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
def test_bad_selection_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config("model=tiny", *override.split()))


@pytest.mark.slow
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


@pytest.mark.slow
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


class Scripted(L.LightningModule):
    """A linear layer whose validation NLL follows ``script`` (one value per round; per-question terms: the value
    plus ``spread``), with what each round starts from recorded: weights, learning rate, optimizer moments."""

    def __init__(self, script: list[float], spread: list[float]) -> None:
        super().__init__()
        self.layer, self.script, self.spread, self.starts, self.ends = torch.nn.Linear(2, 1), script, spread, [], []

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(1, 2))

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.ends.append(self.layer.weight.detach().clone())
        value = self.script[self.current_epoch]
        terms = torch.tensor(self.spread, dtype=torch.float64) + value  # per-question NLL: mean = value
        p = (-terms).exp()  # the gold option's probability (of two)
        logits = torch.stack([p.log(), (1 - p).log()], dim=1)
        self.val_scored = {"letter_logits": logits, "labels": torch.zeros(len(p), dtype=torch.long),
                           "n_choices": torch.full((len(p),), 2)}  # fmt: skip
        self.log("val/nll", value)

    def on_train_epoch_start(self):
        optimizer = self.trainer.optimizers[0]
        self.starts.append((self.layer.weight.detach().clone(), optimizer.param_groups[0]["lr"], bool(optimizer.state)))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0, 1)}


def _backtracking_fit(tmp_path, script, spread, **select):
    settings = dict(monitor="val/nll", min_delta=0.0, patience=2, every_n_steps=0, backtrack_factor=0.3,
                    max_backtracks=1, backtrack_z=1.0)  # fmt: skip
    module = Scripted(script, spread)
    baseline = torch.tensor(spread, dtype=torch.float64) + 1.0  # the untrained model: NLL 1.0
    callback = Backtracking(SelectConf(**{**settings, **select}), tmp_path, 1.0, baseline, initial={})
    trainer = L.Trainer(max_epochs=len(script), callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module)
    return module, callback, trainer


def test_backtracking_keeps_the_best_round_goes_back_to_it_at_a_smaller_rate_and_clears_the_moments(tmp_path):
    spread = [0.05, -0.05, 0.02, -0.02]
    # round 1 improves (best.ckpt), round 2 is clearly worse (+0.7 on every question: se 0): back to round 1 at
    # 0.3 x the rate with fresh moments and a fresh patience; rounds 3 and 4 do not improve; 3 is within the
    # noise of the best (the same terms): patience (2) then runs out at round 4 with no backtrack left: stop
    module, callback, trainer = _backtracking_fit(tmp_path, [0.8, 1.5, 0.8, 0.9, 0.5, 0.5], spread)
    assert callback.history == [
        {"after_round": 2, "back_to_round": 1, "lr": pytest.approx(0.03), "reason": "worse than the best",
         "worse_by": pytest.approx(0.7), "se": pytest.approx(0.0, abs=1e-9)}
    ]  # fmt: skip
    best = torch.load(tmp_path / "best.ckpt", weights_only=False)
    assert best["epoch"] == 0 and float(callback.best_score) == pytest.approx(0.8)
    weight_after_round_1 = best["state_dict"]["layer.weight"]
    weights, lrs, moments = zip(*module.starts)
    assert torch.equal(module.ends[0], weight_after_round_1) and not torch.equal(module.ends[1], weight_after_round_1)
    assert torch.equal(weights[2], weight_after_round_1)  # round 3 starts from round 1's weights
    assert lrs == pytest.approx((0.1, 0.1, 0.03, 0.03)) and moments == (False, True, False, True)
    assert trainer.current_epoch == 4 and callback.wait_count == 2  # stopped after round 4: rounds 5, 6 never run
    restored = Backtracking(callback.select, tmp_path, 1.0, None, {})
    restored.load_state_dict(callback.state_dict())  # what a resumed run continues with
    assert restored.history == callback.history and torch.equal(restored.best_terms, callback.best_terms)
    assert (restored.wait_count, float(restored.best_score)) == (2, pytest.approx(0.8))


def test_a_round_without_improvement_and_without_backtracking_only_counts_toward_patience(tmp_path):
    module, callback, trainer = _backtracking_fit(tmp_path, [0.8, 1.5, 0.9, 0.5], [0.0, 0.0], backtrack_factor=None)
    assert callback.history == [] and trainer.current_epoch == 3  # patience 2 ran out after round 3
    assert [lr for _, lr, _ in module.starts] == [0.1, 0.1, 0.1]


@pytest.mark.slow
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


def test_the_noise_test_compares_paired_per_question_terms(tmp_path):
    best = torch.tensor([1.0, 2.0, 3.0, 4.0])
    select = SelectConf(monitor="val/nll", min_delta=0.0, patience=2, every_n_steps=0, backtrack_factor=0.3,
                        max_backtracks=1, backtrack_z=1.0)  # fmt: skip
    callback = Backtracking(select, tmp_path, None, best, {})
    shifted = best + torch.tensor([0.1, 0.1, 0.1, 0.1])  # worse by 0.1 on every question: se 0, clearly worse
    assert callback._within_noise(shifted) == (False, pytest.approx(0.1), pytest.approx(0.0, abs=1e-6))
    mixed = best + torch.tensor([0.5, -0.3, 0.4, -0.4])  # worse by 0.05 on average, se = sd / 2 = 0.2327
    noise, worse, se = callback._within_noise(mixed)
    assert noise and worse == pytest.approx(0.05) and se == pytest.approx(0.4655 / 2, abs=1e-4)
    accuracy = Backtracking(dataclasses.replace(select, monitor="val/accuracy"), tmp_path, None, best, {})
    assert accuracy._within_noise(best - 0.1)[:2] == (False, pytest.approx(0.1))  # lower is worse
    no_test = Backtracking(dataclasses.replace(select, backtrack_z=None), tmp_path, None, best, {})
    assert no_test._within_noise(mixed)[0] is False
