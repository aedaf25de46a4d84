"""Bootstrap intervals: the resampled metrics equal the metrics of the resampled questions, hand-computed
intervals, coverage on a population whose calibration is known, and what a run writes and prints."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from calibration_lightning.calibration.bootstrap import (
    INTERVALS,
    PERCENTILE,
    RESAMPLED,
    _features,
    _scores,
    bootstrap_intervals,
    resampled_metrics,
)
from calibration_lightning.calibration.debiased import DebiasedECE, debiased_square, slots
from calibration_lightning.calibration.metrics import metric
from calibration_lightning.data.records import MCRecord
from calibration_lightning.evaluate_predictions import evaluate_pair
from calibration_lightning.outputs.run_outputs import write_summary


def _with_ties(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g) * 2, dim=1)
    probs[: n // 3] = torch.tensor([0.7] + [0.3 / (k - 1)] * (k - 1))  # a third of the rows share one confidence
    probs[n // 3 : n // 3 + 3] = torch.eye(k)[0]  # confidence exactly 1
    return probs, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("n,k", [(300, 4), (7, 3), (1, 2)])
def test_resampled_metrics_equal_the_metrics_of_the_resampled_questions(n, k):
    probs, labels = _with_ties(n, k, n)
    drawn = torch.randint(n, (6, n), generator=torch.Generator().manual_seed(1))
    counts = torch.zeros(6, n).scatter_add_(1, drawn, torch.ones(6, n))
    values = _scores(probs, labels, counts @ _features(probs, labels, 10), counts, 10)
    assert set(values) == set(PERCENTILE)
    for r in range(6):
        for name in PERCENTILE:
            expected = metric(name, probs[drawn[r]], labels[drawn[r]], 10).item()
            assert values[name][r].item() == pytest.approx(expected, abs=1e-5), (name, r)


def _pairwise_square(index, residual, total_bins, n, classes):
    """The debiased squared ECE by its definition: per bin, the mean of r_i r_j over ordered pairs i != j."""
    total = 0.0
    for b in range(total_bins):
        r = residual[index == b].double()
        if len(r) >= 2:
            pairs = (r[:, None] * r[None, :]).sum() - (r * r).sum()
            total += len(r) / n * float(pairs) / (len(r) * (len(r) - 1))
    return total / classes


@pytest.mark.parametrize("kind", ["conf", "cw"])
def test_debiased_resamples_are_the_estimator_on_the_resampled_shrunk_world(kind):
    """conf_ece / cw_ece resamples hold T* = the debiased squared ECE of the resampled questions of the shrunk
    world (each bin's residuals shifted so its squared gap is max(U_b, 0)), computed here from pairs."""
    probs, labels = _with_ties(120, 3, 4)
    n = len(labels)
    index, residual, total_bins, classes = slots(probs, labels, 10, kind)
    d = DebiasedECE(probs, labels, 10, kind)
    assert d.square == pytest.approx(_pairwise_square(index, residual, total_bins, n, classes), abs=1e-9)
    # The shrunk world: the same within-bin spread, each bin's squared mean gap max(U_b, 0).
    shifted = (d.features[:, total_bins : 2 * total_bins]).sum(1) if kind == "conf" else None
    if kind == "conf":
        for b in range(total_bins):
            r, s = residual[index == b].double(), shifted[index[:, 0] == b].double()
            if len(r) >= 2:
                u = (r.sum() ** 2 - (r * r).sum()) / (len(r) * (len(r) - 1))
                assert float(s.mean() ** 2) == pytest.approx(max(float(u), 0.0), abs=1e-6)
                assert float(s.var()) == pytest.approx(float(r.var()), abs=1e-6)
    drawn = torch.randint(n, (5, n), generator=torch.Generator().manual_seed(2))
    counts = torch.zeros(5, n).scatter_add_(1, drawn, torch.ones(5, n))
    resampled = d.resampled(counts @ d.features)
    world_residual = torch.zeros_like(residual)
    for m in range(index.shape[1]):  # recover each slot's shifted residual from the features
        world_residual[:, m] = d.features[torch.arange(n), total_bins + index[:, m]] if index.shape[1] == 1 else 0
    if kind == "conf":
        for r in range(5):
            expected = _pairwise_square(index[drawn[r]], world_residual[drawn[r]], total_bins, n, classes)
            assert resampled[r].item() == pytest.approx(expected, abs=1e-6)
    else:  # classwise: compare with the sums of the resampled questions directly
        for r in range(5):
            sums = d.features[drawn[r]].sum(0)
            assert resampled[r].item() == pytest.approx(float(debiased_square(sums, n, classes)), abs=1e-6)


def test_the_same_seed_draws_the_same_questions_whatever_else_is_scored():
    probs, labels = _with_ties(200, 4, 3)
    other = torch.softmax(torch.randn(200, 4, generator=torch.Generator().manual_seed(9)), dim=1)
    ((alone, _),) = resampled_metrics([(probs, labels)], 10, 300, seed=4)
    _, (paired, _) = resampled_metrics([(other, labels), (probs, labels)], 10, 300, seed=4)
    for name in RESAMPLED:
        assert torch.allclose(alone[name], paired[name], atol=1e-6), name


def test_intervals_by_hand():
    # One question: every resample is that question, so each percentile interval is the point value; a bin
    # needs two questions to estimate a squared gap, so the debiased ECE and its interval are 0.
    one = bootstrap_intervals(torch.tensor([[0.8, 0.2]]), torch.tensor([0]), 10, n_resamples=50)
    assert one["accuracy"] == [1.0, 1.0] and one["brier"] == pytest.approx([0.08, 0.08])
    assert one["conf_ece"] == [0.0, 0.0]
    # One right and one wrong question: resamples {right, right} (1/4), mixed (1/2), {wrong, wrong} (1/4), so
    # accuracy takes 1, 0.5 and 0, and the 2.5% / 97.5% quantiles are 0 and 1.
    two = bootstrap_intervals(torch.tensor([[0.8, 0.2], [0.6, 0.4]]), torch.tensor([0, 1]), 10, n_resamples=2000)
    assert two["accuracy"] == [0.0, 1.0]
    # MCE of the resamples: 0.2 (right twice), 0.6 (wrong twice), max(0.2, 0.6) (one each, two bins).
    assert two["mce"] == pytest.approx([0.2, 0.6])


def test_seeded_and_paired():
    probs, labels = _with_ties(200, 4, 3)
    assert bootstrap_intervals(probs, labels, 10, 300, seed=5) == bootstrap_intervals(probs, labels, 10, 300, seed=5)
    assert bootstrap_intervals(probs, labels, 10, 300, seed=5) != bootstrap_intervals(probs, labels, 10, 300, seed=6)
    # The same model before and after: every resample's difference is exactly 0 (paired), not the spread of two
    # independent draws.
    same = evaluate_pair(probs, probs, labels, n_bins=10, resamples=300)["improvement"]
    assert all(same[m] == {"difference": 0.0, "ci95": [0.0, 0.0], "excludes_zero": False} for m in RESAMPLED)
    assert same["smooth_ece"]["ci95"] is None  # smECE: point value only
    # After: one more question right (its gold option raised to 0.9), so the accuracy difference of a resample is
    # (times that question is drawn) / N, the count ~ Binomial(200, 1/200): P(0) = 0.37, P(<= 3) = 0.98, so the
    # percentile interval is [0, 3 / 200] (4,000 resamples: P(> 3) = 1.9% is then 2.5% only 0.3% of the time).
    wrong = int((probs.argmax(1) != labels).nonzero()[0])
    after = probs.clone()
    after[wrong] = 0.1 / 3
    after[wrong, labels[wrong]] = 0.9
    d = evaluate_pair(probs, after, labels, n_bins=10, resamples=4000)["improvement"]["accuracy"]
    assert d["difference"] == pytest.approx(1 / 200)
    assert d["ci95"] == pytest.approx([0.0, 3 / 200], abs=1e-6)
    assert d["excludes_zero"] is False


def _population(n, generator, slope):
    """Top-label confidence c ~ U(0.65, 1) of two options, right with probability c - 0.15 (every bin is
    overconfident by 0.15). The model "after" says c - s(c) on the same questions, s(c) = slope (c - 0.65) / 0.35
    rising from 0 to ``slope`` (the argmax never changes)."""
    c = 0.65 + 0.35 * torch.rand(n, generator=generator, dtype=torch.float64)
    right = torch.rand(n, generator=generator, dtype=torch.float64) < c - 0.15
    labels = torch.where(right, 0, 1)
    after = c - slope * (c - 0.65) / 0.35
    return torch.stack([c, 1 - c], dim=1), torch.stack([after, 1 - after], dim=1), labels


def test_coverage_on_a_population_with_known_calibration():
    """Nominal 95% intervals cover the population's value in 90-99% of 200 samples of 1,000 questions.

    Before, every bin's gap is 0.15, so the population's conf-ECE, cw-ECE (two classes: class 1 is
    under-confident by 0.15 in every bin; l1 and l2 agree when every gap is the same) and adaptive ECE are
    0.15, and accuracy is E[c] - 0.15 = 0.675. After (slope 0.1), the confidence c' = c - s(c) is uniform on
    [0.65, 0.9] with s = 0.4 (c' - 0.65) and gap 0.15 - s: the bins [0.6, 0.7), [0.7, 0.8), [0.8, 0.9] hold
    0.2, 0.4 and 0.4 of the questions with mean gaps 0.14, 0.11 and 0.07, so the population l2 binned conf-ECE
    after is sqrt(0.2 * 0.14^2 + 0.4 * 0.11^2 + 0.4 * 0.07^2) = 0.10354 (the l1 value is 0.10) and its change
    -0.04646, the quantity the conf-ECE change interval is for. The percentile intervals (adaptive ECE,
    accuracy) test the resampling: with 140-460 questions per bin no gap changes sign, so the plug-in is not
    biased there. MCE, a maximum over bins, is biased upward and not checked.
    """
    truth = {"conf_ece": 0.15, "cw_ece": 0.15, "adaptive_ece": 0.15, "accuracy": 0.675}
    g = torch.Generator().manual_seed(0)
    covered = dict.fromkeys([*truth, "difference"], 0)
    reps = 200
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 200 small problems: thread hand-offs would cost more than the work
    try:
        for rep in range(reps):
            before, after, labels = _population(1000, g, 0.1)
            result = evaluate_pair(before, after, labels, n_bins=10, resamples=400, seed=rep)
            for name, value in truth.items():
                lo, hi = result["before"]["ci95"][name]
                covered[name] += lo <= value <= hi
            lo, hi = result["improvement"]["conf_ece"]["ci95"]
            covered["difference"] += lo <= 0.10354 - 0.15 <= hi
    finally:
        torch.set_num_threads(threads)
    rates = {k: v / reps for k, v in covered.items()}
    change = rates.pop("difference")  # the union of two intervals (debiased.change_interval): may cover more
    assert all(0.90 <= r <= 0.99 for r in rates.values()) and change >= 0.90, (rates, change)


def _scored(probs, labels):
    return {
        "letter_logits": probs.log(),
        "labels": labels,
        "n_choices": torch.full_like(labels, probs.shape[1]),
        "index": torch.arange(len(labels)),
    }


def test_metrics_json_and_table_hold_intervals_and_the_paired_difference(tmp_path):
    from calibration_lightning import evaluation

    g = torch.Generator().manual_seed(0)
    before_p, after_p, labels = _population(240, g, 0.3)
    before = {"test": _scored(before_p.float(), labels), "ood": _scored(before_p[:40].float(), labels[:40])}
    after = {"test": _scored(after_p.float(), labels), "ood": _scored(after_p[:40].float(), labels[:40])}
    before, after = ({k: evaluation.with_metrics(s, 10) for k, s in p.items()} for p in (before, after))
    records = {
        "test": [MCRecord(str(i), "q", ("a", "b"), int(labels[i]), "optics" if i % 3 else "law") for i in range(240)],
        "ood": [MCRecord(str(i), "q", ("a", "b"), int(labels[i])) for i in range(40)],
    }
    cfg = OmegaConf.create({"seed": 0, "n_bins": 10, "bootstrap": {"resamples": 500, "level": 0.95, "seed": 0}})
    summary, table = write_summary(tmp_path, cfg, cfg, (before, after), records, {"method": "cft"})
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m == json.loads(json.dumps(summary))

    assert set(m["before"]["ci95"]) == set(RESAMPLED) and set(m["after"]["ci95"]) == set(RESAMPLED)
    lo, hi = m["after"]["ci95"]["conf_ece"]
    assert lo <= m["after"]["conf_ece_debiased"] <= hi  # the interval is for the l2 value the debiased one estimates
    debiased = m["improvement"]["conf_ece_debiased"]
    assert debiased["difference"] == pytest.approx(m["after"]["conf_ece_debiased"] - m["before"]["conf_ece_debiased"])
    assert debiased["ci95"] == m["improvement"]["conf_ece"]["ci95"]
    conf = m["improvement"]["conf_ece"]
    assert conf["difference"] == pytest.approx(m["after"]["conf_ece"] - m["before"]["conf_ece"])
    assert conf["ci95"][1] < 0 and conf["excludes_zero"] is True  # 0.15 -> ~0.05 on 240 questions
    assert m["improvement"]["accuracy"] == {"difference": 0.0, "ci95": [0.0, 0.0], "excludes_zero": False}
    assert set(m["eval_sets"]["ood"]) == {"before", "after", "improvement"}  # no subjects in that set
    assert m["eval_sets"]["ood"]["before"]["n"] == 40 and "ci95" in m["eval_sets"]["ood"]["after"]
    assert m["bootstrap"] == {"resamples": 500, "level": 0.95, "seed": 0, "interval": INTERVALS}
    law = [i for i in range(240) if i % 3 == 0]
    assert m["subjects"]["law"]["before"]["n"] == 80 and list(m["subjects"]) == ["law", "optics"]
    assert m["subjects"]["law"]["after"]["accuracy"] == pytest.approx(float((labels[law] == 0).double().mean()))
    assert m["subjects"]["law"]["before"]["conf_ece"] == pytest.approx(
        metric("conf_ece", before_p[law], labels[law]).item(), abs=1e-6
    )

    row = next(line for line in table.splitlines() if line.startswith("conf-ECE"))
    b, a, d = m["before"], m["after"], conf
    assert f"{b['conf_ece']:.4f} [{b['ci95']['conf_ece'][0]:.3f}, {b['ci95']['conf_ece'][1]:.3f}]" in row
    assert f"{a['conf_ece']:.4f} [{a['ci95']['conf_ece'][0]:.3f}, {a['ci95']['conf_ece'][1]:.3f}]" in row
    assert f"{d['difference']:+.4f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" in row and row.endswith("yes")
    assert next(line for line in table.splitlines() if line.startswith("accuracy")).endswith("no")
    assert table.splitlines()[0].startswith("test (n=240)") and "ood (n=40)" in table
    assert max(len(line) for line in table.splitlines()) <= 120


def test_no_intervals_with_zero_resamples(tmp_path):
    from calibration_lightning import evaluation

    before_p, after_p, labels = _population(50, torch.Generator().manual_seed(0), 0.3)
    scored = tuple({"test": evaluation.with_metrics(_scored(p.float(), labels), 10)} for p in (before_p, after_p))
    cfg = OmegaConf.create({"seed": 0, "n_bins": 10, "bootstrap": {"resamples": 0, "level": 0.95, "seed": 0}})
    records = {"test": [MCRecord(str(i), "q", ("a", "b"), int(labels[i])) for i in range(50)]}
    _, table = write_summary(tmp_path, cfg, cfg, scored, records, {"method": "ts"})
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert "ci95" not in m["before"] and m["improvement"]["nll"]["ci95"] is None
    assert m["improvement"]["nll"]["difference"] == pytest.approx(m["after"]["nll"] - m["before"]["nll"])
    assert "[" not in table and not math.isnan(m["improvement"]["brier"]["difference"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("bootstrap.resamples=-1", "bootstrap.resamples=-1: must be an integer >= 0 (0 turns intervals off)"),
        ("bootstrap.level=1.5", "bootstrap.level=1.5: must be in (0, 1), e.g. 0.95"),
    ],
)
def test_bootstrap_settings_are_checked_at_start_up(make_cfg, override, message):
    from calibration_lightning.errors import ConfigError
    from calibration_lightning.schema import validate

    with pytest.raises(ConfigError) as raised:
        validate(make_cfg("model=tiny", override))
    assert str(raised.value) == message
    assert make_cfg("model=tiny").bootstrap == {"resamples": 1000, "level": 0.95, "seed": 0}
