"""The lm-eval bridge: acc and acc_norm scored as lm-eval's ``process_results`` scores them (choice lengths
without the target delimiter, as lm-eval's results file sets it), groups pooled from ``group_subtasks`` or
``--group``, short rows at lm-eval's 4 decimals, float64 values, one error line for a bad file; and against
lm-eval itself on a HellaSwag-shaped group of two local tasks."""

import json
import os
import subprocess
import sys

import pytest
import torch

from calibration_lightning.predictions.__main__ import main

DATE = "2026-01-02T03-04-05.678901"
# Choices "a", "bbbb", "cc" with log-likelihoods -1, -3, -2.5: acc picks "a"; per character (-1, -0.75, -1.25)
# acc_norm picks "bbbb"; counting the delimiter " " in the lengths (-0.5, -0.6, -0.83) would pick "a" again.
CHOICES, LLS = ["a", "bbbb", "cc"], [-1.0, -3.0, -2.5]


def _sample(doc_id, target, delimiter=" ", lls=LLS, choices=CHOICES):
    arguments = {f"gen_args_{i}": {"arg_0": "Q:", "arg_1": delimiter + c} for i, c in enumerate(choices)}
    resps = [[str(v), "False"] for v in lls]
    return {"doc_id": doc_id, "target": str(target), "arguments": arguments, "filtered_resps": resps, "filter": "none"}


def _lm_eval_folder(folder, tasks, groups=None, delimiter=" ", chat_template=None):
    """``samples_{task}_{DATE}.jsonl`` per task (``{task: [gold, ...]}``) and lm-eval's results file."""
    folder.mkdir(parents=True, exist_ok=True)
    for task, golds in tasks.items():
        rows = [_sample(i, g, delimiter) for i, g in enumerate(golds)]
        (folder / f"samples_{task}_{DATE}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"configs": {t: {"target_delimiter": " "} for t in tasks}, "group_subtasks": groups or {}}
    (folder / f"results_{DATE}.json").write_text(json.dumps({**results, "chat_template": chat_template}))
    return [folder / f"samples_{task}_{DATE}.jsonl" for task in tasks]


def _scored(out, name):
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.parametrize("delimiter,chat_template", [(" ", None), ("", "{{messages}}")])
def test_acc_norm_divides_by_the_choice_length_without_the_delimiter(tmp_path, capsys, delimiter, chat_template):
    # lm-eval drops the delimiter under a chat template (no gen_prefix): the continuations are the bare choices
    (samples,) = _lm_eval_folder(
        tmp_path / "lm", {"hs": [1, 1, 0, 2]}, delimiter=delimiter, chat_template=chat_template
    )
    assert main([str(samples), "--out", str(tmp_path / "out"), "--resamples", "0", "--figures", "none"]) == 0
    scored = _scored(tmp_path / "out", "hs")
    assert scored["lm_eval"] == {"acc": 0.25, "acc_norm": 0.5}
    assert scored["metrics"]["accuracy"] == 0.25 and scored["metrics"]["n"] == 4
    probs = torch.tensor(LLS, dtype=torch.float64).softmax(0)  # calibration: softmax over the raw log-likelihoods
    assert scored["metrics"]["nll"] == pytest.approx(float(-probs[[1, 1, 0, 2]].log().mean()), rel=1e-12)
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header.split() == ["n", "acc", "acc_norm", "conf-ECE", "cw-ECE", "Brier", "NLL"]
    assert row.split()[:4] == ["hs", "4", "0.2500", "0.5000"]


def test_a_given_delimiter_that_the_continuations_lack_is_one_error_line(tmp_path, capsys):
    (samples,) = _lm_eval_folder(tmp_path / "lm", {"hs": [1, 0]})
    assert main([str(samples), "--out", str(tmp_path / "out"), "--target-delimiter", "\n"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {samples}: row 1: 'arguments' must hold one (context, target_delimiter + choice)")
    assert not (tmp_path / "out").exists()


def test_groups_are_pooled_under_their_subtasks_as_lm_eval_lists_them(tmp_path, capsys):
    groups = {"grp": ["sub", "t3"], "sub": ["t1", "t2"], "other": ["t1", "t_absent"]}
    tasks = {"t1": [0, 1, 2], "t2": [1, 1, 1, 2], "t3_with_a_name_as_long_as_mmlu_high_school_politics": [0, 0, 2]}
    groups["grp"][1] = "t3_with_a_name_as_long_as_mmlu_high_school_politics"
    files = _lm_eval_folder(tmp_path / "lm", tasks, groups)
    out = tmp_path / "out"
    assert main([*map(str, files), "--out", str(out), "--resamples", "0", "--figures", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.rsplit(None, 7)[0] for line in lines[2:7]]  # the name, then n and six values
    assert names == ["grp", " - sub", "  - t1", "  - t2", " - t3_with_a_name_as_long_as_mmlu_high_school_politics"]
    assert max(len(line) for line in lines[:7]) <= 120  # the table
    grp = _scored(out, "grp")
    # 10 questions; acc right on the 3 gold "a", acc_norm on the 4 gold "bbbb": 0.3 and 0.4, in float64
    assert grp["metrics"]["n"] == 10 and grp["lm_eval"] == {"acc": 0.3, "acc_norm": 0.4}
    assert '"acc": 0.3,' in (out / "grp.json").read_text()  # not float32's 0.30000001192092896
    assert grp["members"] == ["sub", "t3_with_a_name_as_long_as_mmlu_high_school_politics"] and len(grp["files"]) == 3
    assert _scored(out, "sub")["metrics"]["n"] == 7 and _scored(out, "sub")["lm_eval"]["acc_norm"] == 4 / 7
    assert not (out / "other.json").exists()  # one of its subtasks is not given: no pooled row


def test_group_option_pools_our_prediction_files_and_draws_each(tmp_path, capsys):
    rows = {
        "a": [("A", {"A": 0.7, "B": 0.3}), ("B", {"A": 0.6, "B": 0.4})],
        "b": [("C", {"A": 0.2, "B": 0.3, "C": 0.5})],
    }
    files = []
    for name, questions in rows.items():
        files.append(tmp_path / f"{name}.jsonl")
        lines = [json.dumps({"id": f"q{i}", "gold": g, "probabilities": p}) for i, (g, p) in enumerate(questions)]
        files[-1].write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main([*map(str, files), "--group", "both", "--out", str(out), "--resamples", "0", "--figures", "svg"]) == 0
    both = _scored(out, "both")
    assert both["metrics"]["n"] == 3 and both["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert "lm_eval" not in both and both["members"] == ["a", "b"]
    assert sorted(p.name for p in out.glob("*.svg")) == ["a.svg", "b.svg", "both.svg"]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in printed[2:5]] == [["both", "3", "0.6667"], ["-", "a", "2"], ["-", "b", "1"]]


def test_before_cannot_pair_a_pooled_group(tmp_path, capsys):
    files = _lm_eval_folder(tmp_path / "lm", {"t1": [0], "t2": [1]}, {"g": ["t1", "t2"]})
    assert main([*map(str, files), "--before", str(files[0]), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --before pairs one file with each FILE: it cannot be combined with pooled groups"
    )


HELLASWAG_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: brier_score
"""
GROUP = """group: hs_group
task: [hs_a, hs_b]
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
  - metric: acc_norm
    weight_by_size: true
"""


@pytest.mark.slow  # lm-eval on the tiny model: about 40 s (most of it lm-eval's start-up)
def test_against_lm_eval_on_a_hellaswag_shaped_group(tiny_source, tmp_path):
    """Endings of different lengths: the tiny model's acc takes the shortest, acc_norm a long one, so the two
    differ; ours equal lm-eval's own, per task and for the group (one pooled row, n the sum)."""
    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    endings = ["runs", "eats a very large sandwich at noon", "sleeps", "walks the dog slowly around the park"]
    for name, n in (("hs_a", 9), ("hs_b", 6)):
        rows = []
        for i in range(n):
            order = endings[i % 4 :] + endings[: i % 4]
            gold = order.index(endings[0] if i % 3 else endings[1])
            rows.append({"ctx": f"A man {i} of {name} is in the kitchen. He", "endings": order, "label": gold})
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tasks / f"{name}.yaml").write_text(HELLASWAG_TASK.format(name=name, data=tasks / f"{name}.jsonl"))
    (tasks / "hs_group.yaml").write_text(GROUP)
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    lm_eval = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_source}"]
    lm_eval += ["--tasks", "hs_group", "--include_path", str(tasks), "--output_path", str(tmp_path / "lm")]
    lm_eval += ["--log_samples", "--device", "cpu", "--batch_size", "8"]
    done = subprocess.run(lm_eval, capture_output=True, text=True, env=offline, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = tmp_path.glob("lm/*/results_*.json")
    theirs = json.loads(results.read_text())["results"]
    samples = sorted(tmp_path.glob("lm/*/samples_*.jsonl"))
    out = tmp_path / "scored"
    assert main([*map(str, samples), "--out", str(out), "--resamples", "0", "--figures", "none"]) == 0
    for name in ("hs_a", "hs_b", "hs_group"):
        ours = _scored(out, name)
        assert ours["lm_eval"]["acc"] == pytest.approx(theirs[name]["acc,none"], abs=1e-12)
        assert ours["lm_eval"]["acc_norm"] == pytest.approx(theirs[name]["acc_norm,none"], abs=1e-12)
        assert ours["metrics"]["accuracy"] == ours["lm_eval"]["acc"]
    assert _scored(out, "hs_a")["lm_eval"]["acc"] != _scored(out, "hs_a")["lm_eval"]["acc_norm"]
    assert _scored(out, "hs_a")["metrics"]["brier"] == pytest.approx(theirs["hs_a"]["brier_score,none"], rel=1e-9)
    assert _scored(out, "hs_group")["metrics"]["n"] == 15 == theirs["hs_group"]["sample_len"]
