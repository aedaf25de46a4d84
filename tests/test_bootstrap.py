"""The bootstrap: resampled sums equal sums over the drawn questions, the worlds' T* equals the estimator on the
shifted resample, the intervals are the test inversion they claim, null intervals carry their reason, and what
a run writes and prints."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from calibration_lightning.calibration import intervals
from calibration_lightning.calibration.bootstrap import MIN_RESAMPLES, quantile_interval, resampled_sums
from calibration_lightning.calibration.debiased import (
    ResampledECE,
    _root,
    change_interval,
    deviation_features,
    ece_interval,
    paired_worlds,
    slots,
)
from calibration_lightning.data.records import MCRecord
from calibration_lightning.outputs.run_outputs import write_summary
from calibration_lightning.predictions import compare_candidates, evaluate_pair, evaluate_predictions


def _random(n, k, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * scale, dim=1)
    return probs, torch.randint(0, k, (n,), generator=g)


def test_quantile_interval_by_hand():
    # 101 values 0..100: the 2.5% quantile sits at position 2.5 (linear interpolation), the 97.5% at 97.5.
    assert quantile_interval(torch.arange(101.0), 0.95) == pytest.approx([2.5, 97.5])
    assert quantile_interval(torch.tensor([3.0, 1.0]), 0.5) == pytest.approx([1.5, 2.5])  # positions 0.25, 0.75


def test_resampled_sums_are_sums_over_the_drawn_questions_the_same_for_every_set():
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(30, 4, generator=g), torch.randn(30, 2, generator=g)
    got = resampled_sums([first, second], 7, seed=3)
    drawn = torch.randint(30, (7, 30), generator=torch.Generator().manual_seed(3))
    for f, sums in zip((first, second), got):
        assert torch.allclose(sums, torch.stack([f[d].sum(0) for d in drawn]), atol=1e-5)


def _pairwise(index, residual, n, classes):
    """The debiased squared ECE by its definition: per bin, the mean of r_i r_j over ordered pairs i != j."""
    total = 0.0
    for b in index.unique():
        r = residual[index == b]
        if len(r) >= 2:
            total += len(r) / n * float((r.sum() ** 2 - (r * r).sum()) / (len(r) * (len(r) - 1)))
    return total / classes


@pytest.mark.parametrize("kind", ["conf", "cw"])
def test_a_worlds_resample_is_the_estimator_on_the_shifted_resampled_questions(kind):
    """T*(theta) of resample r = the debiased squared ECE of r's questions in world(theta): each bin's residuals
    r - m_b scaled by sqrt(n_b / (n_b - 1)) plus theta u_b, u the observed gaps at unit l2 norm."""
    probs, labels = _random(50, 3, 1)
    n = len(labels)
    index, residual, _, total_bins, classes = slots(probs, labels, 10, kind)
    sums, features = deviation_features(index, residual, total_bins)
    drawn = torch.randint(n, (4, n), generator=torch.Generator().manual_seed(2))
    counts = torch.zeros(4, n).scatter_add_(1, drawn, torch.ones(4, n))
    ece = ResampledECE(sums, counts @ features, n, classes)
    count, mean = sums[:total_bins], sums[total_bins : 2 * total_bins] / sums[:total_bins].clamp_min(1)
    assert ece.square == pytest.approx(_pairwise(index, residual, n, classes), abs=1e-12)
    u = mean / float((count / (n * classes) * mean * mean).sum()).__pow__(0.5)
    scale = (count / (count - 1).clamp_min(1)).sqrt()
    for theta in (0.0, 0.1, 0.4):
        world = scale[index] * (residual - mean[index]) + theta * u[index]
        for r in range(4):
            expected = _pairwise(index[drawn[r]], world[drawn[r]], n, classes)
            assert ece.world(theta)[r].item() == pytest.approx(expected, abs=1e-6)


def test_the_interval_is_every_theta_whose_world_holds_the_estimate():
    probs, labels = _random(200, 4, 3)
    ((r,),) = [intervals.resample([(probs, labels)], 10, 1000, seed=0)]
    ece = r.eces["conf_ece_debiased"]
    lo, hi = ece_interval(ece, 0.95)
    observed = max(ece.square, 0.0)

    def accepted(theta):
        q = quantile_interval(ece.world(theta), 0.95)
        return q[0] <= observed <= q[1]

    assert 0 < lo < ece.estimate < hi
    assert accepted(lo + 1e-4) and accepted(hi - 1e-4) and accepted(ece.estimate)
    assert not accepted(lo - 1e-4) and not accepted(hi + 1e-4)


def test_the_change_interval_is_the_paired_test_inverted():
    probs, labels = _random(240, 4, 4, scale=3.0)
    before, after = intervals.resample([(probs, labels), ((probs.log() / 2).softmax(1), labels)], 10, 1000, seed=1)
    b, a = before.eces["conf_ece_debiased"], after.eces["conf_ece_debiased"]
    lo, hi = change_interval(b, a, 0.95)
    d = a.estimate - b.estimate
    draws = paired_worlds(b, a)

    def accepted(delta):
        q = quantile_interval(draws(delta), 0.95)
        return q[0] <= d <= q[1]

    assert accepted(lo + 1e-4) and accepted(hi - 1e-4) and accepted(d)
    assert not accepted(lo - 1e-4) and not accepted(hi + 1e-4)
    assert hi < 0 and not accepted(0.0)  # a real change: the test of no change rejects and the interval excludes 0
    # delta = 0 sets both phases at the smaller estimate
    low = min(a.estimate, b.estimate)
    assert torch.equal(draws(0.0), _root(a.world(low)) - _root(b.world(low)))


def test_intervals_that_cannot_be_estimated_are_null_with_their_reason():
    one = evaluate_predictions(torch.tensor([[0.7, 0.3]]), torch.tensor([1]))
    assert all(v is None for v in one["ci95"].values())
    assert one["ci95_null"]["accuracy"] == "1 question(s): a bootstrap interval needs at least 10"
    two = evaluate_predictions(torch.tensor([[0.7, 0.3], [0.45, 0.55]]), torch.tensor([1, 0]))
    assert two["ci95"]["conf_ece_debiased"] is None and "2 question(s)" in two["ci95_null"]["conf_ece_debiased"]
    sure = evaluate_predictions(torch.tensor([[0.99, 0.01]] * 30), torch.zeros(30, dtype=torch.long))
    assert sure["conf_ece_debiased"] == pytest.approx(0.01)  # every bin gap 0.01, no spread: no interval
    assert sure["ci95"] == dict.fromkeys(sure["ci95"]) and set(sure["ci95_null"]) == set(sure["ci95"])
    assert sure["ci95_null"]["conf_ece_debiased"] == intervals.NO_SPREAD
    assert sure["ci95_null"]["accuracy"] == "all 30 questions have the same accuracy term: no spread to resample"
    conf = torch.linspace(0.95, 1.0, 30, dtype=torch.float64)  # every answer right, confidences that differ
    right = evaluate_predictions(torch.stack([conf, 1 - conf], 1), torch.zeros(30, dtype=torch.long))
    assert right["ci95"]["conf_ece_debiased"] is None and right["ci95_null"]["cw_ece_debiased"] == intervals.NO_SPREAD
    assert right["ci95"]["brier"] is not None  # the Brier terms differ: a mean with spread
    probs, labels = _random(40, 3, 5)
    high = evaluate_predictions(probs, labels, level=0.999)  # 1,000 x 0.0005 = 0.5 resamples beyond each end
    assert high["ci99.9"]["nll"] is None and "fewer than 5 beyond each end" in high["ci99.9_null"]["nll"]
    same = evaluate_pair(probs, probs, labels)["improvement"]
    assert same["conf_ece_debiased"]["ci95"] is None and same["conf_ece_debiased"]["excludes_zero"] is None
    assert same["conf_ece_debiased"]["ci95_null"] == "before and after are the same predictions"
    assert (
        same["accuracy"]["ci95_null"]
        == "every question's accuracy term changes by the same amount: no spread to resample"
    )
    assert same["conf_ece"]["ci95_null"] == intervals.NO_INTERVAL["conf_ece"]  # the plug-in: never an interval


@pytest.mark.parametrize("resamples", [1, MIN_RESAMPLES - 1, -5])
def test_too_few_resamples_are_refused_in_one_line(resamples):
    probs, labels = _random(20, 3, 6)
    message = rf"resamples={resamples}: must be 0 \(no intervals\) or >= {MIN_RESAMPLES}"
    with pytest.raises(ValueError, match=message):
        evaluate_predictions(probs, labels, resamples=resamples)
    assert "ci95" not in evaluate_predictions(probs, labels, resamples=0)


def test_the_bootstrap_runs_single_threaded_and_restores_the_thread_count(monkeypatch):
    seen = []
    real = intervals.resampled_sums

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(intervals, "resampled_sums", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate_pair(*_random(50, 3, 7)[:1], _random(50, 3, 8)[0], _random(50, 3, 7)[1])
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_seeded_and_paired():
    probs, labels = _random(200, 4, 3)
    assert evaluate_predictions(probs, labels, seed=5) == evaluate_predictions(probs, labels, seed=5)
    assert evaluate_predictions(probs, labels, seed=5)["ci95"] != evaluate_predictions(probs, labels, seed=6)["ci95"]
    # After: one more question right (its gold option raised to 0.9), so the accuracy difference of a resample is
    # (times that question is drawn) / N, the count ~ Binomial(200, 1/200): P(0) = 0.37, P(<= 3) = 0.98, so the
    # percentile interval is [0, 3 / 200] (4,000 resamples: P(> 3) = 1.9% is then 2.5% only 0.3% of the time).
    wrong = int((probs.argmax(1) != labels).nonzero()[0])
    after = probs.clone()
    after[wrong] = 0.1 / 3
    after[wrong, labels[wrong]] = 0.9
    d = evaluate_pair(probs, after, labels, resamples=4000)["improvement"]["accuracy"]
    assert d["difference"] == pytest.approx(1 / 200)
    assert d["ci95"] == pytest.approx([0.0, 3 / 200], abs=1e-6)
    assert d["excludes_zero"] is False


def test_compare_candidates_is_the_ece_change_test_of_metrics_json():
    probs, labels = _random(120, 4, 9, scale=3.0)
    flat = (probs.log() / 3).softmax(1)
    near = (probs.log() / 2.9).softmax(1)
    got = compare_candidates({"sharp": probs, "flat": flat, "near": near, "copy": flat}, labels, "flat", seed=2)
    pair = evaluate_pair(flat, probs, labels, seed=2)
    change = pair["improvement"]["conf_ece_debiased"]
    assert got["sharp"]["above_lowest"] == pytest.approx(change["difference"])
    assert got["sharp"]["ci95"] == pytest.approx(change["ci95"]) and got["sharp"]["tied"] is not change["excludes_zero"]
    assert got["sharp"]["tied"] is False and got["near"]["tied"] is True  # 0.2 nats of temperature: within the noise
    assert got["flat"] == {"above_lowest": 0.0, "ci95": None, "tied": True}
    assert got["copy"]["tied"] is True and got["copy"]["ci95_null"] == "before and after are the same predictions"
    with pytest.raises(ValueError, match=r"lowest='cft' is not one of the candidates \['sharp', 'flat'\]"):
        compare_candidates({"sharp": probs, "flat": flat}, labels, "cft")
    off = compare_candidates({"sharp": probs, "flat": flat}, labels, "flat", resamples=0)
    assert off["sharp"]["tied"] is False and off["sharp"]["ci95"] is None


def _population(n, generator, slope):
    """Top-label confidence c ~ U(0.65, 1) of two options, right with probability c - 0.15 (every bin is
    overconfident by 0.15). The model "after" says c - s(c) on the same questions, s(c) = slope (c - 0.65) / 0.35
    rising from 0 to ``slope`` (the argmax never changes)."""
    c = 0.65 + 0.35 * torch.rand(n, generator=generator, dtype=torch.float64)
    right = torch.rand(n, generator=generator, dtype=torch.float64) < c - 0.15
    labels = torch.where(right, 0, 1)
    after = c - slope * (c - 0.65) / 0.35
    return torch.stack([c, 1 - c], dim=1), torch.stack([after, 1 - after], dim=1), labels


def _scored(probs, labels):
    return {
        "letter_logits": probs.log(),
        "labels": labels,
        "n_choices": torch.full_like(labels, probs.shape[1]),
        "index": torch.arange(len(labels)),
    }


def test_metrics_json_and_table_hold_intervals_beside_their_own_values(tmp_path):
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
    expected = {"accuracy", "brier", "nll", "conf_ece_debiased", "cw_ece_debiased"}
    assert set(m["before"]["ci95"]) == expected and set(m["after"]["ci95"]) == expected  # no bracket for plug-ins
    for phase in ("before", "after"):
        for name, (lo, hi) in m[phase]["ci95"].items():
            assert lo <= m[phase][name] <= hi, (phase, name)
    debiased = m["improvement"]["conf_ece_debiased"]
    assert debiased["difference"] == pytest.approx(m["after"]["conf_ece_debiased"] - m["before"]["conf_ece_debiased"])
    assert debiased["ci95"][0] <= debiased["difference"] <= debiased["ci95"][1] < 0 and debiased["excludes_zero"]
    plug_in = m["improvement"]["conf_ece"]
    assert plug_in["difference"] == pytest.approx(m["after"]["conf_ece"] - m["before"]["conf_ece"])
    assert plug_in["ci95"] is None and plug_in["excludes_zero"] is None and "plug-in" in plug_in["ci95_null"]
    assert m["improvement"]["accuracy"]["ci95"] is None  # the argmax never changes: no spread to resample
    assert m["eval_sets"]["ood"]["before"]["n"] == 40 and "ci95" in m["eval_sets"]["ood"]["after"]

    row = next(line for line in table.splitlines() if line.startswith("conf-ECE debiased l2"))
    b, a, d = m["before"], m["after"], debiased
    assert f"{b['conf_ece_debiased']:.4f} [{b['ci95']['conf_ece_debiased'][0]:.3f}, " in row
    assert f"{a['conf_ece_debiased']:.4f} [{a['ci95']['conf_ece_debiased'][0]:.3f}, " in row
    assert f"{d['difference']:+.4f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" in row and row.endswith("yes")
    plug_row = next(line for line in table.splitlines() if line.startswith("conf-ECE plug-in (paper)"))
    assert "[" not in plug_row and f"{b['conf_ece']:.4f}" in plug_row and plug_row.endswith("-")
    assert next(line for line in table.splitlines() if line.startswith("accuracy")).endswith("-")
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
    assert m["improvement"]["nll"]["ci95_null"] == "intervals off (resamples = 0)"
    assert m["improvement"]["nll"]["difference"] == pytest.approx(m["after"]["nll"] - m["before"]["nll"])
    assert "[" not in table and not math.isnan(m["improvement"]["brier"]["difference"])


@pytest.mark.parametrize(
    "override,message",
    [
        *[
            (
                f"bootstrap.resamples={r}",
                f"bootstrap.resamples={r}: must be 0 (no intervals) or at least 200 (fewer "
                "leave an interval's ends to few draws)",
            )
            for r in (-1, 1, 199)
        ],  # fmt: skip
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
