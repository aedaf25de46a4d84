"""The report from hand-made run folders: rows in the paper's order, before / after / difference with its
interval, model=hf runs named by their model, per-subject tables, and runs written before intervals."""

import csv
import json

import pytest
import yaml

from calibration_lightning.report import main as report_main

POINT = {"conf_ece": 0.2, "cw_ece": 0.1, "accuracy": 0.5, "brier": 0.6, "nll": 1.2, "mce": 0.3}
NEW = {"adaptive_ece": 0.21, "smooth_ece": 0.19}


def _run(folder, method, model, conf_after, with_intervals=True, name_or_path=None):
    folder.mkdir(parents=True)
    before = {**POINT, **(NEW if with_intervals else {}), "n": 4}
    after = {**before, "conf_ece": conf_after}
    metrics = {"before": before, "after": after, "method": method}
    if with_intervals:
        before["ci95"] = {"conf_ece": [0.1, 0.3]}
        after["ci95"] = {"conf_ece": [conf_after - 0.05, conf_after + 0.05]}
        metrics["improvement"] = {
            k: {"difference": after[k] - before[k], "ci95": [-0.15, -0.05], "excludes_zero": True}
            for k in (*POINT, *NEW)
        }
        metrics["subjects"] = {
            "law": {
                "before": {"conf_ece": 0.25, "accuracy": 0.5, "n": 2},
                "after": {"conf_ece": 0.125, "accuracy": 0.5, "n": 2},
            }
        }
    model_node = {"name": model, **({"loader": {"name_or_path": name_or_path}} if name_or_path else {})}
    config = {"model": model_node, "dataset": {"name": "mmlu_bundled"}, "n_bins": 10}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"gold": "A", "probabilities": {"A": 0.7, "B": 0.3}}, {"gold": "B", "probabilities": {"A": 0.6, "B": 0.4}}]
    (folder / "predictions_after.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_report_rows_before_after_difference_in_the_papers_order(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i, method in enumerate(("rcft", "cft", "label_smoothing", "ts", "none")):  # written in reverse order
        _run(runs / f"{i}_{method}", method, "smollm2_135m", 0.2 - 0.01 * (i + 1))
    _run(runs / "hf_a", "cft", "hf", 0.05, name_or_path="allenai/OLMo-2-1124-7B-DPO")
    _run(runs / "hf_b", "cft", "hf", 0.06, name_or_path="/models/my-model", with_intervals=False)
    assert report_main([str(runs)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((runs / "report.csv").open()))
    assert [(r["model"], r["method"]) for r in rows] == [
        ("/models/my-model", "cft"),
        ("allenai/OLMo-2-1124-7B-DPO", "cft"),
        *[("smollm2_135m", m) for m in ("none", "ts", "label_smoothing", "cft", "rcft")],
    ]
    cft = next(r for r in rows if r["model"] == "smollm2_135m" and r["method"] == "cft")
    assert cft["set"] == "test" and cft["n"] == "4"
    assert float(cft["conf_ece before"]) == 0.2 and float(cft["conf_ece after"]) == pytest.approx(0.18)
    assert float(cft["conf_ece difference"]) == pytest.approx(-0.02)
    assert (cft["conf_ece difference lo"], cft["conf_ece difference hi"]) == ("-0.15", "-0.05")
    assert (cft["conf_ece after lo"], cft["conf_ece excludes zero"]) == (str(0.18 - 0.05), "True")
    assert float(cft["smooth_ece before"]) == 0.19 and float(cft["adaptive_ece after"]) == 0.21
    old = rows[0]  # a run written before intervals: the point difference, no interval
    assert float(old["conf_ece difference"]) == pytest.approx(-0.14) and old["conf_ece difference lo"] == ""
    assert old["smooth_ece before"] == ""

    md = (runs / "report.md").read_text()
    assert md.startswith("| model | method | dataset | set | n | conf-ECE before | conf-ECE after |")
    line = next(x for x in md.splitlines() if x.startswith("| smollm2_135m | cft |"))
    assert "| 0.2000 | 0.1800 | -0.0200 [-0.150, -0.050]* |" in line and line in printed
    assert "| /models/my-model | cft | mmlu_bundled | test | 4 | 0.2000 | 0.0600 | -0.1400 |" in md
    assert "### smollm2_135m / cft / mmlu_bundled: test, per subject" in md
    assert "| law | 2 | 0.2500 | 0.1250 | 0.5000 | 0.5000 |" in md
    assert "### /models/my-model" not in md  # no subjects in that run
