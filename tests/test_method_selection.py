"""method=auto's rule: lowest validation conf-ECE (debiased l2) among candidates whose validation accuracy is not
below the best's by more than the tolerance plus z standard errors of the paired difference (exact counts)."""

import math

import pytest
import torch

from calibration_lightning.auto import choose_method, paired_difference
from calibration_lightning.errors import ConfigError
from calibration_lightning.schema import BootstrapConf, validate
from tests.conftest import compose_config

NO_BOOTSTRAP = BootstrapConf(resamples=0, level=0.95, seed=0)


def _m(acc, ece, nll=1.0):
    return {"accuracy": acc, "conf_ece_debiased": ece, "nll": nll, "n": 100}


def _answers(n: int, right: set[int]) -> list[bool]:
    return [i in right for i in range(n)]


def _choose(val: dict, correct: dict, tolerance: float, z: float = 1.96, probs=None, labels=None, resamples=0):
    """``choose_method`` on candidates given as metrics and per-question correctness (two options, gold A: a
    question is right when option A's logit is the larger), or as probabilities and labels."""
    scored = {}
    for name, metrics in val.items():
        if probs is None:
            right = torch.tensor(correct[name])
            logits = torch.stack([right.double(), (~right).double()], dim=1)
            y = torch.zeros(len(right), dtype=torch.long)
        else:
            logits, y = probs[name].log(), labels
        scored[name] = {"letter_logits": logits, "labels": y, "n_choices": torch.full_like(y, logits.shape[1]),
                        "metrics": metrics}  # fmt: skip
    bootstrap = BootstrapConf(resamples=resamples, level=0.95, seed=0)
    return choose_method(scored, tolerance, z, 10, bootstrap)


def test_picks_rcft_when_rcft_is_better_on_validation():
    correct = {"cft": _answers(100, set(range(60))), "rcft": _answers(100, set(range(61)))}
    choice = _choose({"cft": _m(0.60, 0.12), "rcft": _m(0.61, 0.04)}, correct, 0.02)
    assert choice["chosen"] == "rcft" and choice["eligible"] == ["cft", "rcft"]


def test_picks_cft_when_cft_is_better_on_validation():
    correct = {"cft": _answers(100, set(range(60))), "rcft": _answers(100, set(range(60)))}
    assert _choose({"cft": _m(0.60, 0.03), "rcft": _m(0.60, 0.09)}, correct, 0.02)["chosen"] == "cft"


def test_tolerance_compares_exact_counts():
    # 31/100 against 29/100 with a tolerance of 0.02: as floats 0.31 - 0.29 > 0.02, in counts 2 <= 2
    assert 0.31 - 0.29 > 0.02
    correct = {"cft": _answers(100, set(range(31))), "rcft": _answers(100, set(range(29)))}
    choice = _choose({"cft": _m(0.31, 0.10), "rcft": _m(0.29, 0.02)}, correct, 0.02, z=0.0)
    assert choice["eligible"] == ["cft", "rcft"] and choice["chosen"] == "rcft"
    correct["rcft"] = _answers(100, set(range(28)))  # 3 behind: outside, with no noise allowance
    assert _choose({"cft": _m(0.31, 0.10), "rcft": _m(0.28, 0.02)}, correct, 0.02, z=0.0)["chosen"] == "cft"


def test_paired_standard_error_from_the_discordant_questions():
    # best right on 0..21 (22), other right on 5..23 (19): b = 5 (0..4), c = 2 (22, 23), n = 80
    best, other = _answers(80, set(range(22))), _answers(80, set(range(5, 24)))
    behind, se = paired_difference(best, other)
    assert behind == 3
    assert se == pytest.approx(math.sqrt(5 + 2 - 9 / 80))


def test_a_difference_inside_the_noise_does_not_exclude_the_better_calibrated_candidate():
    # 22/80 against 19/80 (0.275 vs 0.2375: 3 questions) is well inside the paired noise (SE about 2.6 questions)
    correct = {"cft": _answers(80, set(range(22))), "rcft": _answers(80, set(range(5, 24)))}
    val = {"cft": _m(0.275, 0.157), "rcft": _m(0.2375, 0.044)}
    choice = _choose(val, correct, 0.02)
    assert choice["eligible"] == ["cft", "rcft"] and choice["chosen"] == "rcft"
    assert choice["paired"]["rcft"]["behind_best"] == 3
    assert _choose(val, correct, 0.02, z=0.0)["chosen"] == "cft"  # the old, noise-blind rule


def test_a_lower_ece_bought_with_a_real_accuracy_loss_is_not_eligible():
    # 62/100 against 45/100, every disagreement one way: 17 behind, SE sqrt(17 - 17^2/100) = 3.7 questions
    correct = {"cft": _answers(100, set(range(62))), "rcft": _answers(100, set(range(45)))}
    val = {"cft": _m(0.62, 0.08), "rcft": _m(0.45, 0.01)}
    choice = _choose(val, correct, 0.02)
    assert choice["eligible"] == ["cft"] and choice["chosen"] == "cft"
    assert _choose(val, correct, 0.10)["chosen"] == "rcft"  # 17 - 10 = 7 <= 1.96 x 3.7


def test_no_candidate_is_an_error_and_a_negative_z_is_refused():
    with pytest.raises(ValueError):
        choose_method({}, 0.02, 1.96, 10, NO_BOOTSTRAP)
    with pytest.raises(ConfigError, match=r"method\.accuracy_z=-1.0: must be null or a number >= 0"):
        validate(compose_config("method=auto", "method.accuracy_z=-1"))


def _ece(p, y, n_bins=10):
    """Independent debiased l2 top-label ECE (Kumar et al. 2019's estimator on the residuals): bins [b/10, (b+1)/10),
    the last also holding 1.0; per bin of n >= 2, (S^2 - Q) / (n (n - 1)) weighted by n / N; the root of the sum."""
    conf, pred = p.max(dim=1)
    r = (pred == y).double() - conf
    b = torch.clamp((conf * n_bins).floor().long(), max=n_bins - 1)
    total = 0.0
    for k in range(n_bins):
        rk = r[b == k]
        if len(rk) >= 2:
            total += (float(rk.sum()) ** 2 - float((rk**2).sum())) / (len(rk) - 1) / len(y)
    return math.sqrt(max(total, 0.0))


def _population(seed, n=80, k=4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.6
    logits[torch.arange(n), labels] += 0.5  # some signal: about a third right, moderately confident
    return logits, labels


def test_a_conf_ece_gap_inside_the_noise_is_a_tie_that_the_lower_validation_nll_breaks():
    # Flat, method=auto (this session): rcft 0.008 against cft 0.040 on 80 questions, paired interval of the
    # difference [-0.098, 0.098]; the test split then gave cft -77% and rcft -56%
    logits, y = _population(2)
    probs = {"cft": logits.softmax(-1), "rcft": (logits * 1.15).softmax(-1)}
    ece = {name: _ece(p, y) for name, p in probs.items()}
    lowest = min(ece, key=ece.get)
    other = next(name for name in probs if name != lowest)
    val = {name: {**_m(0.35, ece[name]), "nll": 1.30 if name == other else 1.40} for name in probs}
    correct = {name: (p.argmax(-1) == y).tolist() for name, p in probs.items()}
    choice = _choose(val, correct, 0.02, probs=probs, labels=y, resamples=400)
    assert choice["tied"] == ["cft", "rcft"] and choice["chosen"] == other  # the lower NLL among the tied
    gap = choice["calibration"][other]
    assert gap["above_lowest"] == pytest.approx(ece[other] - ece[lowest], abs=1e-6)
    assert gap["ci95"][0] <= 0 <= gap["ci95"][1]
    # without the noise test (no resamples), the lower conf-ECE wins however small the gap
    assert _choose(val, correct, 0.02, probs=probs, labels=y, resamples=0)["chosen"] == lowest


def test_a_conf_ece_gap_beyond_the_noise_keeps_the_better_calibrated_candidate_whatever_its_nll():
    logits, y = _population(3)
    probs = {"cft": (logits * 6).softmax(-1), "rcft": logits.softmax(-1)}  # cft: badly overconfident
    ece = {name: _ece(p, y) for name, p in probs.items()}
    assert ece["cft"] > ece["rcft"] + 0.2
    val = {"cft": {**_m(0.35, ece["cft"]), "nll": 1.0}, "rcft": {**_m(0.35, ece["rcft"]), "nll": 2.0}}
    correct = {name: (p.argmax(-1) == y).tolist() for name, p in probs.items()}
    choice = _choose(val, correct, 0.02, probs=probs, labels=y, resamples=400)
    assert choice["tied"] == ["rcft"] and choice["chosen"] == "rcft"
    assert choice["calibration"]["cft"]["ci95"][0] > 0 and choice["calibration"]["cft"]["tied"] is False
