"""Whole runs on the tiny model through the real configs: every method writes the same outputs, auto's candidates
train as the methods alone, the same seed gives the same numbers."""

import csv
import json

import pytest

from calibration_lightning.errors import UserError
from calibration_lightning.recipe import run
from tests.conftest import TINY_SPLIT
from tests.helpers import startup_check

pytestmark = pytest.mark.slow

OUTPUT_FILES = {
    *("metrics.json", "config.yaml", "predictions_before.jsonl", "predictions_after.jsonl", "reliability_test.png")
}
METRIC_KEYS = {
    *("conf_ece", "cw_ece", "accuracy", "brier", "nll", "mce", "adaptive_ece", "smooth_ece", "n", "ci95"),
    *("conf_ece_debiased", "cw_ece_debiased"),
}


@pytest.mark.parametrize(
    "method,trained", [("cft", True), ("rcft", True), ("label_smoothing", True), ("none", False), ("ts", False)]
)
def test_every_method_writes_its_outputs(tiny_run, method, trained):
    out = tiny_run(method)
    assert OUTPUT_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["before"]) == METRIC_KEYS and set(metrics["after"]) == METRIC_KEYS
    assert metrics["before"]["n"] == 24 and metrics["method"] == method
    assert metrics["regime"]["verdict"] in ("calibratable", "non-calibratable")
    rows = [json.loads(line) for line in (out / "predictions_after.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {"id", "gold", "prediction", "probabilities", "confidence"} <= set(rows[0])
    assert sum(r["correct"] for r in rows) / 24 == pytest.approx(metrics["after"]["accuracy"])
    adapter = out / "adapter"
    if trained:
        assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
        assert not any(p.name.startswith("model") for p in adapter.iterdir())  # never the base weights
        assert metrics["training"]["rounds_run"] >= 1
        # the kept adapters change the test scores exactly when a round beat the untrained model on validation
        changed = metrics["after"]["nll"] != pytest.approx(metrics["before"]["nll"], abs=1e-7)
        assert changed == metrics["training"]["beat_untrained"]
    else:
        assert not adapter.exists() and "training" not in metrics
    val_before = next(
        float(r["val/nll"]) for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r["val/nll"]
    )
    if method == "ts":  # one temperature on the letter logits: the answers stay; validation NLL (its fit) can only fall
        assert metrics["temperature"] > 0 and metrics["after"]["accuracy"] == metrics["before"]["accuracy"]
        assert metrics["objective"] < val_before  # objective: val/nll after, at the fitted temperature
    if method == "none":
        assert metrics["objective"] == pytest.approx(val_before, abs=1e-6) and metrics["after"] == metrics["before"]


def test_auto_keeps_a_candidate_trained_exactly_as_the_method_alone(tiny_run):
    auto, alone = tiny_run("auto"), {m: tiny_run(m) for m in ("cft", "rcft")}
    metrics = json.loads((auto / "metrics.json").read_text())
    assert set(metrics["auto"]["candidates"]) == {"cft", "rcft"} and metrics["requested_method"] == "auto"
    assert metrics["method"] == metrics["auto"]["chosen"] and (auto / "adapter").is_dir()
    assert all(c["n"] == 16 for c in metrics["auto"]["candidates"].values())  # validation metrics, not test
    kept = json.loads((alone[metrics["method"]] / "metrics.json").read_text())
    assert metrics["training"] == kept["training"]
    for key, value in kept["after"].items():  # smECE and the intervals: float64 of float32 probabilities
        if key != "ci95":
            assert metrics["after"][key] == pytest.approx(value, abs=1e-6), key
    # the test split is scored twice, before training and with the kept candidate, never with the other one
    logged = [r for r in csv.DictReader((auto / "logs" / "metrics.csv").open()) if r.get("test/conf_ece")]
    assert len(logged) == 2 and float(logged[-1]["test/conf_ece"]) == pytest.approx(kept["after"]["conf_ece"], abs=1e-6)
    for m in ("cft", "rcft"):  # a candidate's validation metrics = the method alone's after-training ones
        alone_val = [r for r in csv.DictReader((alone[m] / "logs" / "metrics.csv").open()) if r.get("val/conf_ece")]
        for key in ("conf_ece", "accuracy", "nll"):
            assert metrics["auto"]["candidates"][m][key] == pytest.approx(float(alone_val[-1][f"val/{key}"]), abs=1e-6)


def test_same_seed_same_metrics_and_a_finished_run_is_never_overwritten(tiny_run, make_cfg, tmp_path):
    again = run(make_cfg("model=tiny", "method=cft", *TINY_SPLIT))
    first = json.loads((tiny_run("cft") / "metrics.json").read_text())
    for key in ("wall_time_s",):
        again.pop(key), first.pop(key)
    assert again == first
    written = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(UserError, match="already holds a finished run"):
        startup_check(["model=tiny", f"hydra.run.dir={tmp_path / 'run'}"])
    assert (tmp_path / "run" / "metrics.json").read_text() == written


def test_rcft_logs_loss_parts_and_bin_accuracies(tiny_run):
    header = (tiny_run("rcft") / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_sft", "train/loss_ece", "val/conf_ece", "test/conf_ece"} <= set(header)
    assert any(h.startswith("em/bin_acc_") for h in header)


def test_cft_lowers_training_loss_on_tiny(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny", "method=cft", "method.epochs=3", "method.select=null", "method.lr_search=null",
        "method.optim.lr=5e-3", "trainer.log_every_n_steps=1", *TINY_SPLIT,
    )  # fmt: skip
    run(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 18 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
