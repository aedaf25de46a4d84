"""The bundled SmolLM2-135M-Instruct: conversion, its real tokenizer's letters, a short real CFT run."""

import json

import pytest

from calibration_lightning.data.letters import letter_token_ids
from calibration_lightning.errors import TokenizerError
from calibration_lightning.models.loading import load_tokenizer
from calibration_lightning.models.sources import bundled_smollm2
from calibration_lightning.recipe import run
from tests.conftest import model_conf

pytestmark = pytest.mark.slow


def test_conversion_is_a_safetensors_folder():
    folder = bundled_smollm2()
    from pathlib import Path

    files = {p.name for p in Path(folder).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".gguf")) for name in files)


def test_real_tokenizer_letters_in_context():
    tok = load_tokenizer(bundled_smollm2(), model_conf())
    ids = letter_token_ids(tok, "Question?\nA. x\nB. y\nAnswer:", " ", 4)
    assert tok.convert_ids_to_tokens(ids) == ["ĠA", "ĠB", "ĠC", "ĠD"]
    # "Answer: " already ends in a space token; appending "A" re-tokenizes it into "ĠA": must be refused
    with pytest.raises(TokenizerError, match="option letter 'A' is not a single token"):
        letter_token_ids(tok, "Question?\nAnswer: ", "", 4)


def test_short_cft_run_on_smollm2_moves_calibration(make_cfg, tmp_path):
    cfg = make_cfg(
        "dataset.split.train=48",
        "dataset.split.val=16",
        "dataset.split.test=32",
        "dataset.source.max_question_chars=120",
        "method.epochs=2",  # at most 4 rounds of 6 steps of 4: the real model through rounds, backtracking, selection
        "method.select.every_n_steps=6",
    )
    result = run(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["before"]["conf_ece"] > 0.3  # the aligned model is badly overconfident (collapses to "A")
    assert result["after"]["conf_ece"] < metrics["before"]["conf_ece"]
    predictions = [json.loads(x) for x in (tmp_path / "run" / "predictions_before.jsonl").read_text().splitlines()]
    assert sum(p["prediction"] == "A" for p in predictions) / len(predictions) > 0.8


def test_report_from_real_default_runs(make_cfg, tmp_path):
    """The report table over real SmolLM2 runs of several methods equals their metrics.json."""
    import csv

    from calibration_lightning.report import main as report_main

    small = ["dataset.split.train=8", "dataset.split.val=32", "dataset.split.test=32"]
    for method in ("none", "ts"):
        run(make_cfg(f"method={method}", *small, out=f"runs/{method}"))
    assert report_main([str(tmp_path / "runs")]) == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "runs" / "report.csv").open())}
    assert list(rows) == ["none", "ts"] and all(r["model"] == "smollm2_135m" for r in rows.values())
    for method, row in rows.items():
        after = json.loads((tmp_path / "runs" / method / "metrics.json").read_text())["after"]
        assert float(row["conf_ece after"]) == pytest.approx(after["conf_ece"], abs=5e-5)
        assert float(row["accuracy after"]) == pytest.approx(after["accuracy"], abs=5e-5)
    assert float(rows["ts"]["accuracy after"]) == float(rows["none"]["accuracy after"])  # TS keeps predictions
