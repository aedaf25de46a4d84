"""Scoring any tool's predictions: the Python function, the CLI on a run's prediction files (it gives that
run's metrics.json values), and one error line for a bad file (lm-eval files: test_lm_eval_bridge.py)."""

import json

import pytest
import torch

from calibration_lightning import evaluate_predictions
from calibration_lightning.calibration.intervals import DEBIASED, MEANS
from calibration_lightning.calibration.metrics import METRICS
from calibration_lightning.predictions import (
    SCHEMA_VERSION,
    evaluate_pair,
    interval_key,
    paired_block,
    phase_metrics,
)
from calibration_lightning.predictions.__main__ import main
from calibration_lightning.recipe import run
from tests.conftest import TINY_SPLIT


def test_the_block_by_hand():
    # Two questions, two options: right at 0.8, wrong at 0.6 (gold B). Accuracy 1/2, Brier ((0.2^2 * 2) +
    # (0.6^2 * 2)) / 2 = 0.4, conf-ECE (top-label bins 0.8 and 0.6, gaps 0.2 and 0.6) = 0.4.
    probs, labels = torch.tensor([[0.8, 0.2], [0.6, 0.4]]), torch.tensor([0, 1])
    block = evaluate_predictions(probs, labels, resamples=200)
    assert set(block) == {*METRICS, "conf_ece_debiased", "cw_ece_debiased", "n", "ci95", "ci95_null"}
    assert block["accuracy"] == 0.5 and block["n"] == 2
    assert block["brier"] == pytest.approx(0.4) and block["conf_ece"] == pytest.approx(0.4)
    assert block["conf_ece_debiased"] == 0.0  # one question per bin: no squared gap can be estimated
    assert set(block["ci95"]) == {*MEANS, *DEBIASED} and set(block["ci95_null"]) == set(block["ci95"])
    assert "ci95" not in evaluate_predictions(probs, labels, resamples=0)
    changed = evaluate_predictions(torch.tensor([[0.8, 0.2], [0.3, 0.7]]), labels, resamples=200, before=probs)
    d = changed["improvement"]
    assert d["accuracy"]["difference"] == 0.5 and d["smooth_ece"]["ci95"] is None
    assert set(d) == {*METRICS, "conf_ece_debiased", "cw_ece_debiased"}
    # One paired computation gives both blocks exactly as the single calls do (the same resampled questions).
    g = torch.Generator().manual_seed(0)
    first, second = (torch.softmax(torch.randn(90, 3, generator=g) * s, 1) for s in (3.0, 1.0))
    y = torch.randint(3, (90,), generator=g)
    pair = evaluate_pair(first, second, y, resamples=300, seed=3)
    _close(pair["before"], evaluate_predictions(first, y, resamples=300, seed=3))
    _close(
        {**pair["after"], "improvement": pair["improvement"]},
        evaluate_predictions(second, y, resamples=300, seed=3, before=first),
    )
    _close(pair["after"], evaluate_predictions(second, y, resamples=300, seed=3))
    # paired_block adds the intervals to point values it is given (it recomputes none of them)
    given = [{**phase_metrics(p, y), "brier": 5.0} for p in (first, second)]
    block = paired_block(first, second, y, tuple(given), resamples=300, seed=3)
    assert block["before"]["brier"] == 5.0 and block["improvement"]["brier"]["difference"] == 0.0
    assert block["before"]["ci95"]["brier"][1] == 5.0  # the interval widened to hold the value printed beside it
    assert block["before"]["ci95"]["nll"] == pytest.approx(pair["before"]["ci95"]["nll"])
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate_predictions(torch.tensor([[0.7, 0.7]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        evaluate_predictions(probs, torch.tensor([0, 2]))


@pytest.mark.parametrize("level,key", [(0.95, "ci95"), (0.9, "ci90"), (0.975, "ci97.5"), (0.8, "ci80")])
def test_the_interval_key_says_its_level(level, key):
    assert interval_key(level) == key
    g = torch.Generator().manual_seed(1)
    probs, labels = torch.softmax(torch.randn(60, 3, generator=g) * 2, 1), torch.randint(3, (60,), generator=g)
    block = evaluate_predictions(probs, labels, level=level, before=probs.flip(0), resamples=400)
    assert key in block and "ci95" not in block or key == "ci95"
    assert all(key in d for d in block["improvement"].values())
    assert SCHEMA_VERSION == 2


def test_numpy_binary_predictions_are_scored_like_their_two_columns():
    g = torch.Generator().manual_seed(2)
    p1 = torch.rand(80, generator=g, dtype=torch.float64)
    y = (torch.rand(80, generator=g, dtype=torch.float64) < p1).long()
    binary = evaluate_predictions(p1.numpy()[::-1], y.numpy()[::-1], resamples=300)
    two = evaluate_predictions(torch.stack([1 - p1, p1], 1).flip(0), y.flip(0), resamples=300)
    _close(binary, two)


def _close(got, want, path="", tol=1e-7):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}", tol)
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]", tol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=tol), path
    else:
        assert got == want, path


@pytest.mark.slow
def test_cli_on_a_finished_run_gives_its_metrics_json(make_cfg, tmp_path, capsys):
    cfg = make_cfg("model=tiny", "method=ts", *TINY_SPLIT)
    run(cfg)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    boot = metrics["bootstrap"]
    options = ["--resamples", str(boot["resamples"]), "--level", str(boot["level"]), "--seed", str(boot["seed"])]
    paired = [str(out / "predictions_after.jsonl"), "--before", str(out / "predictions_before.jsonl")]
    assert main([*paired, "--out", str(tmp_path / "scored"), *options]) == 0
    scored = json.loads((tmp_path / "scored" / "predictions_after.json").read_text())
    assert scored["format"] == "calibration_lightning" and scored["bootstrap"] == boot
    # the run scores float32 probabilities, the CLI reads them as float64: equal to float32's precision
    _close(scored["metrics"], {**metrics["after"], "improvement": metrics["improvement"]}, tol=1e-6)
    # Alone (no --before): the same values and intervals, the resamples being the same questions.
    assert main([str(out / "predictions_after.jsonl"), "--out", str(tmp_path / "alone"), *options]) == 0
    alone = json.loads((tmp_path / "alone" / "predictions_after.json").read_text())
    _close(alone["metrics"], metrics["after"], tol=1e-6)
    printed = capsys.readouterr().out
    row = next(line.split() for line in printed.splitlines() if line.startswith("predictions_after "))
    assert row[1:5] == [
        str(metrics["after"]["n"]),
        f"{metrics['after']['accuracy']:.4f}",
        "-",
        f"{metrics['after']['conf_ece']:.4f}",
    ]


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"id": "q", "gold": "C", "probabilities": {"A": 0.5, "B": 0.5}}', "row 2: 'gold' must be one of"),
        ('{"id": "q", "gold": "A", "probabilities": {"A": 0.9, "B": 0.5}}', "row 2: probabilities sum to 1.4"),
        ("{not json", "row 2: not JSON"),
    ],
)
def test_a_bad_file_is_one_error_line_and_nothing_is_written(tmp_path, capsys, line, message):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "p", "gold": "A", "probabilities": {"A": 0.7, "B": 0.3}}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p", "gold": "A", "probabilities": {"A": 0.7, "B": 0.3}}\n' + line + "\n")
    assert main([str(good), str(bad), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    (line,) = printed.err.strip().splitlines()
    assert line.startswith(f"error: {bad}: {message}"), line
    assert not (tmp_path / "out").exists()


def test_no_question_is_a_value_error_not_a_crash():
    with pytest.raises(ValueError, match=r"holds no question \(N = 0\)"):
        evaluate_predictions(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
