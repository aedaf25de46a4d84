"""Whole runs on the tiny model through the real configs: every method writes the same outputs."""

import csv
import json

import pytest

from calibration_lightning.run import run
from tests.conftest import TINY_SPLIT

OUTPUT_FILES = {
    "metrics.json",
    "config.yaml",
    "predictions_before.jsonl",
    "predictions_after.jsonl",
    "reliability_test.png",
}
METRIC_KEYS = {
    *("conf_ece", "cw_ece", "accuracy", "brier", "nll", "mce", "adaptive_ece", "smooth_ece", "n", "ci95"),
    *("conf_ece_debiased", "cw_ece_debiased"),
}


def _check_outputs(out, trained: bool):
    files = {p.name for p in out.iterdir()}
    assert OUTPUT_FILES <= files
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["before"]) == METRIC_KEYS and set(metrics["after"]) == METRIC_KEYS
    assert metrics["before"]["n"] == 24
    assert metrics["regime"]["verdict"] in ("calibratable", "non-calibratable")
    rows = [json.loads(line) for line in (out / "predictions_after.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {"id", "gold", "prediction", "probabilities", "confidence"} <= set(rows[0])
    assert sum(r["correct"] for r in rows) / 24 == pytest.approx(metrics["after"]["accuracy"])
    adapter = out / "adapter"
    if trained:
        assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
        assert not any(p.name.startswith("model") for p in adapter.iterdir())  # never the base weights
    else:
        assert not adapter.exists()
    return metrics


@pytest.mark.parametrize(
    "method,trained",
    [("cft", True), ("rcft", True), ("label_smoothing", True), ("none", False), ("ts", False), ("auto", True)],
)
def test_every_method_runs_on_tiny(make_cfg, tmp_path, method, trained):
    cfg = make_cfg("model=tiny", f"method={method}", *TINY_SPLIT)
    result = run(cfg)
    metrics = _check_outputs(tmp_path / "run", trained)
    assert result["after"] == metrics["after"]
    if method == "none":
        assert metrics["after"] == metrics["before"]
    if method == "ts":
        assert metrics["temperature"] > 0
        assert metrics["after"]["accuracy"] == metrics["before"]["accuracy"]
    if method == "auto":
        auto = metrics["auto"]
        assert set(auto["candidates"]) == {"cft", "rcft"} and metrics["requested_method"] == "auto"
        assert all(c["n"] == 16 for c in auto["candidates"].values())  # validation metrics, not test
        assert metrics["method"] == auto["chosen"]


def test_auto_candidates_equal_the_standalone_runs(make_cfg, tmp_path):
    """Each candidate of method=auto trains exactly as the method run alone; the one kept is written."""
    auto = run(make_cfg("model=tiny", "method=auto", *TINY_SPLIT, out="auto"))
    alone = {m: run(make_cfg("model=tiny", f"method={m}", *TINY_SPLIT, out=m)) for m in ("cft", "rcft")}
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    kept = alone[metrics["method"]]["after"]
    assert set(auto["after"]) == set(kept)
    for key, value in kept.items():  # smECE and the intervals are float64 of float32 probabilities: last bits
        expected = {m: pytest.approx(ci, abs=1e-6) for m, ci in value.items()} if key == "ci95" else value
        assert auto["after"][key] == (expected if key == "ci95" else pytest.approx(expected, abs=1e-6)), key
    # the test split is scored twice, before training and with the kept candidate, never with the other one
    logged = [r for r in csv.DictReader((tmp_path / "auto" / "logs" / "metrics.csv").open()) if r.get("test/conf_ece")]
    assert len(logged) == 2 and float(logged[-1]["test/conf_ece"]) == pytest.approx(kept["conf_ece"], abs=1e-6)
    for m in ("cft", "rcft"):  # a candidate's validation metrics = the standalone run's last logged val metrics
        header, *lines = (tmp_path / m / "logs" / "metrics.csv").read_text().splitlines()
        cols = header.split(",")
        last_val = [row.split(",") for row in lines if row.split(",")[cols.index("val/conf_ece")]][-1]
        for key in ("conf_ece", "accuracy", "nll"):
            assert metrics["auto"]["candidates"][m][key] == pytest.approx(
                float(last_val[cols.index(f"val/{key}")]), abs=1e-6
            )


def test_rcft_logs_loss_parts_and_bin_accuracies(make_cfg, tmp_path):
    cfg = make_cfg("model=tiny", "method=rcft", "method.epochs=2", "trainer.log_every_n_steps=1", *TINY_SPLIT)
    run(cfg)
    header = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_sft", "train/loss_ece", "val/conf_ece", "test/conf_ece"} <= set(header)
    assert any(h.startswith("em/bin_acc_") for h in header)


def test_cft_lowers_training_loss_on_tiny(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=tiny",
        "method=cft",
        "method.epochs=3",
        "method.select=null",
        "method.lr_search=null",
        "method.optim.lr=5e-3",
        "trainer.log_every_n_steps=1",
        *TINY_SPLIT,
    )
    run(cfg)
    lines = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in lines[1:] if r.split(",")[col]]
    assert len(losses) >= 12 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_existing_run_directory_is_not_overwritten(make_cfg, tmp_path):
    from calibration_lightning.errors import UserError

    cfg = make_cfg("model=tiny", "method=none", *TINY_SPLIT)
    run(cfg)
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(UserError, match="already holds a finished run"):
        run(cfg)
    assert (tmp_path / "run" / "metrics.json").read_text() == before


def test_same_seed_same_metrics(make_cfg, tmp_path):
    a = run(make_cfg("model=tiny", "method=cft", *TINY_SPLIT, out="a"))
    b = run(make_cfg("model=tiny", "method=cft", *TINY_SPLIT, out="b"))
    assert a["after"] == b["after"] and a["before"] == b["before"]
