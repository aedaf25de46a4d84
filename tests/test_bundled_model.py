"""The bundled SmolLM2-135M-Instruct: conversion, its real tokenizer's letters, a short real CFT run."""

import json

import pytest

from calibration_lightning.data.letters import letter_token_ids
from calibration_lightning.errors import TokenizerError
from calibration_lightning.models.loading import load_tokenizer
from calibration_lightning.models.sources import bundled_smollm2
from calibration_lightning.recipe import run
from tests.conftest import compose_config, model_conf

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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short real CFT run on SmolLM2 in ``runs/cft`` (at most 4 rounds of 2 steps of 4: the real model through
    rounds and selection); the report test adds temperature scaling beside it."""

    root = tmp_path_factory.mktemp("runs")
    small = ["dataset.split.train=16", "dataset.split.val=16", "dataset.split.test=16", "logger=csv"]
    cfg = compose_config(*small, "dataset.source.max_question_chars=120", "method.epochs=2",
                         "method.select.every_n_steps=2", f"output_dir={root / 'cft'}")  # fmt: skip
    run(cfg)
    return root


def test_short_cft_run_on_smollm2_moves_calibration(runs):
    metrics = json.loads((runs / "cft" / "metrics.json").read_text())
    assert metrics["before"]["conf_ece"] > 0.3  # the aligned model is badly overconfident (collapses to "A")
    assert metrics["after"]["conf_ece"] < metrics["before"]["conf_ece"]
    predictions = [json.loads(x) for x in (runs / "cft" / "predictions_before.jsonl").read_text().splitlines()]
    assert sum(p["prediction"] == "A" for p in predictions) / len(predictions) > 0.8


def test_report_from_real_runs(runs):
    """The report over real SmolLM2 runs (CFT, temperature scaling) equals their metrics.json; report.tex
    compiles (where pdflatex is installed) and the figures show the aligned model and each method after it."""
    import csv
    import shutil
    import subprocess

    from calibration_lightning.report import main as report_main

    small = ["dataset.split.train=16", "dataset.split.val=16", "dataset.split.test=16", "logger=csv"]
    run(compose_config("method=ts", *small, "dataset.source.max_question_chars=120", f"output_dir={runs / 'ts'}"))
    assert report_main([str(runs)]) == 0
    rows = {(r["method"], r["metric"]): r for r in csv.DictReader((runs / "report.csv").open())}
    assert list(dict.fromkeys(m for m, _ in rows)) == ["ts", "cft"]  # the paper's row order
    for method in ("ts", "cft"):
        after = json.loads((runs / method / "metrics.json").read_text())["after"]
        for metric in ("conf_ece", "accuracy"):
            assert rows[method, metric]["model"] == "smollm2_135m"
            assert float(rows[method, metric]["after"]) == after[metric]
    assert rows["ts", "accuracy"]["after"] == rows["ts", "accuracy"]["before"]  # TS keeps predictions
    assert rows["ts", "accuracy"]["before"] == rows["cft", "accuracy"]["before"]  # the same aligned model
    assert "| SmolLM2-135M-Instruct | temperature scaling (post-hoc) | 16 |" in (runs / "report.md").read_text()
    svg = (runs / "reliability.svg").read_text()
    assert all(s in svg for s in ("aligned model (before)", "after temperature scaling (post-hoc)", "after CFT"))
    assert (runs / "reliability.pdf").read_bytes().startswith(b"%PDF-")
    if shutil.which("pdflatex"):
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=runs)
        assert done.returncode == 0 and (runs / "report.pdf").exists()
