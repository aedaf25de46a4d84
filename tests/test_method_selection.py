"""method=auto's rule: lowest validation conf-ECE among candidates whose validation accuracy is not below the
best's by more than the tolerance plus z standard errors of the paired difference (exact counts)."""

import math

import pytest

from calibration_lightning.errors import ConfigError
from calibration_lightning.methods import choose_method, paired_difference


def _m(acc, ece):
    return {"accuracy": acc, "conf_ece": ece, "n": 100}


def _answers(n: int, right: set[int]) -> list[bool]:
    return [i in right for i in range(n)]


def test_picks_rcft_when_rcft_is_better_on_validation():
    correct = {"cft": _answers(100, set(range(60))), "rcft": _answers(100, set(range(61)))}
    choice = choose_method({"cft": _m(0.60, 0.12), "rcft": _m(0.61, 0.04)}, correct, 0.02)
    assert choice["chosen"] == "rcft" and choice["eligible"] == ["cft", "rcft"]


def test_picks_cft_when_cft_is_better_on_validation():
    correct = {"cft": _answers(100, set(range(60))), "rcft": _answers(100, set(range(60)))}
    assert choose_method({"cft": _m(0.60, 0.03), "rcft": _m(0.60, 0.09)}, correct, 0.02)["chosen"] == "cft"


def test_tolerance_compares_exact_counts():
    # 31/100 against 29/100 with a tolerance of 0.02: as floats 0.31 - 0.29 > 0.02, in counts 2 <= 2
    assert 0.31 - 0.29 > 0.02
    correct = {"cft": _answers(100, set(range(31))), "rcft": _answers(100, set(range(29)))}
    choice = choose_method({"cft": _m(0.31, 0.10), "rcft": _m(0.29, 0.02)}, correct, 0.02, z=0.0)
    assert choice["eligible"] == ["cft", "rcft"] and choice["chosen"] == "rcft"
    correct["rcft"] = _answers(100, set(range(28)))  # 3 behind: outside, with no noise allowance
    assert choose_method({"cft": _m(0.31, 0.10), "rcft": _m(0.28, 0.02)}, correct, 0.02, z=0.0)["chosen"] == "cft"


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
    choice = choose_method(val, correct, 0.02)
    assert choice["eligible"] == ["cft", "rcft"] and choice["chosen"] == "rcft"
    assert choice["paired"]["rcft"]["behind_best"] == 3
    assert choose_method(val, correct, 0.02, z=0.0)["chosen"] == "cft"  # the old, noise-blind rule


def test_a_lower_ece_bought_with_a_real_accuracy_loss_is_not_eligible():
    # 62/100 against 45/100, every disagreement one way: 17 behind, SE sqrt(17 - 17^2/100) = 3.7 questions
    correct = {"cft": _answers(100, set(range(62))), "rcft": _answers(100, set(range(45)))}
    val = {"cft": _m(0.62, 0.08), "rcft": _m(0.45, 0.01)}
    choice = choose_method(val, correct, 0.02)
    assert choice["eligible"] == ["cft"] and choice["chosen"] == "cft"
    assert choose_method(val, correct, 0.10)["chosen"] == "rcft"  # 17 - 10 = 7 <= 1.96 x 3.7


def test_no_candidate_is_an_error_and_a_negative_z_is_refused():
    with pytest.raises(ValueError):
        choose_method({}, {}, 0.02)
    with pytest.raises(ConfigError, match=r"method\.accuracy_z"):
        choose_method({"cft": _m(0.5, 0.1)}, {"cft": [True, False]}, 0.02, z=-1)
