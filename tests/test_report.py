"""The report from hand-made run folders (metrics.json schema 2): rows in the paper's order with readable names,
each bracket beside the value it is for, report.csv one row per run x set x metric, report.tex a booktabs table
that compiles, and runs written before schema 2 read without misplacing their intervals."""

import csv
import json
import shutil
import subprocess

import pytest
import yaml

from calibration_lightning.report import interval_key, main, model_name, reported, reported_change

POINT = {"conf_ece": 0.2, "cw_ece": 0.1, "accuracy": 0.5, "brier": 0.6, "nll": 1.2, "mce": 0.3}
POINT |= {"adaptive_ece": 0.21, "smooth_ece": 0.19, "conf_ece_debiased": 0.15, "cw_ece_debiased": 0.08}


def _block(conf_ece, key="ci95", n=40):
    """A schema-2 phase block: intervals only for the values they are for (none for the plug-in ECEs)."""
    block = {**POINT, "conf_ece": conf_ece, "n": n}
    block[key] = {"accuracy": [0.35, 0.65], "conf_ece_debiased": [0.05, 0.25], "cw_ece_debiased": None}
    block[f"{key}_null"] = {"cw_ece_debiased": "too few questions per bin"}
    return block


def _run(folder, method, conf_after, model="smollm2_135m", level=0.95, kept=None, dataset="mmlu_bundled", node=None):
    key = interval_key(level)
    folder.mkdir(parents=True)
    before, after = _block(0.4, key), _block(conf_after, key)
    change = {
        m: {"difference": after[m] - v, key: None, "excludes_zero": None} for m, v in before.items() if m in POINT
    }
    change["conf_ece_debiased"] = {"difference": 0.0, key: [-0.12, -0.02], "excludes_zero": True}
    metrics = {"schema_version": 2, "before": before, "after": after, "improvement": change, "model": model}
    metrics |= {"method": kept or method, "requested_method": method, "bootstrap": {"level": level, "resamples": 200}}
    config = {"model": {"name": model}, "dataset": {"name": dataset}, "n_bins": 10, "method": node or {}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return metrics


def test_one_accessor_reads_values_and_the_interval_for_that_very_value():
    block = _block(0.3, "ci90")
    assert reported(block, "accuracy", 0.9) == (0.5, [0.35, 0.65])
    assert reported(block, "conf_ece", 0.9) == (0.3, None)  # the plug-in: no bracket
    assert reported(block, "accuracy", 0.95) == (0.5, None)  # another level's key is not this level's interval
    assert reported(block, "cw_ece_debiased", 0.9) == (0.08, None)  # null interval (its reason beside it)
    assert reported(None, "accuracy", 0.9) == (None, None)
    change = {"nll": {"difference": -0.1, "ci90": [-0.2, -0.01], "excludes_zero": True}}
    assert reported_change(change, "nll", 0.9) == (-0.1, [-0.2, -0.01], True)
    assert reported_change(change, "brier", 0.9) == (None, None, None)
    assert [interval_key(x) for x in (0.95, 0.9, 0.975, 0.99)] == ["ci95", "ci90", "ci97.5", "ci99"]


def test_display_names():
    assert model_name("smollm2_135m") == "SmolLM2-135M-Instruct"
    assert model_name("tiny") == "tiny random Llama"
    assert model_name("allenai/OLMo-2-1124-7B-DPO") == "allenai/OLMo-2-1124-7B-DPO"  # a hub id as it is
    assert model_name("/models/ft/my-model") == "my-model"  # a local folder by its name
    assert model_name("smollm2_135m+runs/cft/adapter") == "SmolLM2-135M-Instruct + adapter adapter"


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for i, method in enumerate(("rcft", "cft", "label_smoothing", "ts", "none")):  # written in reverse order
        calibrator = {"calibrator": {"_target_": "TemperatureScaler"}} if method == "ts" else {}
        _run(root / f"{i}_{method}", method, 0.4 if method == "none" else 0.1 + 0.01 * i, node=calibrator)
    auto = _run(root / "auto", "auto", 0.05, kept="rcft")
    auto["subjects"] = {
        "law": {
            "before": {"conf_ece": 0.25, "accuracy": 0.5, "n": 2},
            "after": {"conf_ece": 0.125, "accuracy": 0.5, "n": 2},
        }
    }
    (root / "auto" / "metrics.json").write_text(json.dumps(auto))
    _run(root / "olmo", "cft", 0.07, model="allenai/OLMo-2-1124-7B-DPO", level=0.9)
    return root


def test_markdown_rows_in_the_papers_order_with_brackets_only_beside_their_values(runs, capsys):
    assert main([str(runs)]) == 0
    md = (runs / "report.md").read_text()
    assert md.startswith("## mmlu_bundled: test\n\n| model | method | n | conf-ECE before | conf-ECE after |")
    rows = [line for line in md.splitlines() if line.startswith("| SmolLM2") or line.startswith("| allenai")]
    methods = [r.split(" | ")[1] for r in rows[:7]]  # then the changes, but for method=none (no change)
    assert methods == [
        "CFT",  # allenai/OLMo-2... sorts before SmolLM2
        "aligned (no fine-tuning)",
        "temperature scaling (post-hoc)",
        "label smoothing",
        "CFT",
        "RCFT",
        "auto: CFT or RCFT (kept RCFT)",
    ]
    cft = next(r for r in rows if r.startswith("| SmolLM2-135M-Instruct | CFT | 40 |"))
    # plug-in ECEs bare; accuracy with its interval
    assert cft == (
        "| SmolLM2-135M-Instruct | CFT | 40 | 0.4000 | 0.1100 | 0.1000 | 0.1000 | 0.5000 [0.350, 0.650] |"
        " 0.5000 [0.350, 0.650] |"
    )
    change = [r for r in rows if r.startswith("| SmolLM2-135M-Instruct | CFT |")][1]
    # conf-ECE changes without interval; the debiased one with its interval and the star; a null interval: bare
    assert change.startswith("| SmolLM2-135M-Instruct | CFT | -0.2900 | +0.0000 | +0.0000 [-0.120, -0.020]* |")
    olmo = next(r for r in rows if r.startswith("| allenai/OLMo-2-1124-7B-DPO | CFT | 40 |"))
    assert "0.5000 [0.350, 0.650]" in olmo  # level 0.9: read under ci90
    assert len(rows) == 7 + 6 and "aligned (no fine-tuning)" not in "".join(rows[7:])
    assert "[lo, hi]: the 90%, 95% bootstrap interval" in md
    subjects = md[
        md.index("### SmolLM2-135M-Instruct / auto: CFT or RCFT (kept RCFT) / mmlu_bundled: test, per subject") :
    ]
    assert "| law | 2 | 0.2500 | 0.1250 | 0.5000 | 0.5000 |" in subjects and md.count("per subject") == 1
    assert md[: md.index("\n### ")] in capsys.readouterr().out  # printed too, but for the per-subject tables


def test_csv_one_row_per_run_set_and_metric(runs):
    assert main([str(runs), "--out", str(runs / "out")]) == 0
    rows = list(csv.DictReader((runs / "out" / "report.csv").open()))
    assert len(rows) == 7 * len(POINT)
    acc = next(r for r in rows if r["method"] == "cft" and r["model"] == "smollm2_135m" and r["metric"] == "accuracy")
    assert (acc["before"], acc["before_lo"], acc["before_hi"], acc["n"], acc["level"]) == (
        "0.5",
        "0.35",
        "0.65",
        "40",
        "0.95",
    )
    conf = next(r for r in rows if r["method"] == "cft" and r["model"] == "smollm2_135m" and r["metric"] == "conf_ece")
    assert (conf["after"], conf["after_lo"], conf["difference_lo"], conf["excludes_zero"]) == ("0.11", "", "", "")
    assert float(conf["difference"]) == pytest.approx(0.11 - 0.4)
    deb = next(r for r in rows if r["method"] == "cft" and r["metric"] == "conf_ece_debiased")
    assert (deb["difference_lo"], deb["difference_hi"], deb["excludes_zero"]) == ("-0.12", "-0.02", "True")
    assert {r["method"] for r in rows} == {"none", "ts", "label_smoothing", "cft", "rcft", "auto (rcft)"}


def _tex_rows(tex):
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    return [line for line in body.splitlines() if line.endswith(r"\\") and "multicolumn" not in line]


def test_tex_table_is_the_papers_table_2(runs):
    _run(runs / "arc", "cft", 0.09, dataset="arc_challenge")
    assert main([str(runs)]) == 0
    tex = (runs / "report.tex").read_text()
    assert r"\usepackage{booktabs}" in tex and tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1
    assert r"\multicolumn{3}{c}{before} & \multicolumn{3}{c}{after} \\" in tex
    assert r"Model & Method & conf-ECE & cw-ECE & Acc. & conf-ECE & cw-ECE & Acc. \\" in tex
    assert r"\textit{arc\_challenge, test (N = 40)}" in tex and r"\textit{mmlu\_bundled, test (N = 40)}" in tex
    rows = _tex_rows(tex)
    assert [r.split(" & ")[:2] for r in rows] == [
        ["SmolLM2-135M-Instruct", "CFT"],  # arc_challenge first (datasets in order)
        ["allenai/OLMo-2-1124-7B-DPO", "CFT"],
        ["SmolLM2-135M-Instruct", "aligned (no fine-tuning)"],
        *[["", m] for m in ("temperature scaling (post-hoc)", "label smoothing", "CFT", "RCFT")],
        ["", "auto: CFT or RCFT (kept RCFT)"],
    ]
    cells = rows[5].removesuffix(r" \\").split(" & ")  # SmolLM2 CFT, before then after
    acc = r"0.5000 {\scriptsize[0.350, 0.650]}"  # accuracy with its interval, the plug-in ECEs bare
    assert cells[2:] == ["0.4000", "0.1000", acc, "0.1100", "0.1000", acc]
    assert r"[lo, hi]: the 90\%, 95\% bootstrap interval" in tex


@pytest.mark.slow  # starts pdflatex: about 1 s
def test_tex_compiles_standalone(runs, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    _run(runs / "odd", "cft", 0.09, model="/models/a_b&c%d#e")  # every LaTeX special character in a name
    assert main([str(runs)]) == 0
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=runs, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert (runs / "report.pdf").read_bytes().startswith(b"%PDF")
    log = (runs / "report.log").read_text(errors="replace")
    assert "Overfull" not in log and "a\\_b\\&c\\%d\\#e" in (runs / "report.tex").read_text()


def test_a_run_written_before_schema_2_keeps_its_intervals_off_the_plug_in_ece(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    block = {**POINT, "n": 8, "ci95": {"conf_ece": [0.1, 0.3], "accuracy": [0.3, 0.7]}}
    old_change = {"conf_ece": {"difference": 0.0, "ci95": [0.05, 0.1], "excludes_zero": True}}
    (folder / "metrics.json").write_text(
        json.dumps({"before": block, "after": block, "improvement": old_change, "method": "cft", "model": "tiny"})
    )
    assert main([str(tmp_path)]) == 0
    rows = {r["metric"]: r for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert (rows["conf_ece"]["before_lo"], rows["conf_ece"]["difference_lo"]) == ("", "")
    # version 1's conf_ece interval was for the population l2 value: it goes with the debiased estimate of it
    assert (rows["conf_ece_debiased"]["before_lo"], rows["conf_ece_debiased"]["before_hi"]) == ("0.1", "0.3")
    assert (rows["accuracy"]["after_lo"], rows["accuracy"]["after_hi"]) == ("0.3", "0.7")
    assert rows["conf_ece"]["model"] == "tiny" and rows["conf_ece"]["dataset"] == "?"


def test_no_run_is_one_error_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: no finished run (metrics.json) under {tmp_path}"
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: no such folder"
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.5}')  # some other tool's
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'metrics.json'}: no 'before' and 'after' blocks: not the metrics.json of a run"
    )
