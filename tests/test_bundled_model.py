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
        "dataset.split.train=16",
        "dataset.split.val=16",
        "dataset.split.test=16",
        "dataset.source.max_question_chars=120",
        "method.epochs=2",  # at most 4 rounds of 2 steps of 4: the real model through rounds and selection
        "method.select.every_n_steps=2",
    )
    result = run(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["before"]["conf_ece"] > 0.3  # the aligned model is badly overconfident (collapses to "A")
    assert result["after"]["conf_ece"] < metrics["before"]["conf_ece"]
    predictions = [json.loads(x) for x in (tmp_path / "run" / "predictions_before.jsonl").read_text().splitlines()]
    assert sum(p["prediction"] == "A" for p in predictions) / len(predictions) > 0.8


def test_report_from_real_default_runs(make_cfg, tmp_path):
    """The report over real SmolLM2 runs (aligned, temperature scaling) equals their metrics.json; report.tex
    compiles (where pdflatex is installed) and the figures show the aligned model and the method after it."""
    import csv
    import shutil
    import subprocess

    from calibration_lightning.report import main as report_main

    small = ["dataset.split.train=8", "dataset.split.val=16", "dataset.split.test=16"]
    for method in ("none", "ts"):
        run(make_cfg(f"method={method}", *small, out=f"runs/{method}"))
    runs = tmp_path / "runs"
    assert report_main([str(runs)]) == 0
    rows = {(r["method"], r["metric"]): r for r in csv.DictReader((runs / "report.csv").open())}
    assert list(dict.fromkeys(m for m, _ in rows)) == ["none", "ts"]
    for method in ("none", "ts"):
        after = json.loads((runs / method / "metrics.json").read_text())["after"]
        for metric in ("conf_ece", "accuracy"):
            assert rows[method, metric]["model"] == "smollm2_135m"
            assert float(rows[method, metric]["after"]) == after[metric]
    assert rows["ts", "accuracy"]["after"] == rows["none", "accuracy"]["after"]  # TS keeps predictions
    assert "| SmolLM2-135M-Instruct | temperature scaling (post-hoc) | 16 |" in (runs / "report.md").read_text()
    svg = (runs / "reliability.svg").read_text()
    assert "aligned model (before)" in svg and "after temperature scaling (post-hoc)" in svg
    assert (runs / "reliability.pdf").read_bytes().startswith(b"%PDF-")
    if shutil.which("pdflatex"):
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=runs)
        assert done.returncode == 0 and (runs / "report.pdf").exists()
