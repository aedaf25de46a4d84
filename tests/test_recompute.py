"""Every number in metrics.json equals a recomputation from the run's own prediction files.

The reference below is independent of the package: plain Python over the JSONL rows.
"""

import json
import random

import pytest

from calibration_lightning.recipe import run

pytestmark = pytest.mark.slow


def _ece_reference(rows, n_bins=10):
    """conf-ECE and cw-ECE from prediction rows; a set's classes are its widest row's options."""

    def ece(pairs):  # (probability, outcome) pairs, equal-width bins, last bin holds 1.0
        bins = {}
        for p, y in pairs:
            bins.setdefault(min(int(p * n_bins), n_bins - 1), []).append((p, y))
        return sum(abs(sum(p for p, _ in b) - sum(y for _, y in b)) for b in bins.values()) / len(pairs)

    conf = ece([(r["confidence"], float(r["correct"])) for r in rows])
    letters = sorted({k for r in rows for k in r["probabilities"]})
    cw = sum(ece([(r["probabilities"].get(j, 0.0), float(r["gold"] == j)) for r in rows]) for j in letters)
    return conf, cw / len(letters), sum(r["correct"] for r in rows) / len(rows)


def _debiased_reference(rows, n_bins=10):
    """conf_ece_debiased: sqrt of the mean over bins (weight n_b / N) of the mean of r_i r_j over ordered pairs
    i != j of the bin's residuals r = correct - confidence."""
    bins = {}
    for r in rows:
        bins.setdefault(min(int(r["confidence"] * n_bins), n_bins - 1), []).append(r["correct"] - r["confidence"])
    square = 0.0
    for residuals in bins.values():
        m = len(residuals)
        if m >= 2:
            pairs = sum(a * b for i, a in enumerate(residuals) for j, b in enumerate(residuals) if i != j)
            square += m / len(rows) * pairs / (m * (m - 1))
    return max(square, 0.0) ** 0.5


def _write_set(path, n_rows, n_options, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_rows):
            choices = [f"option {rng.randint(0, 999)} {j}" for j in range(n_options)]
            row = {"id": f"{path.stem}-{i}", "question": f"Question {i}: which {rng.randint(0, 99)}?",
                   "choices": choices, "answer": rng.randrange(n_options)}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def test_metrics_json_equals_recomputation_with_sets_of_different_widths(make_cfg, tmp_path):
    _write_set(tmp_path / "in4.jsonl", 60, 4, 0)
    _write_set(tmp_path / "ood5.jsonl", 20, 5, 1)
    cfg = make_cfg(
        "model=tiny",
        "method=cft",
        "dataset=jsonl",
        f"dataset.path={tmp_path / 'in4.jsonl'}",
        "dataset.split.train=24",
        "dataset.split.val=12",
        "dataset.split.test=24",
        "dataset.batch_size=4",
        "+eval_sets.ood._target_=calibration_lightning.data.sources.read_records_file",
        f"+eval_sets.ood.path={tmp_path / 'ood5.jsonl'}",
    )
    run(cfg)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    checked = 0
    for phase in ("before", "after"):
        for name, stem, reported in (
            ("test", phase, metrics[phase]),
            ("ood", f"ood_{phase}", metrics["eval_sets"]["ood"][phase]),
        ):
            rows = [json.loads(line) for line in (out / f"predictions_{stem}.jsonl").read_text().splitlines()]
            assert len(rows) == reported["n"] == (24 if name == "test" else 20)
            assert {len(r["probabilities"]) for r in rows} == ({4} if name == "test" else {5})
            conf, cw, acc = _ece_reference(rows)
            assert abs(conf - reported["conf_ece"]) < 1e-6, (name, phase)
            assert abs(cw - reported["cw_ece"]) < 1e-6, (name, phase)
            assert abs(acc - reported["accuracy"]) < 1e-6, (name, phase)
            assert abs(_debiased_reference(rows) - reported["conf_ece_debiased"]) < 1e-5, (name, phase)
            checked += 1
    assert checked == 4
    # The logged (torchmetrics) test metrics agree with metrics.json: one computation, one width.
    (csv_file,) = (out / "logs").glob("**/metrics.csv")
    header, *lines = csv_file.read_text().splitlines()
    cols = header.split(",")
    for key, phase in (("test/cw_ece", "after"), ("test/conf_ece", "after"), ("test/ood/accuracy", "after")):
        logged = [float(row[cols.index(key)]) for row in (line.split(",") for line in lines) if row[cols.index(key)]]
        reported = metrics[phase] if key.count("/") == 1 else metrics["eval_sets"]["ood"][phase]
        assert len(logged) == 2 and abs(logged[-1] - reported[key.rsplit("/", 1)[1]]) < 1e-6, key  # before, after
